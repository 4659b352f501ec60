//! One TCP control connection: dial or accept, run the handshake, then shuttle sealed frames
//! between the socket and the router actor. Sealing happens here, in the connection's own task,
//! so crypto work spreads over cores instead of queueing in the actor.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use weft_crypto::SecretKey;
use weft_gossip::handshake::{Handshake, HandshakeError, Opener, Role};
use weft_gossip::maker::Retry;
use weft_gossip::mesh::{ConnKey, NewConnection};
use weft_gossip::wire::{self, ControlMsg, FRAME_HEADER_LEN, Features, HELLO_LEN, WireError};

use crate::metrics::Metrics;
use crate::router::Event;

/// Label of the sleeve's key schedules within a session.
const SLEEVE_KEYS: &str = "weft sleeve";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Queue of messages from the actor to one connection. Beyond it, gossip is dropped and
/// anti-entropy repairs the gap; the actor never waits for a slow peer.
pub const SEND_QUEUE: usize = 4096;

/// What every connection task needs.
pub struct ConnParams {
    pub password: Option<SecretKey>,
    pub local: Features,
    pub heartbeat: Duration,
    pub events: mpsc::Sender<Event>,
    pub metrics: Arc<Metrics>,
    pub next_key: AtomicU64,
}

impl ConnParams {
    /// A key for a new connection, unique for the router's lifetime.
    pub fn new_key(&self) -> ConnKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake timed out")]
    Timeout,
}

impl ConnError {
    /// A short, stable label for metrics.
    fn label(&self) -> &'static str {
        match self {
            ConnError::Handshake(HandshakeError::PasswordMismatch) => "password_mismatch",
            ConnError::Handshake(HandshakeError::RemoteHasNoPassword) => "remote_without_password",
            ConnError::Handshake(HandshakeError::LocalHasNoPassword) => "local_without_password",
            ConnError::Handshake(HandshakeError::Wire(WireError::VersionMismatch { .. })) => {
                "version"
            }
            ConnError::Handshake(_) | ConnError::Wire(_) => "protocol",
            ConnError::Io(_) => "io",
            ConnError::Timeout => "timeout",
        }
    }
}

/// Dials `address` and runs the connection.
pub async fn dial(address: String, params: Arc<ConnParams>) {
    let connect = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&address).await?.collect();
        let mut last = std::io::Error::other("address resolved to nothing");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let stream = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return report_failure(&params, Some(address), None, e.to_string(), "dial").await;
        }
        Err(_) => {
            return report_failure(
                &params,
                Some(address),
                None,
                "connect timed out".into(),
                "dial",
            )
            .await;
        }
    };
    run(
        stream,
        Role::Dialer,
        Some(address),
        params.new_key(),
        params,
        None,
    )
    .await;
}

async fn report_failure(
    params: &ConnParams,
    target: Option<String>,
    remote: Option<SocketAddr>,
    error: String,
    label: &'static str,
) {
    params.metrics.handshake_failure(label);
    let _ = params
        .events
        .send(Event::HandshakeFailed {
            target,
            remote,
            error,
            retry: Retry::Later,
        })
        .await;
}

/// Runs an accepted or dialled connection until it ends.
pub async fn run(
    stream: TcpStream,
    role: Role,
    target: Option<String>,
    key: ConnKey,
    params: Arc<ConnParams>,
    handshake_permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let remote = match stream.peer_addr() {
        Ok(addr) => addr,
        Err(e) => return report_failure(&params, target, None, e.to_string(), "io").await,
    };
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let local = Features {
        conn_id: weft_crypto::random_u64(),
        ..params.local.clone()
    };
    let handshake = handshake(role, &params, local.clone(), &mut reader, &mut write_half);
    let (features, channel) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let label = e.label();
            tracing::warn!(%remote, target = target.as_deref(), error = %e, "handshake failed");
            return report_failure(&params, target, Some(remote), e.to_string(), label).await;
        }
        Err(_) => {
            let e = ConnError::Timeout;
            return report_failure(&params, target, Some(remote), e.to_string(), e.label()).await;
        }
    };

    drop(handshake_permit);
    // The sleeve seals each direction with its own key schedule from this session.
    let link_keys = params.password.as_ref().map(|_| {
        let from_dialer = role == Role::Dialer;
        (
            channel.epoch_keys(SLEEVE_KEYS, from_dialer),
            channel.epoch_keys(SLEEVE_KEYS, !from_dialer),
        )
    });
    let (tx, mut rx) = mpsc::channel(SEND_QUEUE);
    let (reply, accepted) = oneshot::channel();
    let new = NewConnection {
        conn_uid: local.conn_id ^ features.conn_id,
        features,
        outbound: role == Role::Dialer,
        remote_tcp: remote,
        target,
        encrypted: params.password.is_some(),
    };
    if params
        .events
        .send(Event::Handshaken {
            key,
            new,
            tx,
            reply,
            link_keys,
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut sealer, opener) = channel.split();
    match accepted.await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            // Tell the peer why, so its status shows more than a closed socket.
            let goodbye = wire::encode(&ControlMsg::Goodbye { reason });
            let _ = write_frame(&mut write_half, &sealer.seal(&goodbye)).await;
            let _ = write_half.shutdown().await;
            return;
        }
        Err(_) => return,
    }
    let mut reader_task = tokio::spawn(read_loop(reader, opener, key, params.clone()));
    let mut heartbeat = tokio::time::interval(params.heartbeat);
    heartbeat.tick().await;
    let reason = loop {
        let msg = tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => break "closed by this router".to_owned(),
            },
            _ = heartbeat.tick() => ControlMsg::Heartbeat,
            ended = &mut reader_task => break ended.unwrap_or_else(|e| e.to_string()),
        };
        let plain = wire::encode(&msg);
        params.metrics.message_sent(&msg, plain.len());
        let sealed = sealer.seal(&plain);
        if let Err(e) = write_frame(&mut write_half, &sealed).await {
            break format!("write failed: {e}");
        }
        if let ControlMsg::Goodbye { reason } = msg {
            break reason;
        }
        heartbeat.reset();
    };
    reader_task.abort();
    let _ = write_half.shutdown().await;
    let _ = params.events.send(Event::Closed { key, reason }).await;
}

async fn handshake(
    role: Role,
    params: &ConnParams,
    local: Features,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> Result<(Features, weft_gossip::handshake::SecureChannel), ConnError> {
    let (mut hs, hello) = Handshake::new(role, params.password.clone(), local);
    writer.write_all(&hello).await?;
    let mut remote_hello = [0u8; HELLO_LEN];
    reader.read_exact(&mut remote_hello).await?;
    let intro = hs.on_hello(&remote_hello)?;
    write_frame(writer, &intro).await?;
    let remote_intro = read_frame(reader).await?;
    let sealed = hs.on_intro(&remote_intro)?;
    write_frame(writer, &sealed).await?;
    let remote_sealed = read_frame(reader).await?;
    Ok(hs.on_features(&remote_sealed)?)
}

/// Reads, opens and forwards frames until the connection fails; returns why.
async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    mut opener: Opener,
    key: ConnKey,
    params: Arc<ConnParams>,
) -> String {
    let silence = params.heartbeat * 3;
    loop {
        let body = match tokio::time::timeout(silence, read_frame(&mut reader)).await {
            Ok(Ok(body)) => body,
            Ok(Err(ConnError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return "connection closed by peer".into();
            }
            Ok(Err(e)) => return format!("read failed: {e}"),
            Err(_) => return format!("no heartbeat for {}s", silence.as_secs_f64()),
        };
        let plain = match opener.open(&body) {
            Ok(plain) => plain,
            Err(e) => {
                params.metrics.frame_rejected();
                return e.to_string();
            }
        };
        let msg = match wire::decode::<ControlMsg>(&plain) {
            Ok(msg) => msg,
            Err(e) => return format!("malformed control message: {e}"),
        };
        params.metrics.message_received(&msg, plain.len());
        match msg {
            ControlMsg::Heartbeat => continue,
            ControlMsg::Goodbye { reason } => return format!("closed by peer: {reason}"),
            _ => {}
        }
        if params
            .events
            .send(Event::Message { key, msg })
            .await
            .is_err()
        {
            return "router stopped".into();
        }
    }
}

async fn read_frame(reader: &mut BufReader<OwnedReadHalf>) -> Result<Vec<u8>, ConnError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let len = wire::frame_len(header)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame(writer: &mut OwnedWriteHalf, body: &[u8]) -> Result<(), ConnError> {
    let framed = wire::frame(body)?;
    writer.write_all(&framed).await?;
    Ok(())
}
