//! Packet captures with tcpdump on a host's underlay (`eth0`), another interface of a host, or
//! a pod's `eth0`, and a just-enough pcap reader for the frames and UDP datagrams in them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::background::Background;
use crate::net::{HostId, Net};
use crate::pods::PodId;

/// How long tcpdump may take to open the interface.
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(10);
const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;
const LINKTYPE_ETHERNET: u32 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;

/// Names the capture files of one Net.
static NEXT_CAPTURE: AtomicUsize = AtomicUsize::new(0);

/// tcpdump writing what host `i`'s `eth0` sees to a pcap file. Each packet is written as soon
/// as it is captured (`-U --immediate-mode`), so the file can be read while tcpdump runs.
pub struct Capture {
    tcpdump: Option<Background>,
    file: PathBuf,
}

/// A UDP datagram over IPv4 seen in a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

impl Net {
    /// Starts capturing on host `i`'s `eth0` what matches the tcpdump filter `filter` (e.g.
    /// `udp port 6783`); returns once tcpdump listens.
    pub fn capture(&self, i: HostId, filter: &str) -> anyhow::Result<Capture> {
        let name = format!("host{i}");
        self.capture_in(self.ns(i).to_owned(), &name, "eth0", &[], filter)
    }

    /// Starts capturing on host `i`'s interface `interface` (e.g. the bridge `weft` or the
    /// VXLAN device) what matches `filter`; returns once tcpdump listens.
    pub fn capture_on(&self, i: HostId, interface: &str, filter: &str) -> anyhow::Result<Capture> {
        let name = format!("host{i}-{interface}");
        self.capture_in(self.ns(i).to_owned(), &name, interface, &[], filter)
    }

    /// Starts capturing what pod `pod`'s `eth0` *receives* (`tcpdump -Q in`: not what it sends)
    /// and matches `filter`; returns once tcpdump listens. For counting the copies of a frame
    /// that reach a pod.
    pub fn capture_pod_inbound(&self, pod: PodId, filter: &str) -> anyhow::Result<Capture> {
        let name = format!("pod{pod}");
        self.capture_in(self.pod_ns(pod)?, &name, "eth0", &["-Q", "in"], filter)
    }

    fn capture_in(
        &self,
        ns: String,
        name: &str,
        interface: &str,
        extra: &[&str],
        filter: &str,
    ) -> anyhow::Result<Capture> {
        // `.pcap`: the name tcpdump's AppArmor profile lets it write where that is enforced.
        let file = self.dir.join(format!(
            "{name}-{}.pcap",
            NEXT_CAPTURE.fetch_add(1, Ordering::Relaxed)
        ));
        let path = file.display().to_string();
        // `-Z root`: stay root, so tcpdump can write into the Net's root-owned directory.
        let mut argv = vec![
            "tcpdump",
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
        ];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&["-w", &path, filter]);
        let mut tcpdump = self.spawn_background(ns, &argv)?;
        let deadline = Instant::now() + CAPTURE_START_TIMEOUT;
        while !tcpdump.stderr().contains("listening on") {
            if !tcpdump.is_running() || Instant::now() >= deadline {
                bail!("{name}: tcpdump did not start: {}", tcpdump.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture {
            tcpdump: Some(tcpdump),
            file,
        })
    }
}

impl Capture {
    /// The pcap file as written so far.
    pub fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.file).with_context(|| format!("cannot read {}", self.file.display()))
    }

    /// The UDP/IPv4 datagrams captured so far, in order (only unfragmented ones or first
    /// fragments; other packets are skipped).
    pub fn datagrams(&self) -> anyhow::Result<Vec<Datagram>> {
        let bytes = self.bytes()?;
        Ok(pcap_frames(&bytes)?
            .into_iter()
            .filter_map(udp_in_ethernet)
            .collect())
    }

    /// The Ethernet frames captured so far, in order, as captured (up to tcpdump's snap
    /// length).
    pub fn frames(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let bytes = self.bytes()?;
        Ok(pcap_frames(&bytes)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// Stops tcpdump. The file stays readable.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tcpdump) = self.tcpdump.take() {
            tcpdump.stop()?;
        }
        Ok(())
    }
}

/// The link-layer frames of a pcap file of Ethernet frames; an incomplete last record (tcpdump
/// still writing) is left out.
fn pcap_frames(file: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    ensure!(file.len() >= PCAP_HEADER_LEN, "no pcap header yet");
    let magic = u32::from_le_bytes(file[0..4].try_into()?);
    let little_endian = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => bail!("not a pcap file (magic {other:#x})"),
    };
    let u32_at = |at: usize| -> u32 {
        let b: [u8; 4] = file[at..at + 4].try_into().unwrap_or_default();
        if little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20);
    ensure!(
        linktype == LINKTYPE_ETHERNET,
        "link type {linktype}, expected Ethernet"
    );
    let mut frames = Vec::new();
    let mut at = PCAP_HEADER_LEN;
    while at + PCAP_RECORD_HEADER_LEN <= file.len() {
        let captured = u32_at(at + 8) as usize;
        let start = at + PCAP_RECORD_HEADER_LEN;
        let Some(frame) = file.get(start..start + captured) else {
            break;
        };
        frames.push(frame);
        at = start + captured;
    }
    Ok(frames)
}

fn udp_in_ethernet(frame: &[u8]) -> Option<Datagram> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
    let fragment_offset = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?) & 0x1fff;
    if *ip.get(9)? != IPPROTO_UDP || fragment_offset != 0 {
        return None;
    }
    let address = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let (src, dst) = (address(12)?, address(16)?);
    let udp = ip.get(header_len..total_len.min(ip.len()))?;
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(udp.get(at..at + 2)?.try_into().ok()?))
    };
    Some(Datagram {
        src: SocketAddrV4::new(src, port(0)?),
        dst: SocketAddrV4::new(dst, port(2)?),
        payload: udp.get(8..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_datagrams_are_read_from_a_pcap_file() {
        let payload = b"hello";
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_len = (20 + 8 + payload.len()) as u16;
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&ip_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
        frame.extend_from_slice(&[10, 77, 0, 1, 10, 77, 0, 2]);
        frame.extend_from_slice(&6783u16.to_be_bytes());
        frame.extend_from_slice(&6784u16.to_be_bytes());
        frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(payload);

        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0]);
        file.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&frame);
        // A record tcpdump is still writing.
        file.extend_from_slice(&[0; 12]);

        let frames = pcap_frames(&file).unwrap();
        assert_eq!(frames.len(), 1);
        let datagram = udp_in_ethernet(frames[0]).unwrap();
        assert_eq!(datagram.src, "10.77.0.1:6783".parse().unwrap());
        assert_eq!(datagram.dst, "10.77.0.2:6784".parse().unwrap());
        assert_eq!(datagram.payload, payload);
    }
}
