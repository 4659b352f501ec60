//! Fault injection: cut traffic between two hosts, take a host's link down, lose packets, write
//! raw bytes to a socket, and send hand-made UDP datagrams.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::cmd::{self, Output};
use crate::net::{HostId, Net, ip_in};

/// The harness' own nftables table in each host; nothing else in the host uses nftables.
const FIREWALL_TABLE: &str = "weft_test";

/// Drops every packet to or from an address in the `blocked` set, UDP to or from an address
/// in the `udp_blocked` set, UDP to a port of an address in the `udp_port_blocked` set (both
/// directions: from that address to that port, and to that address and port), and connection
/// attempts (SYN without ACK) to a port in the `refused` set.
const FIREWALL_RULES: &str = "
table inet weft_test {
    set blocked { type ipv4_addr; }
    set udp_blocked { type ipv4_addr; }
    set udp_port_blocked { type ipv4_addr . inet_service; }
    set refused { type inet_service; }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @blocked drop
        ip saddr @udp_blocked meta l4proto udp drop
        ip saddr . udp dport @udp_port_blocked drop
        tcp dport @refused tcp flags & (syn | ack) == syn drop
    }
    chain output {
        type filter hook output priority 0; policy accept;
        ip daddr @blocked drop
        ip daddr @udp_blocked meta l4proto udp drop
        ip daddr . udp dport @udp_port_blocked drop
    }
}
";

/// The greeting a weft router sends first on every connection.
const HELLO_LEN: usize = 6;
/// How long a raw-socket client waits for the router to hang up.
const RAW_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends each argument (hex) as one UDP datagram through a raw socket: the kernel adds the IP
/// header, the script writes the UDP header (checksum 0: none, valid over IPv4).
const UDP_SENDER: &str = "
import socket, struct, sys
dst, sport, dport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
for payload in map(bytes.fromhex, sys.argv[4:]):
    s.sendto(struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload, (dst, 0))
";

/// Names the payload files of raw-socket clients running at the same time.
static NEXT_PAYLOAD: AtomicUsize = AtomicUsize::new(0);

/// What a TCP connection attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Something listens there.
    Connected,
    /// The host answered with a reset: reachable, nothing listens.
    Refused,
    /// No route (the link is down, say).
    Unreachable,
    /// No answer within the probe's timeout (packets are dropped somewhere).
    NoAnswer,
}

impl Net {
    /// Tries one TCP connection from host `from` to `to`, waiting at most `timeout`.
    pub fn tcp_probe(
        &self,
        from: HostId,
        to: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Reachability> {
        let seconds = format!("{:.1}", timeout.as_secs_f64());
        let out = self.exec_output(
            from,
            &[
                "timeout",
                &seconds,
                "bash",
                "-c",
                r#"exec 3<>"/dev/tcp/$0/$1""#,
                &to.ip().to_string(),
                &to.port().to_string(),
            ],
        )?;
        match out.status.code() {
            Some(0) => Ok(Reachability::Connected),
            Some(124) => Ok(Reachability::NoAnswer),
            _ if out.stderr.contains("refused") => Ok(Reachability::Refused),
            _ if out.stderr.contains("unreachable") => Ok(Reachability::Unreachable),
            _ => anyhow::bail!(
                "host{from}: unexpected probe result ({}): {}",
                out.status,
                out.stderr.trim()
            ),
        }
    }

    /// Drops all traffic between hosts `i` and `j`, both directions, with nftables in host `i`
    /// (established connections go silent rather than being reset).
    pub fn block(&self, i: HostId, j: HostId) -> anyhow::Result<()> {
        self.ensure_firewall(i)?;
        self.firewall_set(i, "add", "blocked", &self.address(j).to_string())
    }

    /// Undoes [`Net::block`].
    pub fn unblock(&self, i: HostId, j: HostId) -> anyhow::Result<()> {
        self.firewall_set(i, "delete", "blocked", &self.address(j).to_string())
    }

    /// Drops UDP between hosts `i` and `j`, both directions, with nftables in host `i`; TCP
    /// keeps working (a firewall that lets the control connection through but not the data).
    pub fn block_udp(&self, i: HostId, j: HostId) -> anyhow::Result<()> {
        self.ensure_firewall(i)?;
        self.firewall_set(i, "add", "udp_blocked", &self.address(j).to_string())
    }

    /// Undoes [`Net::block_udp`].
    pub fn unblock_udp(&self, i: HostId, j: HostId) -> anyhow::Result<()> {
        self.firewall_set(i, "delete", "udp_blocked", &self.address(j).to_string())
    }

    /// Drops UDP to `port` between hosts `i` and `j`, both directions (what host `j` sends to
    /// host `i`'s `port` and what host `i` sends to host `j`'s), with nftables in host `i`;
    /// other UDP and TCP keep working (a firewall that closes one service's port, such as the
    /// VXLAN port, between two hosts).
    pub fn block_udp_port(&self, i: HostId, j: HostId, port: u16) -> anyhow::Result<()> {
        self.ensure_firewall(i)?;
        let element = format!("{} . {port}", self.address(j));
        self.firewall_set(i, "add", "udp_port_blocked", &element)
    }

    /// Undoes [`Net::block_udp_port`].
    pub fn unblock_udp_port(&self, i: HostId, j: HostId, port: u16) -> anyhow::Result<()> {
        let element = format!("{} . {port}", self.address(j));
        self.firewall_set(i, "delete", "udp_port_blocked", &element)
    }

    /// Makes host `i` silently drop new TCP connections to `port`; connections already up and
    /// connections host `i` makes itself are unaffected.
    pub fn refuse_connections(&self, i: HostId, port: u16) -> anyhow::Result<()> {
        self.ensure_firewall(i)?;
        self.firewall_set(i, "add", "refused", &port.to_string())
    }

    /// Undoes [`Net::refuse_connections`].
    pub fn accept_connections(&self, i: HostId, port: u16) -> anyhow::Result<()> {
        self.firewall_set(i, "delete", "refused", &port.to_string())
    }

    /// Takes host `i`'s `eth0` down.
    pub fn link_down(&self, i: HostId) -> anyhow::Result<()> {
        ip_in(self.ns(i), &["link", "set", "eth0", "down"]).map(drop)
    }

    /// Brings host `i`'s `eth0` back up.
    pub fn link_up(&self, i: HostId) -> anyhow::Result<()> {
        ip_in(self.ns(i), &["link", "set", "eth0", "up"]).map(drop)
    }

    /// Makes host `i` lose `percent`% of the packets it sends. Returns `Ok(false)` when the
    /// kernel has no `sch_netem`, so a test can skip that part instead of failing.
    pub fn netem_loss(&self, i: HostId, percent: f64) -> anyhow::Result<bool> {
        let loss = format!("{percent}%");
        let out = self.exec_output(
            i,
            &[
                "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss", &loss,
            ],
        )?;
        if out.success() {
            return Ok(true);
        }
        if out.stderr.contains("qdisc kind is unknown") {
            eprintln!("harness: sch_netem is not available: {}", out.stderr.trim());
            return Ok(false);
        }
        anyhow::bail!("host{i}: cannot add netem loss: {}", out.stderr.trim())
    }

    /// Removes what [`Net::netem_loss`] added.
    pub fn clear_netem(&self, i: HostId) -> anyhow::Result<()> {
        self.exec(i, &["tc", "qdisc", "del", "dev", "eth0", "root"])
            .map(drop)
    }

    /// Connects from host `from` to `to`, writes `payload` and reads until the remote hangs up
    /// (or [`RAW_CLIENT_TIMEOUT`] passes). Returns what came back in `stdout`. Uses bash's
    /// `/dev/tcp`, so the host needs no extra tool.
    pub fn send_raw(&self, from: HostId, to: SocketAddr, payload: &[u8]) -> anyhow::Result<Output> {
        self.raw_client(from, to, payload, true)
    }

    /// Reads the router's hello, writes `payload` and closes the connection. Reading first
    /// makes the close a clean end of stream rather than a reset for unread data.
    pub fn send_raw_and_hang_up(
        &self,
        from: HostId,
        to: SocketAddr,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.raw_client(from, to, payload, false).map(drop)
    }

    /// Sends each of `datagrams` as one UDP datagram from host `from`, source port `from_port`,
    /// to `to`. A raw socket writes them, so `from_port` may be one a router has bound: the
    /// datagrams look like that router's own.
    pub fn send_udp(
        &self,
        from: HostId,
        from_port: u16,
        to: SocketAddrV4,
        datagrams: &[&[u8]],
    ) -> anyhow::Result<()> {
        let hex: Vec<String> = datagrams
            .iter()
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let (dst, sport, dport) = (
            to.ip().to_string(),
            from_port.to_string(),
            to.port().to_string(),
        );
        let mut argv = vec!["python3", "-c", UDP_SENDER, &dst, &sport, &dport];
        argv.extend(hex.iter().map(String::as_str));
        self.exec(from, &argv).map(drop)
    }

    fn raw_client(
        &self,
        from: HostId,
        to: SocketAddr,
        payload: &[u8],
        read_answer: bool,
    ) -> anyhow::Result<Output> {
        // `cat` of a file writes the payload in one write(2): a payload split over several writes
        // could meet a router that already hung up, and a failed write would end the client.
        let payload_file = self.host(from).dir.join(format!(
            "raw-payload-{}",
            NEXT_PAYLOAD.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&payload_file, payload)?;
        // A router that hangs up on unread data resets the connection; `cat` then fails after
        // printing what arrived before the reset, which is still the answer.
        let script = r#"trap '' PIPE
exec 3<>"/dev/tcp/$0/$1" || exit 2
if [ "$4" = hang-up ]; then timeout "$3" head -c "$5" <&3 >/dev/null; fi
cat "$2" >&3
if [ "$4" = read ]; then timeout "$3" cat <&3; fi
exit 0"#;
        let mut command = self.command_in(
            from,
            &[
                "bash",
                "-c",
                script,
                &to.ip().to_string(),
                &to.port().to_string(),
                &payload_file.display().to_string(),
                &RAW_CLIENT_TIMEOUT.as_secs().to_string(),
                if read_answer { "read" } else { "hang-up" },
                &HELLO_LEN.to_string(),
            ],
        );
        let out = cmd::run_with_timeout(&mut command, RAW_CLIENT_TIMEOUT * 2);
        let _ = std::fs::remove_file(&payload_file);
        let out = out?;
        anyhow::ensure!(
            out.success(),
            "host{from}: cannot talk to {to} ({}): {}",
            out.status,
            out.stderr.trim()
        );
        Ok(out)
    }

    fn ensure_firewall(&self, i: HostId) -> anyhow::Result<()> {
        let host = self.host(i);
        let mut ready = host
            .firewall_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !*ready {
            let rules = host.dir.join("firewall.nft");
            std::fs::write(&rules, FIREWALL_RULES)?;
            self.exec(i, &["nft", "-f", &rules.display().to_string()])
                .context("cannot install the test firewall")?;
            *ready = true;
        }
        Ok(())
    }

    /// Adds an element to or deletes one from a set of the test firewall.
    fn firewall_set(&self, i: HostId, verb: &str, set: &str, element: &str) -> anyhow::Result<()> {
        let element = format!("{{ {element} }}");
        self.exec(
            i,
            &[
                "nft",
                verb,
                "element",
                "inet",
                FIREWALL_TABLE,
                set,
                &element,
            ],
        )
        .map(drop)
    }
}
