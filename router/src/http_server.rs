//! The accept loop of the router's HTTP listeners (the status endpoint on TCP, the CNI socket
//! on a unix socket). `axum::serve` has no deadlines and no connection cap, so an idle or
//! half-sent request kept a file descriptor forever; this loop serves the same axum routers
//! through hyper's HTTP/1 connection builder with:
//!
//! - a cap on open connections per listener, per remote source and for this host
//!   ([`crate::http_admission`]); a refused connection gets a 503 and is closed at once;
//! - a header deadline: a connection that has not sent a complete request head within
//!   `header_timeout` of hyper waiting for one (its first request, or the next one on a
//!   keep-alive connection) is closed, so idle and half-sent connections end;
//! - a request deadline: a handler (and the body it reads) that takes longer than
//!   `request_timeout` is answered by `timed_out` instead;
//! - a whole-connection deadline (`lifetime`) that also ends a client that never reads its
//!   answer.
//!
//! Every refusal and deadline is counted per listener in `/metrics`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};

use crate::http_admission::{Admission, Limits, Source};
use crate::metrics::Metrics;

/// How one listener is served.
#[derive(Clone)]
pub struct ListenerConfig {
    /// The `listener` label in `/metrics` (`status`, `cni`).
    pub name: &'static str,
    pub limits: Limits,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub lifetime: Duration,
    /// The answer to a request that passed `request_timeout`.
    pub timed_out: fn() -> Response,
    /// The raw HTTP answer written to a refused connection before it is closed.
    pub refused: &'static [u8],
}

/// An accepted connection, where it comes from, and the peer's address for TCP.
pub type Accepted<Io> = (Io, Source, Option<SocketAddr>);

/// A listener the loop can accept from.
pub trait Accept: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn accept_conn(&self) -> BoxFuture<'_, io::Result<Accepted<Self::Io>>>;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    fn accept_conn(&self) -> BoxFuture<'_, io::Result<Accepted<Self::Io>>> {
        async move {
            let (stream, peer) = self.accept().await?;
            Ok((stream, Source::of(peer.ip()), Some(peer)))
        }
        .boxed()
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    fn accept_conn(&self) -> BoxFuture<'_, io::Result<Accepted<Self::Io>>> {
        async move {
            let (stream, _) = self.accept().await?;
            Ok((stream, Source::Local, None))
        }
        .boxed()
    }
}

/// Serves `app` on `listener` until the listener fails for good (never, in practice).
pub async fn serve<L: Accept>(
    listener: L,
    app: axum::Router,
    config: ListenerConfig,
    metrics: Arc<Metrics>,
) {
    let admission = Arc::new(Mutex::new(Admission::new(config.limits)));
    let open = metrics.http.open(config.name);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    loop {
        let (io, source, peer) = match listener.accept_conn().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (or a transient error): back off instead of spinning.
                let n = metrics.http.connection_refused(config.name, "accept_error");
                if n.is_power_of_two() {
                    tracing::warn!(listener = config.name, error = %e, count = n, "cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(source);
        if let Err(refusal) = admitted {
            let n = metrics
                .http
                .connection_refused(config.name, refusal.label());
            if n.is_power_of_two() {
                tracing::warn!(
                    listener = config.name,
                    reason = refusal.label(),
                    count = n,
                    "refusing connections: too many open"
                );
            }
            refuse(io, config.refused);
            continue;
        }
        open.inc();
        let slot = Slot {
            admission: admission.clone(),
            source,
            open: open.clone(),
        };
        let connection = serve_connection(
            io,
            peer,
            app.clone(),
            builder.clone(),
            config.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}

/// Writes the refusal if the socket takes it at once, then closes the connection.
fn refuse<Io: AsyncWrite + Unpin>(mut io: Io, answer: &[u8]) {
    let _ = io.write_all(answer).now_or_never();
}

/// An admitted connection's place in its listener's books, given back when it ends.
struct Slot {
    admission: Arc<Mutex<Admission>>,
    source: Source,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.source);
        self.open.dec();
    }
}

async fn serve_connection<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: Io,
    peer: Option<SocketAddr>,
    app: axum::Router,
    builder: hyper::server::conn::http1::Builder,
    config: ListenerConfig,
    metrics: Arc<Metrics>,
) {
    let name = config.name;
    let request_timeout = config.request_timeout;
    let timed_out = config.timed_out;
    let request_metrics = metrics.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        if let Some(peer) = peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let call = TowerToHyperService::new(app.clone()).call(request);
        let metrics = request_metrics.clone();
        async move {
            match tokio::time::timeout(request_timeout, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    let n = metrics.http.timed_out(name, "request");
                    if n.is_power_of_two() {
                        tracing::warn!(listener = name, count = n, "a request passed its deadline");
                    }
                    Ok(timed_out())
                }
            }
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let reason = match tokio::time::timeout(config.lifetime, connection).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) if e.is_timeout() => "header",
        Ok(Err(e)) => {
            tracing::debug!(listener = name, error = %e, "HTTP connection ended with an error");
            return;
        }
        Err(_) => "lifetime",
    };
    let n = metrics.http.timed_out(name, reason);
    if n.is_power_of_two() {
        tracing::info!(
            listener = name,
            reason,
            count = n,
            "closed connections at their deadline"
        );
    }
}

/// A raw `HTTP/1.1` answer with a plain-text body, for refused connections.
pub const fn refused_answer() -> &'static [u8] {
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 57\r\nconnection: close\r\n\r\ntoo many connections to the weft router; try again later\n"
}

/// The same for the CNI socket: a CNI error body with code 11 (try again later), which the
/// plugin passes on as is (nothing was allocated: the request was never read).
pub const fn refused_cni_answer() -> &'static [u8] {
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 86\r\nconnection: close\r\n\r\n{\"code\":11,\"msg\":\"the weft router has too many CNI connections open; try again later\"}"
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_whole_http_answer() {
        let answer = std::str::from_utf8(super::refused_answer()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn the_cni_refusal_is_a_cni_error_the_plugin_reads() {
        let answer = weft_cni::client::parse_response(super::refused_cni_answer()).unwrap();
        assert_eq!(answer.status, 503);
        let error: weft_cni::protocol::ErrorBody = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(error.code, weft_cni::error::TRY_AGAIN_LATER);
        let raw = std::str::from_utf8(super::refused_cni_answer()).unwrap();
        let (_, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(raw.contains(&format!("content-length: {}\r\n", body.len())));
    }
}
