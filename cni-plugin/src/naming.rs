//! Deterministic names derived from an attachment `(network, containerID, ifname)`.
//!
//! The host-side veth is named from a hash of the attachment, so DEL finds and removes it even
//! when the container's netns is empty or gone and no `prevResult` was sent. A masquerade chain
//! is named from its network and source subnet.

/// 64-bit FNV-1a over the parts, each followed by a 0 byte (which no part contains), so that
/// `("ab", "c")` and `("a", "bc")` differ. Stable across builds, unlike `std`'s hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// Host end of the veth pair: `veth` + 8 hex digits (reference plugins use the same shape).
pub fn host_veth(network: &str, container_id: &str, ifname: &str) -> String {
    format!("veth{:08x}", fnv1a(&[network, container_id, ifname]) >> 32)
}

/// The masquerade chain of one network and source subnet: `masq-` + 16 hex digits.
pub fn masq_chain(network: &str, source: &str) -> String {
    format!("masq-{:016x}", fnv1a(&[network, source]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = host_veth("net", "c1", "eth0");
        assert_eq!(a, host_veth("net", "c1", "eth0"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, host_veth("net", "c1", "eth1"));
        assert_ne!(a, host_veth("net", "c1e", "th0"));
        assert_eq!(masq_chain("net", "10.244.3.0/24").len(), 21);
        assert_ne!(
            masq_chain("net", "10.244.3.0/24"),
            masq_chain("net", "10.244.4.0/24")
        );
    }
}
