//! The control connection's wire format.
//!
//! A connection starts with a fixed-size [`Hello`] from each side (magic and protocol version
//! range), then carries frames: a 4-byte big-endian length followed by a body of at most
//! [`MAX_FRAME_LEN`] bytes. The first frame each way is the plaintext handshake intro; every
//! frame after it is sealed (see `handshake`). Bodies are postcard-encoded serde types, so a
//! field added to the end of a message needs a protocol version bump, never a silent change.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::peer::{PeerName, PeerUid};
use crate::topology::TopologyUpdate;

/// Magic that opens every connection.
pub const MAGIC: [u8; 4] = *b"weft";
/// Protocol versions this build speaks.
pub const PROTOCOL_MIN: u8 = 1;
pub const PROTOCOL_MAX: u8 = 2;
/// The first version whose features frame carries a [`DatapathOffer`] after the [`Features`].
pub const DATAPATH_OFFER_VERSION: u8 = 2;
pub const HELLO_LEN: usize = 6;
/// Length prefix of a frame.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest frame body accepted or sent. Topology of thousands of peers travels as deltas and
/// digests, so a full update beyond this size is split by the sender (see `split_update`).
pub const MAX_FRAME_LEN: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a weft peer (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error(
        "no common protocol version: we speak {ours_min}..={ours_max}, peer {theirs_min}..={theirs_max}"
    )]
    VersionMismatch {
        ours_min: u8,
        ours_max: u8,
        theirs_min: u8,
        theirs_max: u8,
    },
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    #[error("malformed message: {0}")]
    Decode(String),
}

/// The first bytes on a connection, sent by both sides at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u8,
    pub max_version: u8,
}

impl Hello {
    pub const OURS: Hello = Hello {
        min_version: PROTOCOL_MIN,
        max_version: PROTOCOL_MAX,
    };

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.min_version;
        out[5] = self.max_version;
        out
    }

    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Self, WireError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[..4]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        Ok(Hello {
            min_version: bytes[4],
            max_version: bytes[5],
        })
    }

    /// The highest version both sides speak.
    pub fn negotiate(&self, theirs: &Hello) -> Result<u8, WireError> {
        let low = self.min_version.max(theirs.min_version);
        let high = self.max_version.min(theirs.max_version);
        if low > high {
            return Err(WireError::VersionMismatch {
                ours_min: self.min_version,
                ours_max: self.max_version,
                theirs_min: theirs.min_version,
                theirs_max: theirs.max_version,
            });
        }
        Ok(high)
    }
}

/// Reads the length prefix of a frame and checks it against the limit, so a reader never
/// allocates more than [`MAX_FRAME_LEN`] on a peer's word.
pub fn frame_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Splits complete frames off the front of `buf`. Returns the bodies found and how many bytes
/// were consumed; a trailing partial frame stays for the next call.
pub fn split_frames(buf: &[u8]) -> Result<(Vec<&[u8]>, usize), WireError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= FRAME_HEADER_LEN {
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&buf[at..at + FRAME_HEADER_LEN]);
        let len = frame_len(header)?;
        let end = at + FRAME_HEADER_LEN + len;
        if end > buf.len() {
            break;
        }
        frames.push(&buf[at + FRAME_HEADER_LEN..end]);
        at = end;
    }
    Ok((frames, at))
}

/// Prepends the length prefix.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, WireError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on serializer-side errors (e.g. unsupported types), which our own
    // message types never hit; an empty body then fails loudly at the peer's decoder.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a whole body; trailing bytes are an error, so a message means one thing only.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// The plaintext intro: what each side needs to derive the session before anything secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intro {
    /// The sender's ephemeral X25519 public key for this connection.
    pub public_key: [u8; 32],
    /// Whether the sender's session keys include a mesh password.
    pub password: bool,
}

/// Who the sender is. The first sealed frame each way, so it doubles as key confirmation: a
/// peer with another password cannot produce or read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
    /// The sender's half of the connection id; both ends use `ours ^ theirs`.
    pub conn_id: u64,
    /// The TCP port the sender accepts mesh connections on (for address discovery).
    pub listen_port: u16,
    /// The datapaths the sender offers on this connection. Not part of the version 1 body: from
    /// [`DATAPATH_OFFER_VERSION`] on it follows the features in the same sealed frame, so a
    /// version 1 peer neither sends nor expects it (and is treated as offering none).
    #[serde(skip)]
    pub datapaths: Option<DatapathOffer>,
}

/// What a peer offers besides the sleeve, which every peer speaks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathOffer {
    pub paths: Vec<OfferedDatapath>,
}

/// One kernel datapath a peer can carry frames on. `kind` is a number, not an enum, so that a
/// newer peer's kinds decode here and are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedDatapath {
    pub kind: u8,
    /// The UDP port it receives on.
    pub port: u16,
    /// VXLAN network identifier.
    pub vni: u32,
}

impl OfferedDatapath {
    /// The Linux VXLAN device.
    pub const VXLAN: u8 = 1;
    /// Open vSwitch's kernel datapath with a VXLAN vport.
    pub const FASTDP: u8 = 2;
}

impl DatapathOffer {
    /// The offer of `kind`, if made.
    pub fn get(&self, kind: u8) -> Option<OfferedDatapath> {
        self.paths.iter().copied().find(|p| p.kind == kind)
    }
}

/// The features frame body for protocol `version`: the features, then (from
/// [`DATAPATH_OFFER_VERSION`]) the datapath offer.
pub fn encode_features(features: &Features, version: u8) -> Vec<u8> {
    let mut body = encode(features);
    if version >= DATAPATH_OFFER_VERSION {
        body.extend(encode(&features.datapaths.clone().unwrap_or_default()));
    }
    body
}

/// Reads a features frame body of protocol `version`; trailing bytes are an error.
pub fn decode_features(body: &[u8], version: u8) -> Result<Features, WireError> {
    if version < DATAPATH_OFFER_VERSION {
        return decode(body);
    }
    let (mut features, rest) = postcard::take_from_bytes::<Features>(body)
        .map_err(|e| WireError::Decode(e.to_string()))?;
    features.datapaths = Some(decode(rest)?);
    Ok(features)
}

/// Gossip channels share one transport. Unknown channels are relayed but not interpreted, so
/// a newer peer can add a channel without breaking older ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChannelId(pub u16);

impl ChannelId {
    pub const TOPOLOGY: ChannelId = ChannelId(1);
    /// Control-plane echo along unicast routes, used by `weft ping` to prove relaying works.
    pub const ECHO: ChannelId = ChannelId(2);
}

/// A sealed control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Keep-alive; the connection dies after several missed intervals.
    Heartbeat,
    /// Gossip meant for this neighbour only.
    Gossip {
        channel: ChannelId,
        payload: Vec<u8>,
    },
    /// Spread along the broadcast tree rooted at `src`.
    Broadcast {
        channel: ChannelId,
        src: PeerName,
        payload: Vec<u8>,
    },
    /// Relayed hop by hop along unicast routes to `dst`.
    Unicast {
        channel: ChannelId,
        src: PeerName,
        dst: PeerName,
        payload: Vec<u8>,
    },
    /// The sender is closing this connection, and why (shown in the receiver's status).
    Goodbye { reason: String },
}

/// Payloads of the echo channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EchoMsg {
    Request { id: u64 },
    Reply { id: u64 },
}

/// Splits an update into pieces whose encodings fit in a frame with room for the envelope.
pub fn split_update(update: TopologyUpdate, budget: usize) -> Vec<TopologyUpdate> {
    let mut parts = Vec::new();
    let mut current = TopologyUpdate::default();
    let mut size = 0;
    for entry in update.entries {
        let entry_size = postcard::experimental::serialized_size(&entry).unwrap_or(budget);
        if !current.entries.is_empty() && size + entry_size > budget {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += entry_size;
        current.entries.push(entry);
    }
    if !current.entries.is_empty() {
        parts.push(current);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_negotiates_the_highest_common_version() {
        let ours = Hello {
            min_version: 1,
            max_version: 3,
        };
        assert_eq!(
            ours.negotiate(&Hello {
                min_version: 2,
                max_version: 5
            }),
            Ok(3)
        );
        assert!(matches!(
            ours.negotiate(&Hello {
                min_version: 4,
                max_version: 5
            }),
            Err(WireError::VersionMismatch { .. })
        ));
        let bytes = ours.encode();
        assert_eq!(Hello::decode(&bytes), Ok(ours));
        assert!(matches!(
            Hello::decode(b"weave\x01"),
            Err(WireError::BadMagic(_))
        ));
    }

    #[test]
    fn frames_split_and_bound() {
        let mut stream = frame(b"one").unwrap();
        stream.extend(frame(b"").unwrap());
        stream.extend(&frame(b"three").unwrap()[..5]);
        let (frames, used) = split_frames(&stream).unwrap();
        assert_eq!(frames, vec![&b"one"[..], &b""[..]]);
        assert_eq!(used, 11);
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            split_frames(&huge),
            Err(WireError::FrameTooLarge(MAX_FRAME_LEN + 1))
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = encode(&ControlMsg::Heartbeat);
        bytes.push(0);
        assert!(decode::<ControlMsg>(&bytes).is_err());
    }

    #[test]
    fn huge_length_prefixes_inside_a_body_do_not_allocate() {
        // Gossip { channel: 1, payload: <claims 2^62 bytes> }: must fail on the short input
        // instead of reserving what the prefix claims.
        let mut bytes = vec![1u8, 1];
        bytes.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(decode::<ControlMsg>(&bytes).is_err());
        // A topology update claiming 2^62 entries.
        let mut bytes = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        bytes.extend([0u8; 16]);
        assert!(decode::<TopologyUpdate>(&bytes).is_err());
    }

    fn arb_msg() -> impl Strategy<Value = ControlMsg> {
        let name = (0u64..(1 << 48)).prop_map(|v| PeerName::from_u64(v).unwrap());
        let payload = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            Just(ControlMsg::Heartbeat),
            ".{0,40}".prop_map(|reason| ControlMsg::Goodbye { reason }),
            (any::<u16>(), payload.clone()).prop_map(|(c, payload)| ControlMsg::Gossip {
                channel: ChannelId(c),
                payload
            }),
            (any::<u16>(), name.clone(), payload.clone()).prop_map(|(c, src, payload)| {
                ControlMsg::Broadcast {
                    channel: ChannelId(c),
                    src,
                    payload,
                }
            }),
            (any::<u16>(), name.clone(), name, payload).prop_map(|(c, src, dst, payload)| {
                ControlMsg::Unicast {
                    channel: ChannelId(c),
                    src,
                    dst,
                    payload,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn control_messages_round_trip(msg in arb_msg()) {
            prop_assert_eq!(decode::<ControlMsg>(&encode(&msg)).unwrap(), msg);
        }

        /// The decoders are fed arbitrary and truncated bytes: they may fail, never panic.
        #[test]
        fn decoders_survive_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ControlMsg>(&bytes);
            let _ = decode::<crate::channel::GossipMsg>(&bytes);
            let _ = decode::<TopologyUpdate>(&bytes);
            let _ = decode::<crate::topology::Digest>(&bytes);
            let _ = decode::<Features>(&bytes);
            let _ = decode_features(&bytes, DATAPATH_OFFER_VERSION);
            let _ = decode::<Intro>(&bytes);
            let _ = decode::<EchoMsg>(&bytes);
            let _ = split_frames(&bytes);
        }

        #[test]
        fn truncated_messages_fail_cleanly(msg in arb_msg(), cut in 0usize..64) {
            let bytes = encode(&msg);
            let cut = cut.min(bytes.len());
            if cut < bytes.len() {
                prop_assert!(decode::<ControlMsg>(&bytes[..cut]).is_err());
            }
        }
    }
}
