//! Rules as data, and their nf_tables expressions: address-prefix matches on the IP header,
//! a fwmark test, a counter, and one action (masquerade, accept, return), with nft's comment
//! format in the rule's user data so that `nft list ruleset` shows it.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute, Meta,
    MetaKey, Operator, Payload, Register, Verdict, VerdictAttribute,
};

/// `NFT_PAYLOAD_NETWORK_HEADER`: payload offsets count from the IP header.
const NETWORK_HEADER: u32 = 1;
/// `NFTA_MASQ_FLAGS`, and `NF_NAT_RANGE_PROTO_RANDOM_FULLY` (nft's `fully-random`).
const MASQ_FLAGS: u16 = 1;
const RANDOM_FULLY: u32 = 1 << 4;
/// `NF_ACCEPT`, the verdict code of `accept`.
const ACCEPT: u32 = 1;
/// `NFTNL_UDATA_RULE_COMMENT`: the type of the comment record in a rule's user data.
const UDATA_COMMENT: u8 = 0;
/// The kernel's limit on a rule's user data (`NFT_USERDATA_MAXLEN`).
const USERDATA_MAX: usize = 256;

/// Which end of the packet a prefix match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    Source,
    Destination,
}

/// One condition of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The source or destination address is inside `net` (`negate`: is not).
    Prefix {
        addr: Addr,
        net: IpNetwork,
        negate: bool,
    },
    /// `meta mark & bits == bits`.
    MarkHas(u32),
}

impl Match {
    /// `ip saddr NET`.
    pub fn from(net: IpNetwork) -> Match {
        Match::Prefix {
            addr: Addr::Source,
            net,
            negate: false,
        }
    }

    /// `ip saddr != NET`.
    pub fn not_from(net: IpNetwork) -> Match {
        Match::Prefix {
            addr: Addr::Source,
            net,
            negate: true,
        }
    }

    /// `ip daddr NET`.
    pub fn to(net: IpNetwork) -> Match {
        Match::Prefix {
            addr: Addr::Destination,
            net,
            negate: false,
        }
    }

    /// `ip daddr != NET`.
    pub fn not_to(net: IpNetwork) -> Match {
        Match::Prefix {
            addr: Addr::Destination,
            net,
            negate: true,
        }
    }
}

/// What a rule does with a packet that matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Source NAT to the outgoing interface's address; `fully_random` picks source ports at
    /// random (nft's `masquerade fully-random`).
    Masquerade {
        fully_random: bool,
    },
    Accept,
    Return,
}

/// One rule: every match must hold; then the packets are counted and the action taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
    /// Shown by `nft list` as `comment "..."`; cut at the kernel's limit.
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule {
            matches,
            action,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }

    /// The expressions the kernel evaluates, in order.
    pub(crate) fn expressions(&self) -> Vec<ListAttribute<ExpressionAttribute>> {
        let mut out = Vec::new();
        for m in &self.matches {
            match *m {
                Match::Prefix { addr, net, negate } => prefix(&mut out, addr, net, negate),
                Match::MarkHas(bits) => {
                    out.push(
                        Expressions::Meta(vec![
                            Meta::Key(MetaKey::Mark),
                            Meta::DestinationRegister(Register::Reg1),
                        ])
                        .into(),
                    );
                    // The mark is a host-order u32 in the register.
                    out.push(mask(4, bits.to_ne_bytes().to_vec()));
                    out.push(cmp(Operator::Equal, bits.to_ne_bytes().to_vec()));
                }
            }
        }
        out.push(named("counter", Vec::new()));
        out.push(match self.action {
            Action::Masquerade { fully_random } => {
                let flags = match fully_random {
                    true => vec![DefaultNla::new(
                        MASQ_FLAGS,
                        RANDOM_FULLY.to_be_bytes().to_vec(),
                    )],
                    false => Vec::new(),
                };
                named("masq", flags)
            }
            Action::Accept => verdict(Verdict::Other(ACCEPT)),
            Action::Return => verdict(Verdict::Return),
        });
        out
    }

    /// The rule's user data: nft's comment record.
    pub(crate) fn userdata(&self) -> Option<Vec<u8>> {
        self.comment.as_deref().map(comment_userdata)
    }
}

/// Loads the address, masks it to the prefix (unless it is a whole address) and compares.
fn prefix(
    out: &mut Vec<ListAttribute<ExpressionAttribute>>,
    addr: Addr,
    net: IpNetwork,
    negate: bool,
) {
    let (offset, len) = match (net, addr) {
        (IpNetwork::V4(_), Addr::Source) => (12, 4),
        (IpNetwork::V4(_), Addr::Destination) => (16, 4),
        (IpNetwork::V6(_), Addr::Source) => (8, 16),
        (IpNetwork::V6(_), Addr::Destination) => (24, 16),
    };
    out.push(
        Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(NETWORK_HEADER),
            Payload::Offset(offset),
            Payload::Len(len),
        ])
        .into(),
    );
    if net.prefix() < 8 * len as u8 {
        out.push(mask(len, ip_bytes(net.mask())));
    }
    let op = if negate {
        Operator::NotEqual
    } else {
        Operator::Equal
    };
    out.push(cmp(op, ip_bytes(net.network())));
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `reg1 = reg1 & mask`.
fn mask(len: u32, mask: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    let zero = vec![0; mask.len()];
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(len),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(zero)),
    ])
    .into()
}

fn cmp(op: Operator, value: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(value)),
    ])
    .into()
}

fn verdict(code: Verdict) -> ListAttribute<ExpressionAttribute> {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(code)])),
    ])
    .into()
}

/// An expression this crate's version has no type for, by name with raw attributes.
fn named(name: &str, attributes: Vec<DefaultNla>) -> ListAttribute<ExpressionAttribute> {
    if attributes.is_empty() {
        return ListAttribute::Element(vec![ExpressionAttribute::Name(name.to_string())]);
    }
    Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    }
    .into()
}

/// nft's comment record: type, length (with the terminating NUL), the text, NUL; cut so the
/// record fits the kernel's limit, at a character boundary.
fn comment_userdata(text: &str) -> Vec<u8> {
    let mut end = text.len().min(USERDATA_MAX - 3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let body = &text.as_bytes()[..end];
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(UDATA_COMMENT);
    out.push((body.len() + 1) as u8);
    out.extend_from_slice(body);
    out.push(0);
    out
}

/// The comment in a rule's user data, if it has one; other records are skipped, and a
/// malformed record ends the search.
pub(crate) fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail.get(..len)?;
        if *kind == UDATA_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = &tail[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_and_are_cut_at_the_kernel_limit() {
        let ud = comment_userdata("netd-cni 10.244.3.0/24");
        assert_eq!(ud[0], 0);
        assert_eq!(usize::from(ud[1]), "netd-cni 10.244.3.0/24".len() + 1);
        assert_eq!(comment_of(&ud).as_deref(), Some("netd-cni 10.244.3.0/24"));
        let long = "é".repeat(200);
        let ud = comment_userdata(&long);
        assert!(ud.len() <= USERDATA_MAX);
        let back = comment_of(&ud).expect("a comment");
        assert!(long.starts_with(&back) && back.len() >= USERDATA_MAX - 4);
        // Another record first, then the comment; garbage yields nothing, never a panic.
        let mut two = vec![7, 2, 1, 2];
        two.extend(comment_userdata("c"));
        assert_eq!(comment_of(&two).as_deref(), Some("c"));
        assert_eq!(comment_of(&[0, 9, 1]), None);
        assert_eq!(comment_of(&[0]), None);
    }

    #[test]
    fn prefixes_are_masked_unless_whole_and_negation_is_the_compare() {
        let net: IpNetwork = "10.244.0.0/16".parse().expect("literal");
        let r = Rule::new(vec![Match::not_to(net)], Action::Return);
        let e = r.expressions();
        // payload, bitwise, cmp, counter, immediate.
        assert_eq!(e.len(), 5);
        let text = format!("{e:?}");
        assert!(
            text.contains("Offset(16)") && text.contains("NotEqual"),
            "{text}"
        );
        assert!(text.contains("[255, 255, 0, 0]") && text.contains("[10, 244, 0, 0]"));
        let host: IpNetwork = "fd00::1/128".parse().expect("literal");
        let e = Rule::new(vec![Match::from(host)], Action::Accept).expressions();
        assert_eq!(e.len(), 4, "a whole address needs no mask: {e:?}");
        assert!(format!("{e:?}").contains("Offset(8)"));
        let masq = Rule::new(vec![], Action::Masquerade { fully_random: true }).expressions();
        assert!(format!("{masq:?}").contains("masq"), "{masq:?}");
    }
}
