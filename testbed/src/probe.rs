//! A connectivity probe written in Rust: one ICMP echo request from inside a network namespace
//! and the round trip of its reply, so neither the demo nor the end-to-end tests need `ping`.
//!
//! It uses a raw ICMP socket (root has `CAP_NET_RAW`; the datagram "ping socket" would need
//! `net.ipv4.ping_group_range`, which a new namespace leaves closed). A raw socket sees every
//! ICMP packet of its namespace, so a reply counts only when its source, identifier and sequence
//! number are the request's.

use std::io::{self, ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const PAYLOAD: &[u8] = b"netd connectivity probe";

/// Sends one echo request to `to` from the calling thread's network namespace and waits up to
/// `wait` for its reply: the round trip when answered, `None` when not (no reply in time, or no
/// route). Errors only when the socket itself cannot be made or used.
pub fn echo(to: Ipv4Addr, wait: Duration) -> io::Result<Option<Duration>> {
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let id = (std::process::id() & 0xffff) as u16;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    let dest = SockAddr::from(SocketAddrV4::new(to, 0));
    let started = Instant::now();
    match sock.send_to(&request(id, seq), &dest) {
        Ok(_) => {}
        // No route, or the neighbour is known unreachable: the probe fails, it is not an error.
        Err(e) if unreachable(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = [0u8; 1500];
    loop {
        let Some(left) = wait.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
            return Ok(None);
        };
        sock.set_read_timeout(Some(left))?;
        let n = match (&sock).read(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(None);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if unreachable(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let packet = &buf[..n];
        if source(packet) == Some(to) && is_reply(packet, id, seq) {
            return Ok(Some(started.elapsed()));
        }
    }
}

fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable
    )
}

/// An echo request: type, code, checksum, identifier, sequence number, payload.
fn request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The source address of an IPv4 packet.
fn source(packet: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// True when `packet` (an IPv4 packet, as a raw socket hands it over) is the echo reply to
/// request `id`/`seq`. Anything short or malformed is simply not the reply.
fn is_reply(packet: &[u8], id: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let header_len = usize::from(first & 0x0f) * 4;
    let Some(icmp) = packet.get(header_len..) else {
        return false;
    };
    icmp.len() >= 8
        && icmp[0] == ECHO_REPLY
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let p = request(0x1234, 7);
        assert_eq!(checksum(&p), 0);
        // An odd length pads with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn reply_must_match_id_and_sequence() {
        let mut reply = vec![0x45; 20];
        reply.extend_from_slice(&[ECHO_REPLY, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert!(is_reply(&reply, 0x1234, 7));
        assert!(!is_reply(&reply, 0x1234, 8));
        assert!(!is_reply(&reply, 0x4321, 7));
        assert!(!is_reply(&reply[..24], 0x1234, 7));
        assert!(!is_reply(&[], 0x1234, 7));
        let mut request_back = reply.clone();
        request_back[20] = ECHO_REQUEST;
        assert!(!is_reply(&request_back, 0x1234, 7));
    }

    /// Inside a namespace of its own: its loopback answers; an address it has no route to
    /// does not, and that is `None`, not an error.
    #[test]
    fn echo_inside_a_namespace() {
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                crate::netns::del(&self.0);
            }
        }
        let ns = Gone(format!("probe{:x}", std::process::id()));
        crate::netns::add(&ns.0).expect("ip netns add (root?)");
        let (answered, unrouted) = crate::netns::within(&ns.0, || {
            (
                echo(Ipv4Addr::LOCALHOST, Duration::from_secs(2)),
                echo(Ipv4Addr::new(192, 0, 2, 200), Duration::from_millis(300)),
            )
        })
        .expect("enter the namespace");
        assert!(matches!(answered, Ok(Some(_))), "{answered:?}");
        assert!(matches!(unrouted, Ok(None)), "{unrouted:?}");
    }
}
