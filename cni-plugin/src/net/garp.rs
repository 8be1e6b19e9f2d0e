//! Gratuitous ARP from a container's new interface. When an address is reused, the host bridge
//! and the other containers on it may still map it to the MAC of the container that had it
//! before; they would keep sending there until their entry goes stale, seconds later. One
//! broadcast ARP request for the address itself (sender = target = the address) makes every
//! neighbour on the bridge update its existing entry at once, as the kernel accepts gratuitous
//! ARP as an override.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike, sendto, socket,
};

use super::netns::Netns;
use crate::error::{CniError, Result};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;

/// The 28-byte ARP request announcing `ip` at `mac`.
fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    p[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address stays zero; the target protocol address is the sender's own.
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Broadcasts a gratuitous ARP for `ip` from interface `ifindex` (MAC `mac`) of `netns`.
pub fn announce(netns: &Netns, ifindex: u32, mac: &str, ip: Ipv4Addr) -> Result<()> {
    let mac = parse_mac(mac)
        .ok_or_else(|| CniError::kernel("gratuitous ARP", format!("bad MAC {mac:?}")))?;
    let fd = netns
        .file
        .try_clone()
        .map_err(|e| CniError::io(format!("dup netns fd {}", netns.path), e))?;
    let path = netns.path.clone();
    std::thread::spawn(move || -> Result<()> {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| CniError::kernel(format!("enter netns {path}"), e))?;
        let err = |e: String| CniError::kernel("gratuitous ARP", e);
        // Protocol 0: the socket only sends; the frame's EtherType comes from the address.
        let sock = socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err(e.to_string()))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = i32::try_from(ifindex).map_err(|e| err(e.to_string()))?;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the pointer is to a live, fully initialised sockaddr_ll of the given length.
        let dest = unsafe {
            LinkAddr::from_raw(
                (&sll as *const libc::sockaddr_ll).cast(),
                Some(std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t),
            )
        }
        .ok_or_else(|| err("cannot build the link-layer address".into()))?;
        sendto(
            sock.as_raw_fd(),
            &announcement(mac, ip),
            &dest,
            MsgFlags::empty(),
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(())
    })
    .join()
    .map_err(|_| CniError::kernel("netns thread", "panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let p = announcement([2, 0, 0, 0, 0, 9], Ipv4Addr::new(10, 244, 3, 7));
        assert_eq!(&p[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&p[14..18], &[10, 244, 3, 7]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 244, 3, 7]);
        assert_eq!(
            parse_mac("0a:58:0a:f4:03:01"),
            Some([10, 88, 10, 244, 3, 1])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:03:01:02"), None);
    }
}
