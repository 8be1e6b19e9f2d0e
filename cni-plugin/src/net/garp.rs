//! Gratuitous ARP from a container's new interface. When an address is reused, the host bridge
//! and the other containers on it may still map it to the MAC of the container that had it
//! before; they would keep sending there until their entry goes stale, seconds later. A
//! gratuitous ARP makes every neighbour on the bridge update its existing entry at once (the
//! kernel accepts one as an override).
//!
//! The kernel sends it: with `arp_notify` on, an interface announces its addresses whenever its
//! hardware address is set, so the plugin turns `arp_notify` on and sets the interface's own MAC
//! again. (A packet socket would do the same, but closing one waits for an RCU grace period,
//! about 10 ms per ADD.) This must happen once the bridge forwards from the host end of the veth,
//! or the announcement is dropped there.
//!
//! An interface with an IPv6 address also gets `ndisc_notify`, IPv6's counterpart: the same MAC
//! change makes the kernel send an unsolicited neighbour advertisement (override flag set) for
//! its addresses, which corrects a neighbour's entry the same way.

use rtnetlink::{Handle, LinkUnspec};

use super::links::Link;
use super::netns::Netns;
use crate::error::{CniError, Result};

/// `aa:bb:cc:dd:ee:ff` → bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Announces the addresses of container interface `link` (in `netns`, reached through `h`);
/// `ipv6`: it has an IPv6 address to announce too.
pub async fn announce(h: &Handle, netns: &Netns, link: &Link, ipv6: bool) -> Result<()> {
    let mac = parse_mac(&link.mac)
        .ok_or_else(|| CniError::kernel("gratuitous ARP", format!("bad MAC {:?}", link.mac)))?;
    let mut notify = vec![(
        format!("/proc/sys/net/ipv4/conf/{}/arp_notify", link.name),
        "1",
    )];
    if ipv6 {
        notify.push((
            format!("/proc/sys/net/ipv6/conf/{}/ndisc_notify", link.name),
            "1",
        ));
    }
    netns.write_sysctls(&notify)?;
    h.link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("announce {} (set its MAC)", link.name), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("0a:58:0a:f4:03:01"),
            Some([10, 88, 10, 244, 3, 1])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:03:01:02"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:03:01"), None);
    }
}
