//! The local status and control endpoint (`127.0.0.1:6784` by default).
//!
//! Reads (`/status…`, `/report`, `/metrics`, `/healthz`, `/livez`) are served to anyone who can
//! reach the address; requests that change something (`/connect`, `/forget`, `/ping`, `/rmpeer`) are refused
//! unless they come from loopback, even when the endpoint is bound to a wider address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router as HttpRouter;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::report::{self, Report};
use crate::router::{ApiRequest, Event};
use crate::store::StoreHealth;

#[derive(Clone)]
struct Api {
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    store: Arc<StoreHealth>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    store: Arc<StoreHealth>,
) {
    let app = HttpRouter::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/report", get(report_json))
        .route("/status", get(|s| text(s, report::render_summary)))
        .route("/status/peers", get(|s| text(s, report::render_peers)))
        .route(
            "/status/connections",
            get(|s| text(s, report::render_connections)),
        )
        .route("/status/routes", get(|s| text(s, report::render_routes)))
        .route("/status/ipam", get(|s| text(s, report::render_ipam)))
        .route("/metrics", get(metrics_text))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/ping", post(ping))
        .route("/rmpeer", post(rmpeer))
        .route("/ipam/check", get(ipam_check))
        .with_state(Api {
            events,
            metrics,
            store,
        });
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "status endpoint stopped");
    }
}

/// Ready: 503 with the reason while the state store cannot persist (ADDs are refused then), so a
/// readiness probe takes the node out of service; `/livez` stays ok (restarting would not help).
async fn healthz(State(api): State<Api>) -> Response {
    match api.store.failing() {
        None => "ok\n".into_response(),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("persistence failing: {error}\n"),
        )
            .into_response(),
    }
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "router is shutting down\n").into_response()
}

/// Sends a request to the router actor and waits for its answer; `None` if the router stopped.
async fn ask<T>(api: &Api, request: impl FnOnce(oneshot::Sender<T>) -> ApiRequest) -> Option<T> {
    let (reply, rx) = oneshot::channel();
    api.events.send(Event::Api(request(reply))).await.ok()?;
    rx.await.ok()
}

async fn fetch_report(api: &Api) -> Option<Report> {
    ask(api, |reply| ApiRequest::Report { reply }).await
}

async fn report_json(State(api): State<Api>) -> Response {
    match fetch_report(&api).await {
        Some(report) => axum::Json(report).into_response(),
        None => unavailable(),
    }
}

async fn text(State(api): State<Api>, render: fn(&Report) -> String) -> Response {
    match fetch_report(&api).await {
        Some(report) => render(&report).into_response(),
        None => unavailable(),
    }
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let Some(report) = fetch_report(&api).await else {
        return unavailable();
    };
    api.metrics.observe(&report);
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &api.metrics.registry()).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct PeerQuery {
    peer: String,
}

/// Refuses a request that changes something unless it comes from this host.
fn refuse_remote(client: SocketAddr) -> Option<Response> {
    (!client.ip().is_loopback()).then(|| {
        (
            StatusCode::FORBIDDEN,
            "this operation is only available from the local host\n",
        )
            .into_response()
    })
}

fn hosts(q: &PeerQuery) -> Vec<String> {
    q.peer.split(',').map(str::to_owned).collect()
}

async fn connect(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<PeerQuery>,
) -> Response {
    if let Some(refused) = refuse_remote(client) {
        return refused;
    }
    match ask(&api, |reply| ApiRequest::Connect {
        hosts: hosts(&q),
        reply,
    })
    .await
    {
        Some(()) => "ok\n".into_response(),
        None => unavailable(),
    }
}

async fn forget(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<PeerQuery>,
) -> Response {
    if let Some(refused) = refuse_remote(client) {
        return refused;
    }
    let hosts = hosts(&q);
    let Some(known) = ask(&api, |reply| ApiRequest::Forget {
        hosts: hosts.clone(),
        reply,
    })
    .await
    else {
        return unavailable();
    };
    let unknown: Vec<&str> = hosts
        .iter()
        .zip(known)
        .filter(|(_, k)| !k)
        .map(|(h, _)| h.as_str())
        .collect();
    if unknown.is_empty() {
        "ok\n".into_response()
    } else {
        let body = format!("not a known peer address: {}\n", unknown.join(", "));
        (StatusCode::NOT_FOUND, body).into_response()
    }
}

#[derive(Deserialize)]
struct RmpeerQuery {
    peer: String,
    #[serde(default)]
    force: bool,
}

async fn rmpeer(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<RmpeerQuery>,
) -> Response {
    if let Some(refused) = refuse_remote(client) {
        return refused;
    }
    match ask(&api, |reply| ApiRequest::Rmpeer {
        peer: q.peer,
        force: q.force,
        reply,
    })
    .await
    {
        Some(Ok(done)) => format!("{done}\n").into_response(),
        Some(Err(e)) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        None => unavailable(),
    }
}

async fn ipam_check(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
) -> Response {
    // It makes every reachable peer answer: not for remote callers.
    if let Some(refused) = refuse_remote(client) {
        return refused;
    }
    match ask(&api, |reply| ApiRequest::IpamCheck { reply }).await {
        Some(report) => axum::Json(report).into_response(),
        None => unavailable(),
    }
}

async fn ping(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<PeerQuery>,
) -> Response {
    if let Some(refused) = refuse_remote(client) {
        return refused;
    }
    match ask(&api, |reply| ApiRequest::Ping {
        peer: q.peer,
        reply,
    })
    .await
    {
        Some(Ok(result)) => axum::Json(result).into_response(),
        Some(Err(e)) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
        None => unavailable(),
    }
}
