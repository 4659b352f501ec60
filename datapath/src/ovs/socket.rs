//! The one place that talks to the kernel's Open vSwitch datapath: neli resolves the four
//! generic-netlink families and carries the bytes `msg`/`flow` encode and decode.
//!
//! Synchronous like the rest of weft: one request, its replies up to the ACK (or DONE).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use neli::consts::socket::{Msg, NlFamily};
use neli::router::synchronous::NlRouter;
use neli::socket::NlSocket;
use neli::utils::Groups;
use tracing::debug;

use super::flow::{self, FlowEntry, RawFlow, Upcall};
use super::msg::{self, DatapathInfo, Family, Incoming, OvsError, Request, VportInfo, VportSpec};
use super::{Flow, FlowAction, FlowMatch, PortNo};

/// The largest datagram the kernel sends here: a dump batch or an upcall with a 64 KiB
/// packet.
const RECV_BUF_LEN: usize = 128 * 1024;

/// The generic-netlink ids of the four families in this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyIds {
    pub datapath: u16,
    pub vport: u16,
    pub flow: u16,
    pub packet: u16,
}

impl FamilyIds {
    pub fn get(&self, family: Family) -> u16 {
        match family {
            Family::Datapath => self.datapath,
            Family::Vport => self.vport,
            Family::Flow => self.flow,
            Family::Packet => self.packet,
        }
    }

    /// Asks the kernel's generic-netlink controller (through neli).
    pub fn resolve() -> Result<Self, OvsError> {
        let io_err = |e: String| OvsError::Io {
            request: "nlctrl GETFAMILY".into(),
            source: io::Error::other(e),
        };
        let (router, _multicast) = NlRouter::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| io_err(e.to_string()))?;
        let datapath = router
            .resolve_genl_family(Family::Datapath.name())
            .map_err(|_| OvsError::NoOvs)?;
        let other = |f: Family| {
            router
                .resolve_genl_family(f.name())
                .map_err(|e| io_err(format!("{}: {e}", f.name())))
        };
        Ok(Self {
            datapath,
            vport: other(Family::Vport)?,
            flow: other(Family::Flow)?,
            packet: other(Family::Packet)?,
        })
    }
}

/// One request and the kernel's replies, as bytes: for golden-byte fixtures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: Vec<u8>,
    pub replies: Vec<Vec<u8>>,
}

/// How often a dump the kernel marks interrupted is read again before giving up.
const DUMP_ATTEMPTS: usize = 3;

/// A generic-netlink socket for the OVS families.
pub struct OvsSocket {
    sock: NlSocket,
    ids: FamilyIds,
    pid: u32,
    seq: u32,
    buf: Vec<u8>,
    record: Option<Vec<Exchange>>,
}

impl OvsSocket {
    /// Resolves the families (`NoOvs` without the module) and opens the socket.
    pub fn open() -> Result<Self, OvsError> {
        let ids = FamilyIds::resolve()?;
        let io_err = |source| OvsError::Io {
            request: "netlink socket".into(),
            source,
        };
        let sock = NlSocket::connect(NlFamily::Generic, None, Groups::empty()).map_err(io_err)?;
        let pid = sock.pid().map_err(io_err)?;
        Ok(Self {
            sock,
            ids,
            pid,
            seq: 0,
            buf: vec![0; RECV_BUF_LEN],
            record: None,
        })
    }

    pub fn family_ids(&self) -> FamilyIds {
        self.ids
    }

    /// This socket's netlink port id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// From now on keeps every request and its replies (see [`OvsSocket::take_recorded`]).
    pub fn record(&mut self) {
        self.record = Some(Vec::new());
    }

    pub fn take_recorded(&mut self) -> Vec<Exchange> {
        self.record.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Sends a request; returns the genl replies (cmd, dp_ifindex, attribute bytes are
    /// decoded by `decode`) up to the ACK or DONE.
    fn exchange<T>(
        &mut self,
        req: &Request,
        mut decode: impl FnMut(u8, i32, &[u8]) -> Result<T, msg::DecodeError>,
    ) -> Result<Vec<T>, OvsError> {
        // A dump the kernel marks interrupted (the table changed while it was read) may miss
        // or repeat entries: read it again, a few times, then say so.
        for _ in 0..DUMP_ATTEMPTS {
            match self.exchange_once(req, &mut decode)? {
                (out, false) => return Ok(out),
                (_, true) => debug!(request = %req.describe(), "ovs dump interrupted; again"),
            }
        }
        Err(OvsError::Io {
            request: req.describe(),
            source: io::Error::other(format!(
                "dump interrupted (NLM_F_DUMP_INTR) {DUMP_ATTEMPTS} times in a row"
            )),
        })
    }

    /// One request and its replies; `true` with them if a reply carried NLM_F_DUMP_INTR.
    fn exchange_once<T>(
        &mut self,
        req: &Request,
        decode: &mut impl FnMut(u8, i32, &[u8]) -> Result<T, msg::DecodeError>,
    ) -> Result<(Vec<T>, bool), OvsError> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = req.encode(self.ids.get(req.family), self.seq, self.pid);
        let io_err = |source| OvsError::Io {
            request: req.describe(),
            source,
        };
        self.sock.send(&bytes, Msg::empty()).map_err(io_err)?;
        let mut exchange = Exchange {
            request: bytes,
            replies: Vec::new(),
        };
        let mut out = Vec::new();
        let mut interrupted = false;
        let result = 'recv: loop {
            let (n, _) = match self.sock.recv(&mut self.buf[..], Msg::empty()) {
                Ok(r) => r,
                Err(e) => break 'recv Err(io_err(e)),
            };
            let datagram = &self.buf[..n];
            exchange.replies.push(datagram.to_vec());
            let messages = match msg::split(datagram) {
                Ok(m) => m,
                Err(source) => {
                    break 'recv Err(OvsError::Decode {
                        request: req.describe(),
                        source,
                    });
                }
            };
            for m in messages {
                if m.header().seq != self.seq {
                    continue;
                }
                interrupted |= m.header().flags & msg::NLM_F_DUMP_INTR != 0;
                match m {
                    Incoming::Genl {
                        cmd,
                        dp_ifindex,
                        attrs,
                        ..
                    } => match decode(cmd, dp_ifindex, attrs) {
                        Ok(v) => out.push(v),
                        Err(source) => {
                            break 'recv Err(OvsError::Decode {
                                request: req.describe(),
                                source,
                            });
                        }
                    },
                    Incoming::Ack { .. } | Incoming::Done { .. } => break 'recv Ok(()),
                    Incoming::Error { errno, .. } => {
                        break 'recv Err(OvsError::Kernel {
                            request: req.describe(),
                            errno,
                        });
                    }
                }
            }
        };
        if let Some(record) = &mut self.record {
            record.push(exchange);
        }
        debug!(request = %req.describe(), ok = result.is_ok(), "ovs netlink");
        result.map(|()| (out, interrupted))
    }

    /// Any request built by the codecs; the attribute bytes of each reply. For requests this
    /// socket has no method for, and for probing what the kernel accepts.
    pub fn request(&mut self, req: &Request) -> Result<Vec<Vec<u8>>, OvsError> {
        self.exchange(req, |_, _, attrs| Ok(attrs.to_vec()))
    }

    fn one<T>(&mut self, req: &Request, found: Vec<T>) -> Result<T, OvsError> {
        found.into_iter().next().ok_or_else(|| OvsError::Decode {
            request: req.describe(),
            source: msg::DecodeError::Unexpected("no reply before the ACK".into()),
        })
    }

    /// The datapath called `name`, or `None`.
    pub fn datapath(&mut self, name: &str) -> Result<Option<DatapathInfo>, OvsError> {
        let req = msg::datapath_get(name);
        match self.exchange(&req, |_, dp, a| msg::decode_datapath(dp, a)) {
            Ok(found) => Ok(found.into_iter().next()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a datapath; its misses go to `upcall_pid` (0: dropped).
    pub fn create_datapath(
        &mut self,
        name: &str,
        upcall_pid: u32,
    ) -> Result<DatapathInfo, OvsError> {
        let req = msg::datapath_new(name, upcall_pid);
        let found = self.exchange(&req, |_, dp, a| msg::decode_datapath(dp, a))?;
        self.one(&req, found)
    }

    /// Deletes a datapath; `false` if there was none.
    pub fn delete_datapath(&mut self, name: &str) -> Result<bool, OvsError> {
        absent_is_false(self.exchange(&msg::datapath_del(name), |_, _, _| Ok(())))
    }

    /// The vports of a datapath.
    pub fn vports(&mut self, dp_ifindex: i32) -> Result<Vec<VportInfo>, OvsError> {
        self.exchange(&msg::vport_dump(dp_ifindex), msg::decode_vport_reply)
    }

    /// The vport called `name` in a datapath, or `None`.
    pub fn vport(&mut self, dp_ifindex: i32, name: &str) -> Result<Option<VportInfo>, OvsError> {
        match self.exchange(&msg::vport_get(dp_ifindex, name), msg::decode_vport_reply) {
            Ok(found) => Ok(found.into_iter().next()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn create_vport(
        &mut self,
        dp_ifindex: i32,
        spec: &VportSpec,
    ) -> Result<VportInfo, OvsError> {
        let req = msg::vport_new(dp_ifindex, spec);
        let found = self.exchange(&req, msg::decode_vport_reply)?;
        self.one(&req, found)
    }

    /// Deletes a vport; `false` if there was none.
    pub fn delete_vport(&mut self, dp_ifindex: i32, port_no: PortNo) -> Result<bool, OvsError> {
        absent_is_false(self.exchange(&msg::vport_del(dp_ifindex, port_no), |_, _, _| Ok(())))
    }

    /// Sends the datapath's misses to `upcall_pid` in per-CPU dispatch mode, or, on a kernel
    /// without it, sets per-vport dispatch (the vports' pids then decide). `true` if per-CPU.
    pub fn set_datapath_upcall_pid(
        &mut self,
        name: &str,
        upcall_pid: u32,
    ) -> Result<bool, OvsError> {
        let per_cpu = msg::datapath_set_upcalls(name, upcall_pid, true);
        match self.exchange(&per_cpu, |_, _, _| Ok(())) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                let per_vport = msg::datapath_set_upcalls(name, upcall_pid, false);
                self.exchange(&per_vport, |_, _, _| Ok(())).map(|_| false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the vport's misses to `upcall_pid` from now on.
    pub fn set_vport_upcall_pid(
        &mut self,
        dp_ifindex: i32,
        port_no: PortNo,
        upcall_pid: u32,
    ) -> Result<(), OvsError> {
        let req = msg::vport_set_upcall_pid(dp_ifindex, port_no, upcall_pid);
        // The kernel answers with the vport, then the ACK.
        self.exchange(&req, |_, _, _| Ok(())).map(drop)
    }

    /// Creates the flow, or replaces the actions of the one with the same match.
    pub fn put_flow(&mut self, dp_ifindex: i32, flow: &Flow) -> Result<(), OvsError> {
        // NLM_F_CREATE makes NEW exclusive (EEXIST on a flow with this match): then it is a
        // replacement of the actions, a SET.
        match self.exchange(&flow::flow_new(dp_ifindex, flow), |_, _, _| Ok(())) {
            Err(e) if e.errno() == Some(libc::EEXIST) => self
                .exchange(&flow::flow_modify(dp_ifindex, flow), |_, _, _| Ok(()))
                .map(drop),
            other => other.map(drop),
        }
    }

    /// Deletes the flow weft put for this match; `false` if there was none.
    pub fn delete_flow(&mut self, dp_ifindex: i32, m: &FlowMatch) -> Result<bool, OvsError> {
        absent_is_false(self.exchange(&flow::flow_del(dp_ifindex, m), |_, _, _| Ok(())))
    }

    /// Every flow of the datapath that weft's model holds.
    pub fn flows(&mut self, dp_ifindex: i32) -> Result<Vec<FlowEntry>, OvsError> {
        Ok(self.dump_flows(dp_ifindex)?.0)
    }

    /// Every flow of the datapath: those weft's model holds, and the others (another
    /// program's), which one foreign action must not keep weft from reading.
    pub fn dump_flows(
        &mut self,
        dp_ifindex: i32,
    ) -> Result<(Vec<FlowEntry>, Vec<RawFlow>), OvsError> {
        let all = self.exchange(&flow::flow_dump(dp_ifindex), |_, _, a| {
            Ok(match flow::decode_flow(a) {
                Ok(entry) => Ok(entry),
                Err(e) => Err(flow::raw_flow(a, &e)?),
            })
        })?;
        let mut entries = Vec::new();
        let mut raw = Vec::new();
        for one in all {
            match one {
                Ok(entry) => entries.push(entry),
                Err(r) => raw.push(r),
            }
        }
        Ok((entries, raw))
    }

    /// Deletes a flow weft's model cannot hold; `false` if it was gone.
    pub fn delete_raw_flow(&mut self, dp_ifindex: i32, raw: &RawFlow) -> Result<bool, OvsError> {
        absent_is_false(self.exchange(&flow::raw_flow_del(dp_ifindex, raw), |_, _, _| Ok(())))
    }

    /// Deletes every flow of the datapath.
    pub fn flush_flows(&mut self, dp_ifindex: i32) -> Result<(), OvsError> {
        self.exchange(&flow::flow_flush(dp_ifindex), |_, _, _| Ok(()))
            .map(drop)
    }

    /// Runs `actions` on one packet as if it came in on `in_port`.
    pub fn execute(
        &mut self,
        dp_ifindex: i32,
        packet: &[u8],
        in_port: PortNo,
        actions: &[FlowAction],
    ) -> Result<(), OvsError> {
        let req = flow::packet_execute(dp_ifindex, packet, in_port, actions);
        // An attribute's length is 16 bits: a bigger packet cannot be encoded.
        if packet.len() > usize::from(u16::MAX) - 4 {
            return Err(OvsError::Io {
                request: req.describe(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "packet larger than a netlink attribute",
                ),
            });
        }
        self.exchange(&req, |_, _, _| Ok(())).map(drop)
    }
}

fn absent_is_false(r: Result<Vec<()>, OvsError>) -> Result<bool, OvsError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A socket that only receives upcalls: its port id goes into datapaths' and vports'
/// upcall pids.
pub struct UpcallSocket {
    sock: NlSocket,
    pid: u32,
}

impl UpcallSocket {
    /// A nonblocking socket: [`UpcallSocket::recv`] returns `WouldBlock` when nothing waits.
    pub fn open() -> io::Result<Self> {
        let sock = NlSocket::connect(NlFamily::Generic, None, Groups::empty())?;
        sock.nonblock()?;
        let pid = sock.pid()?;
        Ok(Self { sock, pid })
    }

    /// The netlink port id to give as upcall pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sets blocking (`true`) or nonblocking mode.
    pub fn set_blocking(&self, blocking: bool) -> io::Result<()> {
        if blocking {
            self.sock.block()
        } else {
            self.sock.nonblock()
        }
    }

    /// The next upcall; `buf` holds the datagram (64 KiB + headers is enough). Non-upcall
    /// messages are skipped.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Upcall> {
        loop {
            let n = self.recv_datagram(buf)?;
            if let Some(upcall) = decode_upcall_datagram(&buf[..n]).map_err(io::Error::other)? {
                return Ok(upcall);
            }
        }
    }

    /// The next upcall, or `None` if none came within `timeout` (in either mode).
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Upcall>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.sock.as_raw_fd(), left)? {
                return Ok(None);
            }
            match self.recv_datagram(buf) {
                Ok(n) => {
                    if let Some(upcall) =
                        decode_upcall_datagram(&buf[..n]).map_err(io::Error::other)?
                    {
                        return Ok(Some(upcall));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One raw datagram into `buf`; its length.
    pub fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(&mut *buf, Msg::empty()).map(|(n, _)| n)
    }
}

/// Whether `fd` became readable within `timeout`.
#[allow(unsafe_code)]
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd for the duration of the call; the fd is owned by the
        // socket borrowed by the caller.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The first upcall in a datagram, if it holds one.
pub fn decode_upcall_datagram(datagram: &[u8]) -> Result<Option<Upcall>, msg::DecodeError> {
    for m in msg::split(datagram)? {
        if let Incoming::Genl {
            cmd,
            dp_ifindex,
            attrs,
            ..
        } = m
        {
            return flow::decode_upcall(cmd, dp_ifindex, attrs).map(Some);
        }
    }
    Ok(None)
}
