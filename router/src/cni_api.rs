//! The CNI plugin's endpoint: HTTP/1.1 + JSON on a unix socket only root can open
//! (`--cni-socket`, default `/run/weft/cni.sock`). The protocol is `weft_cni::protocol`; every
//! request becomes an [`Event::Cni`] for the router actor, and every failure is an
//! `ErrorBody` carrying a CNI error code that the plugin passes on as is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use weft_cni::error as code;
use weft_cni::protocol::{PATH_ADD, PATH_CHECK, PATH_DEL, PATH_GC, PATH_STATUS};

use crate::http_admission::Limits;
use crate::http_server::{self, ListenerConfig};
use crate::ipam::{CniFailure, Reply};
use crate::metrics::Metrics;
use crate::router::{CniRequest, Event};

/// Binds the socket with mode 0600. A socket file left by a router that died is replaced; one
/// that a live router still answers on is not. The socket's directory is created (0700) if
/// missing, and refused unless root owns it and nobody else can write it: whoever can write it
/// could swap the socket and hand pods addresses (the plugin checks the same).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    weft_cni::socket_dir::check_path(path)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another router already serves the CNI socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // Bound under a temporary name and renamed once private, so the socket is never reachable
    // with the umask's permissions.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("cannot listen on {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the socket to {}", path.display()))?;
    Ok(listener)
}

#[derive(Clone)]
struct Cni {
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

/// Connection caps and deadlines of the CNI socket. Only root can connect, so all clients are
/// local; the cap and the deadlines keep a stuck or buggy client from holding descriptors, and
/// the socket's own pool keeps it serving ADDs whatever happens on the status port.
pub const LISTENER: ListenerConfig = ListenerConfig {
    name: "cni",
    limits: Limits {
        local: 128,
        remote_total: 0,
        remote_per_source: 0,
    },
    header_timeout: Duration::from_secs(10),
    // An ADD may wait up to ipam::ADD_WAIT for the ring; the plugin gives up after 60 s.
    request_timeout: Duration::from_secs(55),
    lifetime: Duration::from_secs(90),
    timed_out: request_timed_out,
    refused: http_server::refused_cni_answer(),
};

/// Not a CNI error body on purpose: the plugin reads it as "no usable answer" and cleans up
/// with a DEL, since the router may still have allocated.
fn request_timed_out() -> Response {
    (
        StatusCode::GATEWAY_TIMEOUT,
        "the weft router did not answer the CNI request in time\n",
    )
        .into_response()
}

pub async fn serve(listener: UnixListener, events: mpsc::Sender<Event>, metrics: Arc<Metrics>) {
    let app = HttpRouter::new()
        .route(PATH_ADD, post(add))
        .route(PATH_DEL, post(del))
        .route(PATH_CHECK, post(check))
        .route(PATH_STATUS, get(status))
        .route(PATH_GC, post(gc))
        .with_state(Cni {
            events,
            metrics: metrics.clone(),
        });
    http_server::serve(listener, app, LISTENER, metrics).await;
}

fn failure_response(f: CniFailure) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(f.body)).into_response()
}

fn shutting_down() -> Response {
    failure_response(CniFailure::new(
        503,
        code::TRY_AGAIN_LATER,
        "the weft router is shutting down",
        "",
    ))
}

fn parse<T: DeserializeOwned>(cni: &Cni, body: &[u8]) -> Result<T, CniFailure> {
    serde_json::from_slice(body).map_err(|e| {
        cni.metrics.ipam.rejected_requests.inc();
        CniFailure::new(
            400,
            code::DECODING_FAILURE,
            "the weft router cannot decode the request",
            e.to_string(),
        )
    })
}

/// Hands a request to the router actor and waits for its answer.
async fn ask<T: Serialize>(
    events: &mpsc::Sender<Event>,
    request: impl FnOnce(Reply<T>) -> CniRequest,
) -> Response {
    let (reply, rx) = oneshot::channel();
    if events.send(Event::Cni(request(reply))).await.is_err() {
        return shutting_down();
    }
    match rx.await {
        Ok(Ok(answer)) => axum::Json(answer).into_response(),
        Ok(Err(f)) => failure_response(f),
        Err(_) => shutting_down(),
    }
}

async fn add(State(cni): State<Cni>, body: Bytes) -> Response {
    match parse(&cni, &body) {
        Ok(request) => ask(&cni.events, |reply| CniRequest::Add { request, reply }).await,
        Err(f) => failure_response(f),
    }
}

async fn del(State(cni): State<Cni>, body: Bytes) -> Response {
    match parse(&cni, &body) {
        Ok(attachment) => ask(&cni.events, |reply| CniRequest::Del { attachment, reply }).await,
        Err(f) => failure_response(f),
    }
}

async fn check(State(cni): State<Cni>, body: Bytes) -> Response {
    match parse(&cni, &body) {
        Ok(attachment) => ask(&cni.events, |reply| CniRequest::Check { attachment, reply }).await,
        Err(f) => failure_response(f),
    }
}

async fn status(State(cni): State<Cni>) -> Response {
    ask(&cni.events, |reply| CniRequest::Status { reply }).await
}

async fn gc(State(cni): State<Cni>, body: Bytes) -> Response {
    match parse(&cni, &body) {
        Ok(request) => ask(&cni.events, |reply| CniRequest::Gc { request, reply }).await,
        Err(f) => failure_response(f),
    }
}
