//! Netlink framing of the OVS generic-netlink families, errors, and the `ovs_datapath` and
//! `ovs_vport` messages. Pure: bytes in, values out (and back); the socket lives in `socket`.
//!
//! A message is `struct nlmsghdr` (16 bytes), `struct genlmsghdr` (cmd, version, reserved),
//! `struct ovs_header { int dp_ifindex; }`, then attributes.

use thiserror::Error;

use super::PortNo;
use super::nla::{self, Nla, NlaError, NlaWriter};

pub const NLMSG_HEADER_LEN: usize = 16;
pub const GENL_HEADER_LEN: usize = 4;
pub const OVS_HEADER_LEN: usize = 4;
/// Bytes before the first attribute.
pub const PREFIX_LEN: usize = NLMSG_HEADER_LEN + GENL_HEADER_LEN + OVS_HEADER_LEN;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_DUMP: u16 = 0x300;
/// On a dump reply: the table changed while it was read (entries may be missing or repeated).
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_CREATE: u16 = 0x400;

// Commands (the same numbering in the datapath, vport and flow families).
pub const CMD_NEW: u8 = 1;
pub const CMD_DEL: u8 = 2;
pub const CMD_GET: u8 = 3;
/// `OVS_*_CMD_SET`: a datapath's or vport's upcall pids, a flow's actions.
pub const CMD_SET: u8 = 4;

pub const OVS_DP_ATTR_NAME: u16 = 1;
pub const OVS_DP_ATTR_UPCALL_PID: u16 = 2;
pub const OVS_DP_ATTR_STATS: u16 = 3;
pub const OVS_DP_ATTR_USER_FEATURES: u16 = 5;
/// The last attribute of an upcall may come without padding.
pub const OVS_DP_F_UNALIGNED: u32 = 1 << 0;
/// Each vport has its own upcall pid(s).
pub const OVS_DP_F_VPORT_PIDS: u32 = 1 << 1;
/// Misses go to the datapath's per-CPU upcall pids (`OVS_DP_ATTR_PER_CPU_PIDS`), not the
/// vports' (Linux 5.14+).
pub const OVS_DP_F_DISPATCH_UPCALL_PER_CPU: u32 = 1 << 3;
pub const OVS_DP_ATTR_PER_CPU_PIDS: u16 = 8;
/// `OVS_DP_CMD_SET`.
pub const DP_CMD_SET: u8 = 4;

pub const OVS_VPORT_ATTR_PORT_NO: u16 = 1;
pub const OVS_VPORT_ATTR_TYPE: u16 = 2;
pub const OVS_VPORT_ATTR_NAME: u16 = 3;
pub const OVS_VPORT_ATTR_OPTIONS: u16 = 4;
pub const OVS_VPORT_ATTR_UPCALL_PID: u16 = 5;
pub const OVS_VPORT_ATTR_STATS: u16 = 6;
pub const OVS_VPORT_ATTR_IFINDEX: u16 = 8;
pub const OVS_TUNNEL_ATTR_DST_PORT: u16 = 1;

/// One of the four OVS generic-netlink families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Datapath,
    Vport,
    Flow,
    Packet,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Datapath,
        Family::Vport,
        Family::Flow,
        Family::Packet,
    ];

    /// The generic-netlink family name the kernel registers.
    pub fn name(self) -> &'static str {
        match self {
            Family::Datapath => "ovs_datapath",
            Family::Vport => "ovs_vport",
            Family::Flow => "ovs_flow",
            Family::Packet => "ovs_packet",
        }
    }

    /// `OVS_*_VERSION`, sent in the genl header.
    pub fn version(self) -> u8 {
        match self {
            Family::Datapath => 2,
            Family::Vport | Family::Flow | Family::Packet => 1,
        }
    }

    fn cmd_name(self, cmd: u8) -> &'static str {
        match (self, cmd) {
            (Family::Packet, 1) => "MISS",
            (Family::Packet, 2) => "ACTION",
            (Family::Packet, 3) => "EXECUTE",
            (_, CMD_NEW) => "NEW",
            (_, CMD_DEL) => "DEL",
            (_, CMD_GET) => "GET",
            (_, CMD_SET) => "SET",
            _ => "?",
        }
    }
}

/// A request to one family, before the socket gives it a family id, sequence number and pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub family: Family,
    pub cmd: u8,
    /// `NLM_F_*` besides `NLM_F_REQUEST`.
    pub flags: u16,
    pub dp_ifindex: i32,
    pub attrs: Vec<u8>,
    /// What the request is about, for errors (`in_port(2),eth_dst(..)`, a vport name).
    pub what: String,
}

impl Request {
    pub fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }

    /// `ovs_flow NEW on dp 7 in_port(2)`: says which request failed.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} on dp {}",
            self.family.name(),
            self.family.cmd_name(self.cmd),
            self.dp_ifindex
        );
        if !self.what.is_empty() {
            s.push(' ');
            s.push_str(&self.what);
        }
        s
    }

    /// The whole netlink message.
    pub fn encode(&self, family_id: u16, seq: u32, pid: u32) -> Vec<u8> {
        let len = PREFIX_LEN + self.attrs.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        out.extend_from_slice(&family_id.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | self.flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&pid.to_ne_bytes());
        out.extend_from_slice(&[self.cmd, self.family.version(), 0, 0]);
        out.extend_from_slice(&self.dp_ifindex.to_ne_bytes());
        out.extend_from_slice(&self.attrs);
        out
    }
}

/// Why bytes from the kernel could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("netlink message truncated: {0}")]
    Truncated(&'static str),
    #[error(transparent)]
    Attribute(#[from] NlaError),
    #[error("unexpected value: {0}")]
    Unexpected(String),
}

/// The header fields of one netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlHeader {
    pub len: u32,
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

/// One netlink message from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A family's message: genl command, `dp_ifindex` and the attribute bytes.
    Genl {
        header: NlHeader,
        cmd: u8,
        dp_ifindex: i32,
        attrs: &'a [u8],
    },
    /// NLMSG_ERROR with 0: the request succeeded.
    Ack {
        header: NlHeader,
    },
    /// NLMSG_ERROR with an errno (positive here).
    Error {
        header: NlHeader,
        errno: i32,
    },
    Done {
        header: NlHeader,
    },
}

impl Incoming<'_> {
    pub fn header(&self) -> NlHeader {
        match self {
            Incoming::Genl { header, .. }
            | Incoming::Ack { header }
            | Incoming::Error { header, .. }
            | Incoming::Done { header } => *header,
        }
    }
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Splits one datagram into its messages.
pub fn split(datagram: &[u8]) -> Result<Vec<Incoming<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + NLMSG_HEADER_LEN <= datagram.len() {
        let rest = &datagram[offset..];
        let header = NlHeader {
            len: read_u32(rest, 0).ok_or(DecodeError::Truncated("nlmsghdr"))?,
            msg_type: read_u16(rest, 4).ok_or(DecodeError::Truncated("nlmsghdr"))?,
            flags: read_u16(rest, 6).ok_or(DecodeError::Truncated("nlmsghdr"))?,
            seq: read_u32(rest, 8).ok_or(DecodeError::Truncated("nlmsghdr"))?,
            pid: read_u32(rest, 12).ok_or(DecodeError::Truncated("nlmsghdr"))?,
        };
        let len = header.len as usize;
        if len < NLMSG_HEADER_LEN || len > rest.len() {
            return Err(DecodeError::Truncated("nlmsg_len beyond the datagram"));
        }
        let body = &rest[NLMSG_HEADER_LEN..len];
        out.push(match header.msg_type {
            NLMSG_ERROR => {
                let code = read_u32(body, 0).ok_or(DecodeError::Truncated("nlmsgerr"))? as i32;
                if code == 0 {
                    Incoming::Ack { header }
                } else {
                    Incoming::Error {
                        header,
                        errno: code.saturating_neg(),
                    }
                }
            }
            NLMSG_DONE => Incoming::Done { header },
            _ => {
                let cmd = *body.first().ok_or(DecodeError::Truncated("genlmsghdr"))?;
                let dp_ifindex = read_u32(body, GENL_HEADER_LEN)
                    .ok_or(DecodeError::Truncated("ovs_header"))?
                    as i32;
                Incoming::Genl {
                    header,
                    cmd,
                    dp_ifindex,
                    attrs: &body[GENL_HEADER_LEN + OVS_HEADER_LEN..],
                }
            }
        });
        offset += nla::align(len);
    }
    Ok(out)
}

/// The kernel's errno names weft's requests meet; others print as `errno`.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENOBUFS => "ENOBUFS",
        _ => "errno",
    }
}

/// What went wrong talking to the OVS datapath.
#[derive(Debug, Error)]
pub enum OvsError {
    /// The `ovs_datapath` family does not resolve: the module is not loaded.
    #[error("no openvswitch module")]
    NoOvs,
    /// The kernel refused a request.
    #[error("{request}: {} ({errno})", errno_name(*errno))]
    Kernel { request: String, errno: i32 },
    #[error("{request}: {source}")]
    Io {
        request: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{request}: bad reply: {source}")]
    Decode {
        request: String,
        #[source]
        source: DecodeError,
    },
}

impl OvsError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            OvsError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `struct ovs_dp_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathStats {
    pub hit: u64,
    pub missed: u64,
    pub lost: u64,
    pub flows: u64,
}

/// A datapath as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathInfo {
    pub ifindex: i32,
    pub name: String,
    pub stats: DatapathStats,
    pub user_features: Option<u32>,
}

/// The features weft asks for: per-vport upcall pids, and upcalls whose last attribute may be
/// unaligned (the packet, no copy to pad it).
pub const DATAPATH_FEATURES: u32 = OVS_DP_F_UNALIGNED | OVS_DP_F_VPORT_PIDS;

/// OVS_DP_CMD_NEW, echoed so the reply carries the new datapath's ifindex.
pub fn datapath_new(name: &str, upcall_pid: u32) -> Request {
    let mut w = NlaWriter::new();
    w.put_str(OVS_DP_ATTR_NAME, name);
    w.put_u32(OVS_DP_ATTR_UPCALL_PID, upcall_pid);
    w.put_u32(OVS_DP_ATTR_USER_FEATURES, DATAPATH_FEATURES);
    Request {
        family: Family::Datapath,
        cmd: CMD_NEW,
        flags: NLM_F_ACK | NLM_F_ECHO,
        dp_ifindex: 0,
        attrs: w.into_bytes(),
        what: name.to_string(),
    }
}

fn datapath_by_name(cmd: u8, flags: u16, name: &str) -> Request {
    let mut w = NlaWriter::new();
    w.put_str(OVS_DP_ATTR_NAME, name);
    Request {
        family: Family::Datapath,
        cmd,
        flags,
        dp_ifindex: 0,
        attrs: w.into_bytes(),
        what: name.to_string(),
    }
}

/// OVS_DP_CMD_SET by name: upcalls dispatched per CPU, every CPU's to `upcall_pid` (the kernel
/// takes `pids[cpu % n]`). With `per_cpu` false: back to per-vport pids (a kernel without
/// per-CPU dispatch). The kernel sets the features to exactly those given.
pub fn datapath_set_upcalls(name: &str, upcall_pid: u32, per_cpu: bool) -> Request {
    let mut w = NlaWriter::new();
    w.put_str(OVS_DP_ATTR_NAME, name);
    if per_cpu {
        w.put_u32(
            OVS_DP_ATTR_USER_FEATURES,
            OVS_DP_F_UNALIGNED | OVS_DP_F_DISPATCH_UPCALL_PER_CPU,
        );
        w.put_u32(OVS_DP_ATTR_PER_CPU_PIDS, upcall_pid);
    } else {
        w.put_u32(OVS_DP_ATTR_USER_FEATURES, DATAPATH_FEATURES);
    }
    Request {
        family: Family::Datapath,
        cmd: DP_CMD_SET,
        flags: NLM_F_ACK,
        dp_ifindex: 0,
        attrs: w.into_bytes(),
        what: format!("{name} upcall pid {upcall_pid}"),
    }
}

/// OVS_DP_CMD_GET by name.
pub fn datapath_get(name: &str) -> Request {
    datapath_by_name(CMD_GET, NLM_F_ACK, name)
}

/// OVS_DP_CMD_DEL by name.
pub fn datapath_del(name: &str) -> Request {
    datapath_by_name(CMD_DEL, NLM_F_ACK, name)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

/// A datapath reply (`OVS_DP_CMD_NEW`/`GET`).
pub fn decode_datapath(dp_ifindex: i32, attrs: &[u8]) -> Result<DatapathInfo, DecodeError> {
    let attrs = nla::parse(attrs)?;
    let name = nla::require(&attrs, OVS_DP_ATTR_NAME)?.str()?.to_string();
    let stats = match nla::find(&attrs, OVS_DP_ATTR_STATS) {
        Some(a) => {
            let raw: [u8; 32] = a.array()?;
            DatapathStats {
                hit: u64_at(&raw, 0),
                missed: u64_at(&raw, 1),
                lost: u64_at(&raw, 2),
                flows: u64_at(&raw, 3),
            }
        }
        None => DatapathStats::default(),
    };
    let user_features = nla::find(&attrs, OVS_DP_ATTR_USER_FEATURES)
        .map(|a| a.u32())
        .transpose()?;
    Ok(DatapathInfo {
        ifindex: dp_ifindex,
        name,
        stats,
        user_features,
    })
}

/// `OVS_VPORT_TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VportType {
    Netdev,
    Internal,
    Gre,
    Vxlan,
    Geneve,
    Other(u32),
}

impl VportType {
    pub fn to_raw(self) -> u32 {
        match self {
            VportType::Netdev => 1,
            VportType::Internal => 2,
            VportType::Gre => 3,
            VportType::Vxlan => 4,
            VportType::Geneve => 5,
            VportType::Other(n) => n,
        }
    }

    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => VportType::Netdev,
            2 => VportType::Internal,
            3 => VportType::Gre,
            4 => VportType::Vxlan,
            5 => VportType::Geneve,
            n => VportType::Other(n),
        }
    }
}

/// A vport to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VportSpec {
    pub name: String,
    pub kind: VportType,
    /// The UDP port of a VXLAN (or Geneve) vport (`OVS_TUNNEL_ATTR_DST_PORT`).
    pub dst_port: Option<u16>,
    /// Where this vport's misses go (0: nowhere).
    pub upcall_pid: u32,
}

/// `struct ovs_vport_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VportStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// A vport as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VportInfo {
    pub dp_ifindex: i32,
    pub port_no: PortNo,
    pub name: String,
    pub kind: VportType,
    pub dst_port: Option<u16>,
    pub ifindex: Option<u32>,
    pub upcall_pids: Vec<u32>,
    pub stats: VportStats,
}

/// OVS_VPORT_CMD_NEW, echoed so the reply carries the port number the kernel chose.
pub fn vport_new(dp_ifindex: i32, spec: &VportSpec) -> Request {
    let mut w = NlaWriter::new();
    w.put_str(OVS_VPORT_ATTR_NAME, &spec.name);
    w.put_u32(OVS_VPORT_ATTR_TYPE, spec.kind.to_raw());
    w.put_u32(OVS_VPORT_ATTR_UPCALL_PID, spec.upcall_pid);
    if let Some(port) = spec.dst_port {
        // Host byte order: the kernel reads it with nla_get_u16.
        w.nested(OVS_VPORT_ATTR_OPTIONS, |o| {
            o.put(OVS_TUNNEL_ATTR_DST_PORT, &port.to_ne_bytes())
        });
    }
    Request {
        family: Family::Vport,
        cmd: CMD_NEW,
        flags: NLM_F_ACK | NLM_F_ECHO,
        dp_ifindex,
        attrs: w.into_bytes(),
        what: spec.name.clone(),
    }
}

/// OVS_VPORT_CMD_DEL by port number.
pub fn vport_del(dp_ifindex: i32, port_no: PortNo) -> Request {
    let mut w = NlaWriter::new();
    w.put_u32(OVS_VPORT_ATTR_PORT_NO, port_no);
    Request {
        family: Family::Vport,
        cmd: CMD_DEL,
        flags: NLM_F_ACK,
        dp_ifindex,
        attrs: w.into_bytes(),
        what: format!("port {port_no}"),
    }
}

/// OVS_VPORT_CMD_SET of the upcall pid: where the vport's misses go from now on (a datapath
/// adopted from a router that exited still names that router's socket).
pub fn vport_set_upcall_pid(dp_ifindex: i32, port_no: PortNo, upcall_pid: u32) -> Request {
    let mut w = NlaWriter::new();
    w.put_u32(OVS_VPORT_ATTR_PORT_NO, port_no);
    w.put_u32(OVS_VPORT_ATTR_UPCALL_PID, upcall_pid);
    Request {
        family: Family::Vport,
        cmd: CMD_SET,
        flags: NLM_F_ACK,
        dp_ifindex,
        attrs: w.into_bytes(),
        what: format!("port {port_no} upcall pid {upcall_pid}"),
    }
}

/// OVS_VPORT_CMD_GET by name (the name is unique in the host's netns).
pub fn vport_get(dp_ifindex: i32, name: &str) -> Request {
    let mut w = NlaWriter::new();
    w.put_str(OVS_VPORT_ATTR_NAME, name);
    Request {
        family: Family::Vport,
        cmd: CMD_GET,
        flags: NLM_F_ACK,
        dp_ifindex,
        attrs: w.into_bytes(),
        what: name.to_string(),
    }
}

/// Every vport of a datapath.
pub fn vport_dump(dp_ifindex: i32) -> Request {
    Request {
        family: Family::Vport,
        cmd: CMD_GET,
        flags: NLM_F_DUMP,
        dp_ifindex,
        attrs: Vec::new(),
        what: String::new(),
    }
}

/// A vport reply.
pub fn decode_vport(dp_ifindex: i32, attrs: &[u8]) -> Result<VportInfo, DecodeError> {
    let attrs = nla::parse(attrs)?;
    let port_no = nla::require(&attrs, OVS_VPORT_ATTR_PORT_NO)?.u32()?;
    let kind = VportType::from_raw(nla::require(&attrs, OVS_VPORT_ATTR_TYPE)?.u32()?);
    let name = nla::require(&attrs, OVS_VPORT_ATTR_NAME)?
        .str()?
        .to_string();
    let mut dst_port = None;
    if let Some(options) = nla::find(&attrs, OVS_VPORT_ATTR_OPTIONS) {
        for o in options.nested() {
            let o: Nla<'_> = o?;
            if o.kind == OVS_TUNNEL_ATTR_DST_PORT {
                dst_port = Some(u16::from_ne_bytes(o.array()?));
            }
        }
    }
    let ifindex = nla::find(&attrs, OVS_VPORT_ATTR_IFINDEX)
        .map(|a| a.u32())
        .transpose()?;
    let upcall_pids = nla::find(&attrs, OVS_VPORT_ATTR_UPCALL_PID)
        .map(|a| {
            a.payload
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .unwrap_or_default();
    let stats = match nla::find(&attrs, OVS_VPORT_ATTR_STATS) {
        Some(a) => {
            let raw: [u8; 64] = a.array()?;
            VportStats {
                rx_packets: u64_at(&raw, 0),
                tx_packets: u64_at(&raw, 1),
                rx_bytes: u64_at(&raw, 2),
                tx_bytes: u64_at(&raw, 3),
                rx_errors: u64_at(&raw, 4),
                tx_errors: u64_at(&raw, 5),
                rx_dropped: u64_at(&raw, 6),
                tx_dropped: u64_at(&raw, 7),
            }
        }
        None => VportStats::default(),
    };
    Ok(VportInfo {
        dp_ifindex,
        port_no,
        name,
        kind,
        dst_port,
        ifindex,
        upcall_pids,
        stats,
    })
}

/// [`decode_vport`] in the shape the socket's reply loop takes.
pub fn decode_vport_reply(
    _cmd: u8,
    dp_ifindex: i32,
    attrs: &[u8],
) -> Result<VportInfo, DecodeError> {
    decode_vport(dp_ifindex, attrs)
}
