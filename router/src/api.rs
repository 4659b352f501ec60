//! The local status and control endpoint (`127.0.0.1:6784` by default).
//!
//! Reads (`/status…`, `/report`, `/metrics`, `/healthz`, `/livez`, `/readyz`) are served to anyone who can reach
//! the address and names it in `Host`; requests that change something (`/connect`, `/forget`,
//! `/ping`, `/rmpeer`, `/ipam/check`, and any non-GET request) are served only to the local CLI.
//! The rules are [`crate::status_guard`]; [`guard_request`] applies them to every route as a layer, so
//! a new route is guarded by where it is added (`reads` or `controls`), not by its handler.
//! Connections are served by [`crate::http_server`] (caps and deadlines).
//!
//! The metrics listener (`--metrics-addr`, for Prometheus and kubelet probes) serves only
//! `/metrics`, `/healthz` and `/readyz`, through the same accept loop and the same guard, and
//! refuses every method but GET and HEAD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router as HttpRouter;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::exposition;
use crate::http_admission::Limits;
use crate::http_server::{self, ListenerConfig};
use crate::metrics::Metrics;
use crate::readiness::{self, Check, Readiness};
use crate::report::{self, Report};
use crate::router::{ApiRequest, Event};
use crate::status_guard::{self, Access, CLIENT_HEADER, RequestFacts};

/// Connection caps and deadlines of the status endpoint. Local clients (the CLI) have a pool
/// of their own; remote scrapers share the rest, at most 16 connections each.
pub const LISTENER: ListenerConfig = ListenerConfig {
    name: "status",
    limits: Limits {
        local: 64,
        remote_total: 256,
        remote_per_source: 16,
    },
    header_timeout: Duration::from_secs(10),
    // The slowest request (`weft ping`, `weft ipam check`) waits a few seconds for peers.
    request_timeout: Duration::from_secs(30),
    lifetime: Duration::from_secs(120),
    timed_out: request_timed_out,
    refused: http_server::refused_answer(),
};

/// Connection caps and deadlines of the metrics listener: scrapers and probes, all remote.
pub const METRICS_LISTENER: ListenerConfig = ListenerConfig {
    name: "metrics",
    limits: Limits {
        local: 16,
        remote_total: 64,
        remote_per_source: 8,
    },
    header_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(10),
    lifetime: Duration::from_secs(60),
    timed_out: request_timed_out,
    refused: http_server::refused_answer(),
};

/// How long `/healthz` waits for the router's event loop: a loop busier than this for a
/// probe's period is as good as wedged.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for the report.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

fn request_timed_out() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the weft router did not answer in time\n",
    )
        .into_response()
}
use crate::store::StoreHealth;

#[derive(Clone)]
struct Api {
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    store: Arc<StoreHealth>,
}

/// What the guard layer needs: where the endpoint is bound, and what the routes it wraps do.
#[derive(Clone)]
struct Guard {
    bound: SocketAddr,
    access: Access,
    metrics: Arc<Metrics>,
    /// The `listener` label of the refusals counted.
    listener: &'static str,
}

/// Every route of the endpoint, each behind the guard.
fn routes(api: Api, bound: SocketAddr) -> HttpRouter {
    let guard = |access| Guard {
        bound,
        access,
        metrics: api.metrics.clone(),
        listener: LISTENER.name,
    };
    let reads = HttpRouter::new()
        .route("/healthz", get(healthz))
        // The name liveness had before `/healthz` became it; probes may still use it.
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/report", get(report_json))
        .route("/status", get(|s| text(s, report::render_summary)))
        .route("/status/peers", get(|s| text(s, report::render_peers)))
        .route(
            "/status/connections",
            get(|s| text(s, report::render_connections)),
        )
        .route("/status/routes", get(|s| text(s, report::render_routes)))
        .route("/status/ipam", get(|s| text(s, report::render_ipam)))
        .route("/metrics", get(metrics_text));
    // Changes, and reads that make other peers work (ipam check).
    let controls = HttpRouter::new()
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/ping", post(ping))
        .route("/rmpeer", post(rmpeer))
        .route("/ipam/check", get(ipam_check))
        .route("/ipam/force-ring", post(ipam_force_ring))
        .route_layer(middleware::from_fn_with_state(
            guard(Access::Control),
            guard_request,
        ));
    // The outer layer sees every request, unknown paths included; it treats any non-GET
    // request as a change.
    reads
        .merge(controls)
        .with_state(api.clone())
        .layer(middleware::from_fn_with_state(
            guard(Access::Read),
            guard_request,
        ))
}

/// The metrics listener's routes: reads only, behind the same guard, GET and HEAD only.
fn metrics_routes(api: Api, bound: SocketAddr) -> HttpRouter {
    let guard = Guard {
        bound,
        access: Access::Read,
        metrics: api.metrics.clone(),
        listener: METRICS_LISTENER.name,
    };
    HttpRouter::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(api)
        .layer(middleware::from_fn_with_state(guard.clone(), guard_request))
        // Outermost: a non-read is refused as such, from this host or another.
        .layer(middleware::from_fn_with_state(guard, read_only))
}

/// Refuses (405, counted as `method`) every request that is not a GET or HEAD: the metrics
/// listener changes nothing, whoever asks.
async fn read_only(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let n = guard.metrics.http.request_refused(guard.listener, "method");
    if n.is_power_of_two() {
        tracing::warn!(listener = guard.listener, method = %request.method(), count = n, "refused a request that is not a read");
    }
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
        "refused: this listener is read-only (GET /metrics, /healthz, /readyz)\n",
    )
        .into_response()
}

/// The two HTTP listeners this module serves.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    /// `--status-addr`: status, reports and control (guarded).
    Status,
    /// `--metrics-addr`: `/metrics`, `/healthz` and `/readyz` only, read-only.
    Metrics,
}

/// Serves `endpoint` on `listener`.
pub async fn serve(
    endpoint: Endpoint,
    listener: tokio::net::TcpListener,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    store: Arc<StoreHealth>,
) {
    let api = Api {
        events,
        metrics,
        store,
    };
    match endpoint {
        Endpoint::Status => serve_with(listener, api, routes, LISTENER).await,
        Endpoint::Metrics => serve_with(listener, api, metrics_routes, METRICS_LISTENER).await,
    }
}

/// Serves `routes` on `listener` with the caps and deadlines of `config`.
async fn serve_with(
    listener: tokio::net::TcpListener,
    api: Api,
    routes: fn(Api, SocketAddr) -> HttpRouter,
    config: ListenerConfig,
) {
    let bound = match listener.local_addr() {
        Ok(bound) => bound,
        Err(e) => {
            tracing::error!(error = %e, listener = config.name, "listener has no address");
            return;
        }
    };
    let metrics = api.metrics.clone();
    http_server::serve(listener, routes(api, bound), config, metrics).await;
}

/// The guard layer: refuses the request, with the reason, unless [`status_guard::decide`]
/// allows it.
async fn guard_request(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    // Without a peer address (never, through http_server) the request counts as remote.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
    let facts = RequestFacts {
        peer,
        safe_method: matches!(*request.method(), Method::GET | Method::HEAD),
        access: guard.access,
        host: text(header::HOST.as_str()),
        origin: text(header::ORIGIN.as_str()),
        client_header: headers.contains_key(CLIENT_HEADER),
    };
    match status_guard::decide(guard.bound, &facts) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let n = guard
                .metrics
                .http
                .request_refused(guard.listener, refusal.label());
            if n.is_power_of_two() {
                tracing::warn!(reason = refusal.label(), %peer, count = n, "refused status endpoint requests");
            }
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
            (status, refusal.message()).into_response()
        }
    }
}

/// Liveness (`/healthz`, `/livez`): 200 while the router's event loop answers a trivial request
/// within [`ALIVE_TIMEOUT`], 503 with the reason otherwise. Nothing else is looked at: a full
/// disk or a missing peer is not fixed by a restart (that is `/readyz`).
async fn healthz(State(api): State<Api>) -> Response {
    let answered = tokio::time::timeout(
        ALIVE_TIMEOUT,
        ask(&api, |reply| ApiRequest::Alive { reply }),
    )
    .await;
    let (status, reason) = match answered {
        Ok(Some(())) => (StatusCode::OK, "the router's event loop answers".to_owned()),
        Ok(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the router's event loop has stopped".to_owned(),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the router's event loop did not answer within {}s",
                ALIVE_TIMEOUT.as_secs()
            ),
        ),
    };
    let body = serde_json::json!({ "alive": status == StatusCode::OK, "reason": reason });
    (status, axum::Json(body)).into_response()
}

/// Readiness (`/readyz`): [`readiness::decide`] over the report, 200 when ready and 503
/// otherwise, with every check and its reason. When the event loop does not answer, the
/// store's own health still says whether persistence works.
async fn readyz(State(api): State<Api>) -> Response {
    let readiness = match tokio::time::timeout(READY_TIMEOUT, fetch_report(&api)).await {
        Ok(Some(report)) => readiness::decide(&report),
        answered => {
            let router = Check {
                name: "router".to_owned(),
                ok: false,
                reason: if answered.is_ok() {
                    "the router's event loop has stopped".to_owned()
                } else {
                    format!(
                        "the router did not report within {}s",
                        READY_TIMEOUT.as_secs()
                    )
                },
            };
            let persistence = Check {
                name: "persistence".to_owned(),
                ok: api.store.failing().is_none(),
                reason: match api.store.failing() {
                    Some(error) => format!("persistence failing: {error}"),
                    None => "the last write succeeded".to_owned(),
                },
            };
            Readiness {
                ready: false,
                checks: vec![router, persistence],
            }
        }
    };
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
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

/// `/metrics`: OpenMetrics for scrapers that ask for it (Prometheus does), the Prometheus text
/// format otherwise (curl, `promtool check metrics`).
async fn metrics_text(State(api): State<Api>, headers: axum::http::HeaderMap) -> Response {
    let Some(report) = fetch_report(&api).await else {
        return unavailable();
    };
    api.metrics.observe(&report);
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &api.metrics.registry()).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response();
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if exposition::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, exposition::OPENMETRICS)], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, exposition::PROMETHEUS_TEXT)],
            exposition::to_prometheus_text(&body),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct PeerQuery {
    peer: String,
}

fn hosts(q: &PeerQuery) -> Vec<String> {
    q.peer.split(',').map(str::to_owned).collect()
}

async fn connect(State(api): State<Api>, Query(q): Query<PeerQuery>) -> Response {
    match ask(&api, |reply| ApiRequest::Connect {
        hosts: hosts(&q),
        reply,
    })
    .await
    {
        Some(Ok(())) => "ok\n".into_response(),
        Some(Err(refused)) => {
            api.metrics.http.connect_targets_refused.inc();
            (StatusCode::CONFLICT, format!("{refused}\n")).into_response()
        }
        None => unavailable(),
    }
}

async fn forget(State(api): State<Api>, Query(q): Query<PeerQuery>) -> Response {
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

async fn rmpeer(State(api): State<Api>, Query(q): Query<RmpeerQuery>) -> Response {
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

async fn ipam_check(State(api): State<Api>) -> Response {
    match ask(&api, |reply| ApiRequest::IpamCheck { reply }).await {
        Some(report) => axum::Json(report).into_response(),
        None => unavailable(),
    }
}

async fn ipam_force_ring(State(api): State<Api>) -> Response {
    match ask(&api, |reply| ApiRequest::ForceRing { reply }).await {
        Some(Ok(done)) => format!("{done}\n").into_response(),
        Some(Err(e)) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        None => unavailable(),
    }
}

async fn ping(State(api): State<Api>, Query(q): Query<PeerQuery>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api(events: mpsc::Sender<Event>) -> Api {
        Api {
            events,
            metrics: Arc::default(),
            store: Arc::default(),
        }
    }

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn a_router_that_does_not_answer_is_not_alive_and_not_ready() {
        // The event loop is wedged: it holds its queue and never reads it.
        let (events, _wedged) = mpsc::channel(8);
        let alive = healthz(State(api(events.clone()))).await;
        assert_eq!(alive.status(), StatusCode::SERVICE_UNAVAILABLE);
        let alive = body_json(alive).await;
        assert_eq!(alive["alive"], false);
        assert!(
            alive["reason"].as_str().unwrap().contains("did not answer"),
            "{alive}"
        );

        let ready = readyz(State(api(events))).await;
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready = body_json(ready).await;
        assert_eq!(ready["ready"], false);
        assert_eq!(ready["checks"][0]["name"], "router");
        assert_eq!(ready["checks"][1]["name"], "persistence");
        assert_eq!(ready["checks"][1]["ok"], true);
    }

    #[tokio::test]
    async fn a_router_that_answers_is_alive() {
        let (events, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Event::Api(ApiRequest::Alive { reply }) = event {
                    let _ = reply.send(());
                }
            }
        });
        let alive = healthz(State(api(events))).await;
        assert_eq!(alive.status(), StatusCode::OK);
        assert_eq!(body_json(alive).await["alive"], true);
    }

    #[tokio::test]
    async fn a_stopped_router_is_not_alive() {
        let (events, rx) = mpsc::channel(8);
        drop(rx);
        let alive = healthz(State(api(events))).await;
        assert_eq!(alive.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body_json(alive).await["reason"]
                .as_str()
                .unwrap()
                .contains("stopped")
        );
    }
}
