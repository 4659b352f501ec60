//! The connection handshake and the sealed channel it produces, as a sans-IO state machine.
//!
//! 1. Both sides send a [`Hello`]; the highest common version wins.
//! 2. Both send a plaintext [`Intro`]: a fresh X25519 public key for this connection and
//!    whether they hold a mesh password. A password on one side only is refused here, with a
//!    reason each side can report.
//! 3. Session keys come from the Diffie-Hellman secret, the stretched password and a hash of
//!    everything exchanged so far, one key per direction. Nonces are per-direction message
//!    counters that are never sent: a replayed, dropped, reordered or forged frame fails to
//!    open, and the connection dies (only that one).
//! 4. The first sealed frame each way carries [`Features`]. Opening it proves the peer derived
//!    the same keys, i.e. holds the same password; if not, both sides report a mismatch.
//!
//! Without a password the channel is still sealed (against passive observers) but is not
//! authenticated; status reports encryption as disabled.

use weft_crypto::{EphemeralKeyPair, Nonce, PublicKey, SecretBox, SecretKey};

use crate::wire::{self, Features, HELLO_LEN, Hello, Intro, WireError};

/// Which side opened the TCP connection. Keys are bound to it so the two directions never share
/// a key stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("this peer has a password but the remote has none: refusing an unencrypted connection")]
    RemoteHasNoPassword,
    #[error("the remote requires a password but this peer has none")]
    LocalHasNoPassword,
    #[error("authentication failed: the remote uses a different password (or mesh id)")]
    PasswordMismatch,
    #[error("the remote's key is invalid")]
    InvalidKey,
    #[error("handshake step out of order")]
    OutOfOrder,
}

impl HandshakeError {
    /// Errors that a retry cannot fix until an operator changes something.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            HandshakeError::RemoteHasNoPassword
                | HandshakeError::LocalHasNoPassword
                | HandshakeError::PasswordMismatch
                | HandshakeError::Wire(WireError::VersionMismatch { .. })
        )
    }
}

/// Failure to open a sealed frame on an established channel. The connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed frame {seq} failed to open: forged, replayed, reordered or corrupted")]
pub struct OpenError {
    pub seq: u64,
}

enum State {
    AwaitHello,
    AwaitIntro {
        version: u8,
        remote_hello: [u8; HELLO_LEN],
        local_intro: Vec<u8>,
    },
    AwaitFeatures {
        version: u8,
        session: SessionKeys,
    },
    Done,
}

/// Drives one side of the handshake. Call the `on_*` methods in order with what the peer sent,
/// and send what they return.
pub struct Handshake {
    role: Role,
    password: Option<SecretKey>,
    features: Features,
    keypair: EphemeralKeyPair,
    local_hello: [u8; HELLO_LEN],
    state: State,
}

impl Handshake {
    /// Returns the handshake and the hello to send.
    pub fn new(
        role: Role,
        password: Option<SecretKey>,
        features: Features,
    ) -> (Self, [u8; HELLO_LEN]) {
        Self::with_hello(role, password, features, Hello::OURS)
    }

    /// As [`Handshake::new`], advertising another version range (tests, future upgrades).
    pub fn with_hello(
        role: Role,
        password: Option<SecretKey>,
        features: Features,
        hello: Hello,
    ) -> (Self, [u8; HELLO_LEN]) {
        let local_hello = hello.encode();
        let handshake = Handshake {
            role,
            password,
            features,
            keypair: EphemeralKeyPair::generate(),
            local_hello,
            state: State::AwaitHello,
        };
        (handshake, local_hello)
    }

    /// Takes the peer's hello; returns our intro frame body.
    pub fn on_hello(&mut self, remote: &[u8; HELLO_LEN]) -> Result<Vec<u8>, HandshakeError> {
        let State::AwaitHello = self.state else {
            return Err(HandshakeError::OutOfOrder);
        };
        let theirs = Hello::decode(remote)?;
        let ours = Hello::decode(&self.local_hello)?;
        let version = ours.negotiate(&theirs)?;
        let intro = Intro {
            public_key: self.keypair.public().0,
            password: self.password.is_some(),
        };
        let local_intro = wire::encode(&intro);
        self.state = State::AwaitIntro {
            version,
            remote_hello: *remote,
            local_intro: local_intro.clone(),
        };
        Ok(local_intro)
    }

    /// Takes the peer's intro; returns our sealed features frame body.
    pub fn on_intro(&mut self, remote_intro: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let State::AwaitIntro {
            version,
            remote_hello,
            local_intro,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(HandshakeError::OutOfOrder);
        };
        let intro: Intro = wire::decode(remote_intro)?;
        match (self.password.is_some(), intro.password) {
            (true, false) => return Err(HandshakeError::RemoteHasNoPassword),
            (false, true) => return Err(HandshakeError::LocalHasNoPassword),
            _ => {}
        }
        let shared = self
            .keypair
            .diffie_hellman(&PublicKey(intro.public_key))
            .map_err(|_| HandshakeError::InvalidKey)?;
        // The transcript binds the keys to exactly what both sides saw, in dialer-first order,
        // so a tampered hello or intro yields keys that do not match.
        let (dialer_hello, listener_hello, dialer_intro, listener_intro) = match self.role {
            Role::Dialer => (
                &self.local_hello,
                &remote_hello,
                &local_intro[..],
                remote_intro,
            ),
            Role::Listener => (
                &remote_hello,
                &self.local_hello,
                remote_intro,
                &local_intro[..],
            ),
        };
        let transcript = weft_crypto::hash(&[
            b"weft handshake",
            &[version],
            dialer_hello,
            listener_hello,
            dialer_intro,
            listener_intro,
        ]);
        let mut session =
            SessionKeys::derive(&shared, self.password.as_ref(), &transcript, self.role);
        let sealed = session
            .sealer
            .seal(&wire::encode_features(&self.features, version));
        self.state = State::AwaitFeatures { version, session };
        Ok(sealed)
    }

    /// Takes the peer's sealed features; returns them with the established channel.
    pub fn on_features(
        mut self,
        sealed: &[u8],
    ) -> Result<(Features, SecureChannel), HandshakeError> {
        let State::AwaitFeatures {
            version,
            mut session,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(HandshakeError::OutOfOrder);
        };
        let plain = session
            .opener
            .open(sealed)
            .map_err(|_| HandshakeError::PasswordMismatch)?;
        let features = wire::decode_features(&plain, version)?;
        Ok((
            features,
            SecureChannel {
                version,
                keys: session,
            },
        ))
    }

    pub fn role(&self) -> Role {
        self.role
    }
}

/// Per-direction keys and counters of one connection.
struct SessionKeys {
    sealer: Sealer,
    opener: Opener,
    /// Root of further keys for this session (the sleeve datapath's UDP keys, IPsec).
    root: SecretKey,
    role: Role,
}

/// Domain byte of control-channel nonces; other users of session keys pick their own.
const CONTROL_NONCE_DOMAIN: u8 = 0;

impl SessionKeys {
    fn derive(
        shared: &SecretKey,
        password: Option<&SecretKey>,
        transcript: &[u8; 32],
        role: Role,
    ) -> Self {
        let no_password = SecretKey::from_bytes([0u8; 32]);
        let password = password.unwrap_or(&no_password);
        let root =
            weft_crypto::derive_key(password, "weft session", &[shared.as_bytes(), transcript]);
        let dialer_to_listener = weft_crypto::derive_key(&root, "control dialer to listener", &[]);
        let listener_to_dialer = weft_crypto::derive_key(&root, "control listener to dialer", &[]);
        let (send, recv) = match role {
            Role::Dialer => (dialer_to_listener, listener_to_dialer),
            Role::Listener => (listener_to_dialer, dialer_to_listener),
        };
        SessionKeys {
            sealer: Sealer {
                key: SecretBox::new(send),
                seq: 0,
            },
            opener: Opener {
                key: SecretBox::new(recv),
                seq: 0,
            },
            root,
            role,
        }
    }
}

/// The established, sealed control channel. Split it to read and write from different tasks.
pub struct SecureChannel {
    version: u8,
    keys: SessionKeys,
}

impl SecureChannel {
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Derives a key for another use of this session (e.g. the sleeve's UDP stream in one
    /// direction). Both ends get the same key for the same `label` and direction.
    pub fn derive_key(&self, label: &str, from_dialer: bool) -> SecretKey {
        weft_crypto::derive_key(&self.keys.root, label, &[&[u8::from(from_dialer)]])
    }

    pub fn role(&self) -> Role {
        self.keys.role
    }

    /// Keys for another stream of this session that rotates keys by epoch (the sleeve's UDP
    /// datagrams): `label` names the stream, `from_dialer` the direction, and the schedule
    /// maps an epoch number to its key. Both ends get the same schedule for the same
    /// arguments.
    pub fn epoch_keys(
        &self,
        label: &'static str,
        from_dialer: bool,
    ) -> Box<dyn Fn(u16) -> SecretKey + Send + Sync> {
        let root = self.keys.root.clone();
        Box::new(move |epoch| {
            weft_crypto::derive_key(
                &root,
                label,
                &[&[u8::from(from_dialer)], &epoch.to_be_bytes()],
            )
        })
    }

    pub fn split(self) -> (Sealer, Opener) {
        (self.keys.sealer, self.keys.opener)
    }
}

/// Seals outgoing frames in order.
pub struct Sealer {
    key: SecretBox,
    seq: u64,
}

impl Sealer {
    /// Seals `plaintext` as the next frame body (tag then ciphertext).
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = Nonce::from_counter(CONTROL_NONCE_DOMAIN, self.seq);
        // A u64 counter of frames cannot wrap within the life of a connection.
        self.seq += 1;
        let mut out = Vec::with_capacity(weft_crypto::TAG_LEN + plaintext.len());
        self.key.seal_append(&nonce, plaintext, &mut out);
        out
    }
}

/// Opens incoming frames, strictly in order.
pub struct Opener {
    key: SecretBox,
    seq: u64,
}

impl Opener {
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let seq = self.seq;
        let nonce = Nonce::from_counter(CONTROL_NONCE_DOMAIN, seq);
        let mut out = Vec::with_capacity(sealed.len().saturating_sub(weft_crypto::TAG_LEN));
        self.key
            .open_append(&nonce, sealed, &mut out)
            .map_err(|_| OpenError { seq })?;
        self.seq += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerName;
    use crate::wire::ControlMsg;
    use proptest::prelude::*;

    fn features(n: u64) -> Features {
        Features {
            name: PeerName::from_u64(n).unwrap(),
            nickname: format!("host{n}"),
            uid: n * 1000,
            conn_id: n * 7,
            listen_port: 6783,
            datapaths: Some(crate::wire::DatapathOffer {
                paths: vec![crate::wire::OfferedDatapath {
                    kind: crate::wire::OfferedDatapath::VXLAN,
                    port: 6784,
                    vni: n as u32,
                }],
            }),
        }
    }

    fn password(p: &str) -> Option<SecretKey> {
        // Tests skip the deliberately slow Argon2 step: key derivation only needs 32 bytes.
        Some(weft_crypto::derive_key(
            &SecretKey::from_bytes([9; 32]),
            p,
            &[],
        ))
    }

    type Pair = Result<((Features, SecureChannel), (Features, SecureChannel)), HandshakeError>;

    /// Runs both sides in memory; returns each side's result (dialer, listener).
    fn run(dialer_pw: Option<SecretKey>, listener_pw: Option<SecretKey>) -> (Pair, Pair) {
        let (mut d, d_hello) = Handshake::new(Role::Dialer, dialer_pw, features(1));
        let (mut l, l_hello) = Handshake::new(Role::Listener, listener_pw, features(2));
        let d_intro = d.on_hello(&l_hello).unwrap();
        let l_intro = l.on_hello(&d_hello).unwrap();
        let d_feat = d.on_intro(&l_intro);
        let l_feat = l.on_intro(&d_intro);
        let (d_feat, l_feat) = match (d_feat, l_feat) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                let e = a.err().or(b.err()).unwrap();
                return (Err(e.clone()), Err(e));
            }
        };
        let d_done = d.on_features(&l_feat);
        let l_done = l.on_features(&d_feat);
        match (d_done, l_done) {
            (Ok(a), Ok(b)) => (Ok((a, b)), Err(HandshakeError::OutOfOrder)),
            (a, b) => (a.map(|_| unreachable!()), b.map(|_| unreachable!())),
        }
    }

    #[test]
    fn same_password_establishes_and_exchanges_messages() {
        let (result, _) = run(password("s3cret"), password("s3cret"));
        let ((l_features, d_chan), (d_features, l_chan)) = result.unwrap();
        assert_eq!(l_features, features(2));
        assert_eq!(d_features, features(1));
        let (mut d_seal, mut d_open) = d_chan.split();
        let (mut l_seal, mut l_open) = l_chan.split();
        for i in 0..3u8 {
            let sealed = d_seal.seal(&[i; 10]);
            assert_eq!(l_open.open(&sealed).unwrap(), vec![i; 10]);
            let sealed = l_seal.seal(&wire::encode(&ControlMsg::Heartbeat));
            assert_eq!(
                wire::decode::<ControlMsg>(&d_open.open(&sealed).unwrap()).unwrap(),
                ControlMsg::Heartbeat
            );
        }
    }

    #[test]
    fn a_version_1_peer_and_a_version_2_peer_meet_at_1_without_datapath_offers() {
        let old = Hello {
            min_version: 1,
            max_version: 1,
        };
        let (mut d, d_hello) = Handshake::with_hello(Role::Dialer, None, features(1), old);
        let (mut l, l_hello) = Handshake::new(Role::Listener, None, features(2));
        let d_intro = d.on_hello(&l_hello).unwrap();
        let l_intro = l.on_hello(&d_hello).unwrap();
        let d_feat = d.on_intro(&l_intro).unwrap();
        let l_feat = l.on_intro(&d_intro).unwrap();
        let (from_listener, chan) = d.on_features(&l_feat).unwrap();
        let (from_dialer, _) = l.on_features(&d_feat).unwrap();
        assert_eq!(chan.version(), 1);
        // Neither side sent an offer at version 1, and each decodes the other's frame whole.
        assert_eq!(from_listener.datapaths, None);
        assert_eq!(from_dialer.datapaths, None);
        assert_eq!(from_dialer.name, features(1).name);
    }

    #[test]
    fn a_version_2_features_frame_carries_the_datapath_offer() {
        let body = wire::encode_features(&features(3), 2);
        assert_eq!(wire::decode_features(&body, 2).unwrap(), features(3));
        // A version 1 reader refuses the longer body rather than misreading it.
        assert!(wire::decode_features(&body, 1).is_err());
        let v1 = wire::encode_features(&features(3), 1);
        assert!(v1.len() < body.len());
    }

    #[test]
    fn no_password_on_either_side_establishes() {
        assert!(run(None, None).0.is_ok());
    }

    #[test]
    fn wrong_password_is_refused_on_both_sides() {
        let (d, l) = run(password("one"), password("two"));
        assert_eq!(d.err(), Some(HandshakeError::PasswordMismatch));
        assert_eq!(l.err(), Some(HandshakeError::PasswordMismatch));
    }

    #[test]
    fn password_on_one_side_only_is_refused_with_a_reason() {
        let (mut d, d_hello) = Handshake::new(Role::Dialer, password("x"), features(1));
        let (mut l, l_hello) = Handshake::new(Role::Listener, None, features(2));
        let d_intro = d.on_hello(&l_hello).unwrap();
        let l_intro = l.on_hello(&d_hello).unwrap();
        assert_eq!(
            d.on_intro(&l_intro).err(),
            Some(HandshakeError::RemoteHasNoPassword)
        );
        assert_eq!(
            l.on_intro(&d_intro).err(),
            Some(HandshakeError::LocalHasNoPassword)
        );
        assert!(HandshakeError::PasswordMismatch.is_configuration());
    }

    #[test]
    fn version_ranges_that_do_not_overlap_are_refused() {
        let future = Hello {
            min_version: 7,
            max_version: 9,
        };
        let (mut d, _) = Handshake::new(Role::Dialer, None, features(1));
        let (_, l_hello) = Handshake::with_hello(Role::Listener, None, features(2), future);
        assert!(matches!(
            d.on_hello(&l_hello),
            Err(HandshakeError::Wire(WireError::VersionMismatch { .. }))
        ));
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let (mut d, _) = Handshake::new(Role::Dialer, None, features(1));
        assert_eq!(d.on_intro(b"").err(), Some(HandshakeError::OutOfOrder));
    }

    fn established() -> (Sealer, Opener, Sealer, Opener) {
        let ((_, d_chan), (_, l_chan)) = run(password("k"), password("k")).0.unwrap();
        let (ds, dopen) = d_chan.split();
        let (ls, lopen) = l_chan.split();
        (ds, dopen, ls, lopen)
    }

    #[test]
    fn replayed_frames_are_rejected() {
        let (mut d_seal, _, _, mut l_open) = established();
        let first = d_seal.seal(b"first");
        assert!(l_open.open(&first).is_ok());
        assert!(l_open.open(&first).is_err(), "a replay must not open");
    }

    #[test]
    fn reordered_and_dropped_frames_are_rejected() {
        let (mut d_seal, _, _, mut l_open) = established();
        let first = d_seal.seal(b"first");
        let second = d_seal.seal(b"second");
        assert!(
            l_open.open(&second).is_err(),
            "a frame ahead of its turn must not open"
        );
        assert_eq!(l_open.open(&first).unwrap(), b"first");
        assert_eq!(l_open.open(&second).unwrap(), b"second");
    }

    #[test]
    fn a_forgery_does_not_advance_the_counter() {
        let (mut d_seal, _, _, mut l_open) = established();
        let good = d_seal.seal(b"hello");
        let mut forged = good.clone();
        forged[20] ^= 1;
        assert!(l_open.open(&forged).is_err());
        assert!(l_open.open(&good).is_ok());
    }

    #[test]
    fn directions_use_different_keys() {
        let (mut d_seal, mut d_open, _, _) = established();
        // Our own frame reflected back at us must not open.
        let sealed = d_seal.seal(b"mirror");
        assert!(d_open.open(&sealed).is_err());
    }

    #[test]
    fn epoch_key_schedules_agree_per_direction_and_differ_per_epoch() {
        let ((_, d_chan), (_, l_chan)) = run(password("k"), password("k")).0.unwrap();
        let (d_send, l_recv) = (
            d_chan.epoch_keys("sleeve", true),
            l_chan.epoch_keys("sleeve", true),
        );
        assert_eq!(d_send(0).as_bytes(), l_recv(0).as_bytes());
        assert_ne!(d_send(0).as_bytes(), d_send(1).as_bytes());
        assert_ne!(
            d_send(0).as_bytes(),
            d_chan.epoch_keys("sleeve", false)(0).as_bytes()
        );
    }

    #[test]
    fn derived_session_keys_agree() {
        let ((_, d_chan), (_, l_chan)) = run(password("k"), password("k")).0.unwrap();
        assert_eq!(
            d_chan.derive_key("sleeve", true).as_bytes(),
            l_chan.derive_key("sleeve", true).as_bytes()
        );
        assert_ne!(
            d_chan.derive_key("sleeve", true).as_bytes(),
            d_chan.derive_key("sleeve", false).as_bytes()
        );
    }

    proptest! {
        /// The handshake decoders take arbitrary bytes from the network: errors, never panics.
        #[test]
        fn handshake_survives_garbage(
            hello in any::<[u8; HELLO_LEN]>(),
            intro in proptest::collection::vec(any::<u8>(), 0..128),
            sealed in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let (mut h, _) = Handshake::new(Role::Listener, password("p"), features(3));
            let _ = h.on_hello(&hello);
            let (mut h, peer_hello) = Handshake::new(Role::Listener, password("p"), features(3));
            let _ = h.on_hello(&peer_hello);
            let _ = h.on_intro(&intro);
            let _ = h.on_features(&sealed);
        }

        #[test]
        fn corrupted_frames_never_open(pos in 0usize..40, bit in 0u8..8) {
            let (mut d_seal, _, _, mut l_open) = established();
            let mut sealed = d_seal.seal(b"some control message");
            let pos = pos % sealed.len();
            sealed[pos] ^= 1 << bit;
            prop_assert!(l_open.open(&sealed).is_err());
        }
    }
}
