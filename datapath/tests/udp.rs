//! The UDP edge against the real kernel, on loopback only (127.0.0.1 and ::1): batched sends
//! and receives, GSO sends (received individually or as GRO groups), IPv6, timeouts, errors
//! for oversized datagrams, and the socket-address conversions.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use weft_datapath::udp::{
    MAX_BATCH, RECV_BUFFER_LEN, RecvMeta, UdpEdge, from_sockaddr, segments, to_sockaddr,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn v4_pair() -> (UdpEdge, UdpEdge) {
    let a = UdpEdge::bind_to("127.0.0.1:0").expect("bind a");
    let b = UdpEdge::bind_to("127.0.0.1:0").expect("bind b");
    (a, b)
}

/// `::1` pair, or `None` (with a note) when this host has no IPv6 loopback.
fn v6_pair() -> Option<(UdpEdge, UdpEdge)> {
    match UdpEdge::bind_to("[::1]:0") {
        Ok(a) => Some((a, UdpEdge::bind_to("[::1]:0").expect("bind b"))),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            eprintln!("no IPv6 loopback here ({e}); skipping");
            None
        }
        Err(e) => panic!("bind [::1]: {e}"),
    }
}

/// Receives until `want` datagrams arrived (GRO groups split), or the deadline passes; returns
/// the datagrams with their sources, and how many receives were GRO groups.
fn receive(edge: &UdpEdge, want: usize) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
    let mut bufs = vec![vec![0u8; RECV_BUFFER_LEN]; 16];
    let mut meta = [RecvMeta::default(); 16];
    let mut got = Vec::new();
    let mut groups = 0;
    let deadline = Instant::now() + DEADLINE;
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {want} datagrams arrived",
            got.len()
        );
        let n = edge
            .recv_batch(&mut bufs, &mut meta, Some(left))
            .expect("recv_batch");
        for (m, buf) in meta[..n].iter().zip(&bufs) {
            assert!(!m.truncated, "truncated receive: {m:?}");
            if m.segment.is_some_and(|s| s < m.len) {
                groups += 1;
            }
            for d in segments(&buf[..m.len], m.segment) {
                got.push((m.src, d.to_vec()));
            }
        }
    }
    assert_eq!(got.len(), want, "more datagrams than sent");
    (got, groups)
}

/// Payload `i` of `len` bytes: the index, then a pattern depending on both.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| match j {
            0 => i as u8,
            1 => (i >> 8) as u8,
            _ => (i * 31 + j * 7) as u8,
        })
        .collect()
}

fn no_errors(i: usize, e: io::Error) {
    panic!("datagram {i} failed: {e}");
}

#[test]
fn reports_kernel_features() {
    let (a, _b) = v4_pair();
    let (rcv, snd) = a.buffer_sizes().unwrap();
    eprintln!(
        "GSO: {}, GRO: {}, socket buffers: receive {rcv}, send {snd}",
        a.supports_gso(),
        a.supports_gro()
    );
    assert!(rcv > 0 && snd > 0);
}

#[test]
fn a_batch_of_64_varied_datagrams_arrives_whole_and_in_order() {
    let (a, b) = v4_pair();
    let dst = b.local_addr().unwrap();
    let payloads: Vec<Vec<u8>> = (0..64).map(|i| payload(i, 2 + (i * 397) % 1470)).collect();
    let batch: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (dst, &p[..])).collect();
    assert_eq!(a.send_batch(&batch, no_errors), 64);
    let (got, _) = receive(&b, 64);
    let src = a.local_addr().unwrap();
    for (i, (from, data)) in got.iter().enumerate() {
        assert_eq!(*from, src);
        assert_eq!(data, &payloads[i], "datagram {i}");
    }
}

#[test]
fn batches_larger_than_one_syscall_are_sent_completely() {
    let (a, b) = v4_pair();
    let dst = b.local_addr().unwrap();
    let count = MAX_BATCH * 3 + 5;
    let payloads: Vec<Vec<u8>> = (0..count).map(|i| payload(i, 100 + i)).collect();
    let batch: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (dst, &p[..])).collect();
    assert_eq!(a.send_batch(&batch, no_errors), count);
    let (got, _) = receive(&b, count);
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data, &payloads[i], "datagram {i}");
    }
}

/// Sends 20 segments of 1200 bytes and one of 345 with `send_segments`; checks what arrives and
/// returns how many GRO groups it came in.
fn gso_round_trip(a: &UdpEdge, b: &UdpEdge) -> usize {
    let dst = b.local_addr().unwrap();
    let segment = 1200;
    let sizes: Vec<usize> = [segment; 20].into_iter().chain([345]).collect();
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, len)| payload(i, *len))
        .collect();
    let buf = payloads.concat();
    a.send_segments(dst, &buf, segment as u16).unwrap();
    let (got, groups) = receive(b, 21);
    eprintln!(
        "{}: GSO {}, GRO {}: 21 datagrams in {groups} GRO group(s)",
        dst,
        a.supports_gso(),
        b.supports_gro()
    );
    let src = a.local_addr().unwrap();
    for (i, (from, data)) in got.iter().enumerate() {
        assert_eq!(*from, src);
        assert_eq!(data.len(), sizes[i], "size of datagram {i}");
        assert_eq!(data, &payloads[i], "datagram {i}");
    }
    groups
}

#[test]
fn gso_sends_arrive_as_the_right_datagrams() {
    let (a, b) = v4_pair();
    gso_round_trip(&a, &b);
}

#[test]
fn gso_to_a_receiver_without_gro_arrives_as_single_datagrams() {
    let (a, b) = v4_pair();
    set_gro(&b, false);
    assert_eq!(gso_round_trip(&a, &b), 0);
}

#[test]
fn without_gso_segments_go_out_one_by_one() {
    let (a, b) = v4_pair();
    a.disable_gso();
    assert!(!a.supports_gso());
    gso_round_trip(&a, &b);
}

/// Turns GRO on or off behind the edge's back (it then still reports what it set up).
fn set_gro(edge: &UdpEdge, on: bool) {
    let value = libc::c_int::from(on);
    // SAFETY: setsockopt reads one c_int that lives for the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            edge.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
}

#[test]
fn a_gso_buffer_beyond_the_kernel_limits_is_sent_in_pieces() {
    // 150 segments: more than one GSO send may carry (64 segments, 64 KiB).
    let (a, b) = v4_pair();
    let dst = b.local_addr().unwrap();
    let segment = 1000;
    let buf: Vec<u8> = (0..150 * segment + 1)
        .map(|i| (i / segment) as u8)
        .collect();
    a.send_segments(dst, &buf, segment as u16).unwrap();
    let (got, _) = receive(&b, 151);
    for (i, (_, data)) in got.iter().enumerate() {
        let want = if i == 150 { 1 } else { segment };
        assert_eq!(data.len(), want, "size of datagram {i}");
        assert!(data.iter().all(|x| *x == i as u8), "datagram {i}");
    }
}

#[test]
fn ipv6_loopback_round_trip() {
    let Some((a, b)) = v6_pair() else { return };
    let dst = b.local_addr().unwrap();
    assert!(dst.is_ipv6());
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| payload(i, 50 * (i + 1))).collect();
    let batch: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (dst, &p[..])).collect();
    assert_eq!(a.send_batch(&batch, no_errors), 10);
    let (got, _) = receive(&b, 10);
    for (i, (from, data)) in got.iter().enumerate() {
        assert_eq!(*from, a.local_addr().unwrap());
        assert_eq!(data, &payloads[i]);
    }
    gso_round_trip(&a, &b);
    let mtu = a.path_mtu(dst).unwrap();
    assert!((1280..=65536).contains(&mtu), "{mtu}");
}

#[test]
fn a_dual_stack_socket_talks_to_ipv4_peers_with_plain_ipv4_addresses() {
    let dual = match UdpEdge::bind_to("[::]:0") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("no IPv6 here ({e}); skipping");
            return;
        }
    };
    let v4 = UdpEdge::bind_to("127.0.0.1:0").unwrap();
    let dual_port = dual.local_addr().unwrap().port();
    // The dual-stack socket sends to an IPv4 address (v4-mapped underneath)...
    assert_eq!(
        dual.send_batch(&[(v4.local_addr().unwrap(), b"hello")], no_errors),
        1
    );
    let (got, _) = receive(&v4, 1);
    assert_eq!(got[0].1, b"hello");
    assert_eq!(got[0].0.port(), dual_port);
    // ...and reports the IPv4 sender as such.
    let to_dual = SocketAddr::from((Ipv4Addr::LOCALHOST, dual_port));
    assert_eq!(v4.send_batch(&[(to_dual, b"back")], no_errors), 1);
    let (got, _) = receive(&dual, 1);
    assert_eq!(got[0], (v4.local_addr().unwrap(), b"back".to_vec()));
}

#[test]
fn an_idle_socket_times_out_without_hanging() {
    let (a, _b) = v4_pair();
    let mut bufs = vec![vec![0u8; 2048]; 4];
    let mut meta = [RecvMeta::default(); 4];
    let start = Instant::now();
    let n = a
        .recv_batch(&mut bufs, &mut meta, Some(Duration::from_millis(100)))
        .unwrap();
    let took = start.elapsed();
    assert_eq!(n, 0);
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Zero timeout: just a look.
    let start = Instant::now();
    assert_eq!(
        a.recv_batch(&mut bufs, &mut meta, Some(Duration::ZERO))
            .unwrap(),
        0
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    // Nothing to receive into: nothing to wait for.
    assert_eq!(
        a.recv_batch::<Vec<u8>>(&mut [], &mut meta, None).unwrap(),
        0
    );
    // An absurd timeout is accepted (and not waited out: a datagram is queued).
    a.send_batch(&[(a.local_addr().unwrap(), b"x")], no_errors);
    assert_eq!(
        a.recv_batch(&mut bufs, &mut meta, Some(Duration::MAX))
            .unwrap(),
        1
    );
}

#[test]
fn oversized_datagrams_are_errors_for_themselves_only() {
    let (a, b) = v4_pair();
    let dst = b.local_addr().unwrap();
    let huge = vec![0u8; 65508];
    let items: [(SocketAddr, &[u8]); 4] = [
        (dst, b"first"),
        (dst, &huge),
        (dst, &huge[..70]),
        (SocketAddr::from((Ipv6Addr::LOCALHOST, 1)), b"wrong family"),
    ];
    let mut errors = Vec::new();
    let sent = a.send_batch(&items, |i, e| errors.push((i, e)));
    assert_eq!(sent, 2);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, 1);
    assert_eq!(errors[0].1.raw_os_error(), Some(libc::EMSGSIZE));
    assert_eq!(errors[1].0, 3);
    let (got, _) = receive(&b, 2);
    assert_eq!(got[0].1, b"first");
    assert_eq!(got[1].1.len(), 70);

    // GSO: a segment no datagram can carry, or a zero segment size.
    assert!(a.send_segments(dst, &huge, 65508).is_err());
    assert_eq!(
        a.send_segments(dst, &huge, 0).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    // Sending nothing is fine.
    a.send_segments(dst, &[], 1200).unwrap();
    assert_eq!(a.send_batch(&[], no_errors), 0);
}

#[test]
fn a_receive_buffer_too_small_reports_truncation() {
    let (a, b) = v4_pair();
    let dst = b.local_addr().unwrap();
    a.send_batch(&[(dst, &[9u8; 500])], no_errors);
    let mut bufs = [[0u8; 100]];
    let mut meta = [RecvMeta::default()];
    let deadline = Some(DEADLINE);
    assert_eq!(b.recv_batch(&mut bufs, &mut meta, deadline).unwrap(), 1);
    assert!(meta[0].truncated);
    assert_eq!(meta[0].len, 100);
}

#[test]
fn dont_fragment_and_path_mtu() {
    let (a, b) = v4_pair();
    a.set_dont_fragment(true).unwrap();
    let mut value: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            a.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(value, libc::IP_PMTUDISC_DO);
    // DF does not get in the way of ordinary datagrams.
    let dst = b.local_addr().unwrap();
    assert_eq!(a.send_batch(&[(dst, &[1u8; 1400])], no_errors), 1);
    receive(&b, 1);
    // Loopback's MTU is the path MTU to a local address (IPv4 caps it at 65535).
    let lo_mtu: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65536);
    assert_eq!(a.path_mtu(dst).unwrap(), lo_mtu.min(65535));
    a.set_dont_fragment(false).unwrap();
}

#[test]
fn sockaddr_conversions_round_trip() {
    let addrs = [
        SocketAddr::from((Ipv4Addr::new(10, 1, 2, 3), 6783)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::from((Ipv4Addr::BROADCAST, 65535)),
        SocketAddr::V6(SocketAddrV6::new(
            "fe80::1:2:3:4".parse().unwrap(),
            6783,
            0x12345,
            7,
        )),
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0, 0)),
        SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(),
            65535,
            0,
            0,
        )),
    ];
    for addr in addrs {
        let (storage, len) = to_sockaddr(&addr);
        assert_eq!(from_sockaddr(&storage, len), Some(addr));
        // Too short for its family: rejected.
        assert_eq!(from_sockaddr(&storage, len - 1), None);
    }
    // The port and address are in network byte order where the kernel expects them.
    let (storage, _) = to_sockaddr(&SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(1, 2, 3, 4),
        0x1234,
    )));
    // SAFETY: sockaddr_storage is at least as large and aligned as sockaddr_in.
    #[allow(unsafe_code)]
    let sin = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in>() };
    assert_eq!(sin.sin_port.to_ne_bytes(), [0x12, 0x34]);
    assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [1, 2, 3, 4]);
    // Unknown families are rejected.
    // SAFETY: all-zero is a valid sockaddr_storage.
    #[allow(unsafe_code)]
    let mut other: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    other.ss_family = libc::AF_UNIX as libc::sa_family_t;
    assert_eq!(from_sockaddr(&other, 128), None);
}
