//! One TCP control connection: dial or accept, run the handshake, then shuttle sealed frames
//! between the socket and the router actor. Sealing happens here, in the connection's own task,
//! so crypto work spreads over cores instead of queueing in the actor.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use weft_crypto::SecretKey;
use weft_gossip::handshake::{Handshake, HandshakeError, Opener, Role};
use weft_gossip::maker::Retry;
use weft_gossip::mesh::{ConnKey, NewConnection};
use weft_gossip::wire::{self, ControlMsg, FRAME_HEADER_LEN, Features, HELLO_LEN, WireError};

use crate::admission::Refusal;
use crate::mesh_port::{MeshPort, Pass};
use crate::metrics::Metrics;
use crate::router::Event;

/// Label of the sleeve's key schedules within a session.
const SLEEVE_KEYS: &str = "weft sleeve";
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
    /// Admission of inbound connections, their deadlines and the rate limit on their warnings.
    pub mesh_port: Arc<MeshPort>,
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
    #[error("timed out waiting for the hello and intro ({0:?} intro deadline)")]
    IntroTimeout(Duration),
    #[error("handshake timed out")]
    Timeout,
    #[error("evicted: a connection from a less busy address took its slot")]
    Evicted,
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
            // One label for both deadlines, as before they were split; the admission counters
            // tell them apart.
            ConnError::IntroTimeout(_) | ConnError::Timeout => "timeout",
            ConnError::Evicted => "evicted",
        }
    }

    /// The admission refusal this failure counts as, if any.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            ConnError::IntroTimeout(_) => Some(Refusal::IntroTimeout),
            ConnError::Timeout => Some(Refusal::HandshakeTimeout),
            // Counted when the eviction was decided.
            _ => None,
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
    pass: Option<Pass>,
) {
    let started = pass.as_ref().map_or_else(Instant::now, |p| p.accepted);
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
    let mut pass = pass;
    let evicted = pass.as_mut().and_then(Pass::take_evicted);
    let handshake = handshake(
        role,
        &params,
        local.clone(),
        &mut reader,
        &mut write_half,
        started,
        pass.as_ref(),
    );
    let outcome = match evicted {
        Some(mut evicted) => tokio::select! {
            done = handshake => done,
            Ok(()) = &mut evicted => Err(ConnError::Evicted),
        },
        None => handshake.await,
    };
    drop(pass);
    let (features, channel) = match outcome {
        Ok(done) => done,
        Err(e) => {
            let label = e.label();
            if role == Role::Listener
                && let Some(refusal) = e.refusal()
            {
                params.mesh_port.count(refusal);
            }
            let role_label = match role {
                Role::Dialer => "outbound",
                Role::Listener => "inbound",
            };
            params
                .mesh_port
                .log_limited((role_label, label), |summary| {
                    tracing::warn!(
                        %remote,
                        target = target.as_deref(),
                        error = %e,
                        earlier = summary.as_ref().map(tracing::field::display),
                        "handshake failed"
                    );
                });
            return report_failure(&params, target, Some(remote), e.to_string(), label).await;
        }
    };

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
            let sealed = sealer.seal(&goodbye);
            let _ =
                tokio::time::timeout(params.heartbeat, write_frame(&mut write_half, &sealed)).await;
            let _ = tokio::time::timeout(params.heartbeat, write_half.shutdown()).await;
            return;
        }
        Err(_) => return,
    }
    let mut reader_task = tokio::spawn(read_loop(reader, opener, key, params.clone()));
    let mut heartbeat = tokio::time::interval(params.heartbeat);
    heartbeat.tick().await;
    // A peer that stops reading would block a write forever (and keep the fd): a write gets as
    // long as the peer may stay silent.
    let write_deadline = params.heartbeat * 3;
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
        match tokio::time::timeout(write_deadline, write_frame(&mut write_half, &sealed)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("write failed: {e}"),
            Err(_) => {
                break format!(
                    "write blocked for {}s: the peer does not read",
                    write_deadline.as_secs_f64()
                );
            }
        }
        if let ControlMsg::Goodbye { reason } = msg {
            break reason;
        }
        heartbeat.reset();
    };
    reader_task.abort();
    let _ = tokio::time::timeout(params.heartbeat, write_half.shutdown()).await;
    let _ = params.events.send(Event::Closed { key, reason }).await;
}

/// Runs the handshake within the mesh port's deadlines, counted from `started` (accept or
/// connect): the plaintext hello and intro by the intro deadline, everything by the handshake
/// deadline. Whole phases are timed, not single reads, so a peer trickling a byte at a time is
/// cut like a silent one.
async fn handshake(
    role: Role,
    params: &ConnParams,
    local: Features,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    started: Instant,
    pass: Option<&Pass>,
) -> Result<(Features, weft_gossip::handshake::SecureChannel), ConnError> {
    let limits = params.mesh_port.limits();
    let (mut hs, hello) = Handshake::new(role, params.password.clone(), local);
    let intro = async {
        writer.write_all(&hello).await?;
        let mut remote_hello = [0u8; HELLO_LEN];
        reader.read_exact(&mut remote_hello).await?;
        let intro = hs.on_hello(&remote_hello)?;
        if let Some(pass) = pass {
            pass.hello_received();
        }
        write_frame(writer, &intro).await?;
        read_frame(reader).await
    };
    let remote_intro = tokio::time::timeout_at((started + limits.intro_deadline).into(), intro)
        .await
        .map_err(|_| ConnError::IntroTimeout(limits.intro_deadline))??;
    let rest = async {
        let sealed = hs.on_intro(&remote_intro)?;
        write_frame(writer, &sealed).await?;
        let remote_sealed = read_frame(reader).await?;
        Ok(hs.on_features(&remote_sealed)?)
    };
    tokio::time::timeout_at((started + limits.handshake_deadline).into(), rest)
        .await
        .map_err(|_| ConnError::Timeout)?
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
