//! The HTTP(S) edge: the API listener (bearer tokens, RBAC, JSON, chunked watch streams) and
//! the control listener on a unix socket (no auth, not reachable from the test network).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::Logged;
use super::api::{Request, Verb, WatchLimits};
use super::rbac::Rbac;
use super::resource::Resource;
use super::status::ApiError;
use super::store::{Key, Store, Watch};

/// Largest request body taken (the real apiserver's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// A watch without `timeoutSeconds` lasts this long (the real one: 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// How the server is set up.
pub struct Config {
    /// Bearer token → user name (`system:serviceaccount:NS:NAME`).
    pub tokens: HashMap<String, String>,
    /// `None`: every authenticated request is allowed.
    pub rbac: Option<Rbac>,
    /// Between two BOOKMARK events of a watch that asked for them.
    pub bookmark_interval: Duration,
}

/// State shared by the listeners.
pub struct Server {
    store: Mutex<Store>,
    /// The resourceVersion after each write, for open watches.
    changed: tokio::sync::watch::Sender<u64>,
    config: Config,
    log: Mutex<Vec<Logged>>,
    /// Status codes the next API requests fail with (control surface).
    failures: Mutex<VecDeque<u16>>,
    /// Every API request fails with 503 and open watches are cut (control surface).
    outage: AtomicBool,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    pub fn new(config: Config) -> Arc<Server> {
        Arc::new(Server {
            store: Mutex::new(Store::new()),
            changed: tokio::sync::watch::Sender::new(0),
            config,
            log: Mutex::new(Vec::new()),
            failures: Mutex::new(VecDeque::new()),
            outage: AtomicBool::new(false),
            started: Instant::now(),
        })
    }

    /// Runs `change` on the store (with the clock set) and wakes the watches if it wrote.
    fn write<T>(&self, change: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = lock(&self.store);
        store.now = rfc3339(SystemTime::now());
        let before = store.resource_version();
        let result = change(&mut store);
        let after = store.resource_version();
        drop(store);
        if after != before {
            self.changed.send_replace(after);
        }
        result
    }

    fn record(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        content_type: Option<String>,
        status: u16,
    ) {
        let mut log = lock(&self.log);
        let seq = log.len() as u64;
        log.push(Logged {
            seq,
            millis: self.started.elapsed().as_millis() as u64,
            method: method.to_owned(),
            path: path.to_owned(),
            user: user.map(str::to_owned),
            content_type,
            status,
        });
    }

    /// One API request.
    async fn api(self: Arc<Self>, request: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let logged_path = match query.as_str() {
            "" => path.clone(),
            q => format!("{path}?{q}"),
        };
        let user = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| self.config.tokens.get(token.trim()))
            .cloned();
        let content_type = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = self
            .clone()
            .answer(request, user.as_deref(), &method, &path, &query)
            .await;
        let status = answer.status().as_u16();
        self.record(&method, &logged_path, user.as_deref(), content_type, status);
        answer
    }

    async fn answer(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
        user: Option<&str>,
        method: &str,
        path: &str,
        query: &str,
    ) -> hyper::Response<Body> {
        if method == "GET"
            && let Some(answer) = non_resource(path)
        {
            return answer;
        }
        let Some(user) = user else {
            return error(&ApiError::unauthorized());
        };
        if self.outage.load(Ordering::SeqCst) {
            return error(&ApiError::injected(503));
        }
        if let Some(code) = lock(&self.failures).pop_front() {
            let mut answer = error(&ApiError::injected(code));
            if code == 429 {
                answer
                    .headers_mut()
                    .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
            }
            return answer;
        }
        let parsed = match Request::parse(method, path, query) {
            Ok(parsed) => parsed,
            Err(e) => return error(&e),
        };
        if let Some(rbac) = &self.config.rbac
            && user != super::ADMIN_USER
            && let Err(e) = rbac.authorize(&parsed.attributes(user))
        {
            return error(&e);
        }
        if parsed.verb == Verb::Watch {
            let started = parsed.start_watch(&lock(&self.store));
            return match started {
                Ok((watch, first)) => self.stream(watch, first, parsed.watch_limits()),
                Err(e) => error(&e),
            };
        }
        let content_type = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = match axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY).await {
            Ok(body) => body,
            Err(e) => {
                return error(&ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )));
            }
        };
        match self.write(|store| parsed.execute(store, &content_type, &body)) {
            Ok((code, body)) => json_response(code, &body),
            Err(e) => error(&e),
        }
    }

    /// A watch response: `200` and one JSON event per line, until the timeout, an ERROR
    /// event, or the client goes away.
    fn stream(
        self: Arc<Self>,
        watch: Watch,
        first: Vec<Value>,
        limits: WatchLimits,
    ) -> hyper::Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        tokio::spawn(self.run_watch(watch, first, limits, tx));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        hyper::Response::builder()
            .status(200)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CACHE_CONTROL, "no-cache, private")
            .body(Body::from_stream(body))
            .expect("a valid response")
    }

    async fn run_watch(
        self: Arc<Self>,
        mut watch: Watch,
        first: Vec<Value>,
        limits: WatchLimits,
        tx: mpsc::Sender<Bytes>,
    ) {
        let mut changed = self.changed.subscribe();
        let timeout = limits
            .timeout_seconds
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let interval = self.config.bookmark_interval;
        let mut next_bookmark = tokio::time::Instant::now() + interval;
        let mut bookmark_due = false;
        let mut events = first;
        loop {
            {
                let store = lock(&self.store);
                events.extend(store.poll(&mut watch));
                if bookmark_due && !watch.done {
                    events.push(store.bookmark(&watch));
                }
            }
            bookmark_due = false;
            for event in events.drain(..) {
                let mut line = serde_json::to_vec(&event).expect("JSON values serialize");
                line.push(b'\n');
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            if watch.done || self.outage.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                changed = changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(next_bookmark), if limits.bookmarks => {
                    bookmark_due = true;
                    next_bookmark += interval;
                }
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            }
        }
    }

    /// One control request (the test's hands on the cluster: kubelet registering Nodes,
    /// etcd compacting, the request log).
    async fn control(self: Arc<Self>, request: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let body = match axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY).await {
            Ok(body) => body,
            Err(e) => return error(&ApiError::bad_request(e.to_string())),
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let node = |name: &str| Key::new(Resource::Nodes, None, name);
        let result: Result<Value, ApiError> = match (method.as_str(), segments.as_slice()) {
            ("GET", ["healthz"]) => Ok(json!("ok")),
            ("GET", ["nodes"]) => Ok(json!(lock(&self.store).objects(Resource::Nodes, None))),
            ("GET", ["nodes", name]) => lock(&self.store).get(&node(name)),
            ("PUT", ["nodes", name]) => serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(e.to_string()))
                .and_then(|object| self.write(|store| store.upsert(&node(name), object))),
            ("DELETE", ["nodes", name]) => self.write(|store| store.delete(&node(name))),
            ("GET", ["leases"]) => Ok(json!(lock(&self.store).objects(Resource::Leases, None))),
            ("GET", ["leases", ns, name]) => {
                lock(&self.store).get(&Key::new(Resource::Leases, Some(ns), name))
            }
            ("POST", ["compact"]) => Ok(self.write(|store| {
                store.compact();
                json!({"resourceVersion": store.resource_version().to_string()})
            })),
            ("POST", ["outage"]) => serde_json::from_slice::<Value>(&body)
                .map_err(|e| ApiError::bad_request(e.to_string()))
                .map(|v| {
                    let on = v["on"].as_bool().unwrap_or(true);
                    self.outage.store(on, Ordering::SeqCst);
                    // Wake the open watches so that they end now.
                    self.changed.send_modify(|_| {});
                    json!({"outage": on})
                }),
            ("GET", ["requests"]) => Ok(json!(*lock(&self.log))),
            ("POST", ["fail"]) => serde_json::from_slice::<Value>(&body)
                .map_err(|e| ApiError::bad_request(e.to_string()))
                .map(|v| {
                    let count = v["count"].as_u64().unwrap_or(1);
                    let code = v["code"].as_u64().unwrap_or(500) as u16;
                    lock(&self.failures).extend(std::iter::repeat_n(code, count as usize));
                    json!({"queued": lock(&self.failures).len()})
                }),
            _ => Err(ApiError::no_route()),
        };
        match result {
            Ok(value) => json_response(200, &value),
            Err(e) => error(&e),
        }
    }
}

/// The non-resource URLs anyone may GET, also without a token (`system:public-info-viewer`,
/// bound to `system:unauthenticated` too): `/version` and the health checks.
fn non_resource(path: &str) -> Option<hyper::Response<Body>> {
    match path {
        "/version" => Some(json_response(
            200,
            &json!({
                "major": "1",
                "minor": "35",
                "gitVersion": "v1.35.0-weft-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        )),
        "/healthz" | "/livez" | "/readyz" => Some(
            hyper::Response::builder()
                .status(200)
                .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from("ok"))
                .expect("a valid response"),
        ),
        _ => None,
    }
}

fn json_response(code: u16, body: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::to_vec(body).expect("JSON values serialize"),
        ))
        .expect("a valid response")
}

fn error(e: &ApiError) -> hyper::Response<Body> {
    json_response(e.code, &e.status())
}

/// Serves HTTP/1.1 on one connection.
async fn serve_connection<Io, F, Fut>(io: Io, handler: F)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The API listener's TLS (rustls with the ring provider), from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key do not fit")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the API on `listener` (TLS if `tls`) until the process ends.
pub async fn serve_api(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let server = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let handler = move |request| server.clone().api(request);
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_connection(stream, handler).await;
                    }
                }
                None => serve_connection(stream, handler).await,
            }
        });
    }
}

/// Serves the control surface on a unix socket at `path` until the process ends.
pub async fn serve_control(server: Arc<Server>, path: PathBuf) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            serve_connection(stream, move |request| server.clone().control(request)).await;
        });
    }
}

/// `2026-12-03T21:56:11Z`
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_334_971)),
            "2026-12-03T21:56:11Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
