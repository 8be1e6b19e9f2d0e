//! nf_tables programmed over netlink, with no `nft` process: a [`Batch`] of table, chain and
//! rule changes that the kernel applies atomically (all or nothing, as `nft -f` does), and the
//! few reads the programs need (does a table exist, which chains a table has, the comments of a
//! chain's rules).
//!
//! Messages are built with `netlink-packet-netfilter` (the rust-netlink family's nfnetlink
//! types) and sent on a blocking `NETLINK_NETFILTER` socket opened per call, in the caller's
//! network namespace: a batch is `NFNL_MSG_BATCH_BEGIN`, the changes (each asking for an ack),
//! `NFNL_MSG_BATCH_END`; the kernel acks every change or names the first that failed.
//! [`rule`] turns rules as data into expressions.

pub mod rule;

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Hook as HookAttribute, InetHookNumber, NfTablesMessage,
    RuleAttribute, RuleMessage, SetAttribute, SetMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::errno::Errno;

pub use rule::{Action, Addr, Match, Rule};

/// `NFNL_SUBSYS_NFTABLES`, the resource id of the batch delimiters.
const SUBSYS_NFTABLES: u16 = 10;
/// A chain's policy `accept` (`NF_ACCEPT`).
const POLICY_ACCEPT: u32 = 1;

/// The table family: nft's `ip` and `ip6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    /// nft's keyword for it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Ip => NetfilterProtoFamily::IPv4,
            Family::Ip6 => NetfilterProtoFamily::IPv6,
        }
    }
}

/// Where a base chain hooks in, with nft's type and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `type nat hook postrouting priority srcnat` (100).
    NatPostrouting,
    /// `type filter hook forward priority filter` (0).
    FilterForward,
}

impl Hook {
    fn attributes(self) -> (&'static str, InetHookNumber, i32) {
        match self {
            Hook::NatPostrouting => ("nat", InetHookNumber::PostRouting, 100),
            Hook::FilterForward => ("filter", InetHookNumber::Forward, 0),
        }
    }
}

/// A failed nf_tables call: what was being done, and the kernel's errno (or the I/O error).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl Error {
    fn new(what: impl Into<String>, source: io::Error) -> Error {
        Error {
            what: what.into(),
            source,
        }
    }

    /// The kernel's errno, when it answered with one.
    pub fn errno(&self) -> Option<Errno> {
        self.source.raw_os_error().map(Errno::from_raw)
    }

    /// A change referred to something that is not there (ENOENT).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Changes applied by [`Batch::commit`] in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<(String, Family, NfTablesMessage, u16)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, what: String, family: Family, msg: NfTablesMessage, flags: u16) {
        self.ops.push((what, family, msg, flags));
    }

    /// `add table` (no error when it exists).
    pub fn add_table(&mut self, family: Family, table: &str) {
        let msg = NfTablesMessage::NewTable(TableMessage {
            attributes: vec![TableAttribute::Name(table.into())],
        });
        self.push(
            format!("add table {} {table}", family.name()),
            family,
            msg,
            NLM_F_CREATE,
        );
    }

    /// `delete table`, with everything in it. ENOENT if it is not there: add it first in the
    /// same batch to make the deletion unconditional, as nft scripts do.
    pub fn delete_table(&mut self, family: Family, table: &str) {
        let msg = NfTablesMessage::DeleteTable(TableMessage {
            attributes: vec![TableAttribute::Name(table.into())],
        });
        self.push(
            format!("delete table {} {table}", family.name()),
            family,
            msg,
            0,
        );
    }

    /// `add chain`, a base chain when `hook` is given, with policy accept (no error when it
    /// exists with the same hook).
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &str, hook: Option<Hook>) {
        let mut attributes = vec![
            ChainAttribute::Table(table.into()),
            ChainAttribute::Name(chain.into()),
        ];
        if let Some(hook) = hook {
            let (kind, number, priority) = hook.attributes();
            attributes.push(ChainAttribute::Hook(vec![
                HookAttribute::Number(number.into()),
                // The kernel reads the priority as a signed 32-bit number.
                HookAttribute::Priority(priority as u32),
            ]));
            attributes.push(ChainAttribute::Policy(POLICY_ACCEPT));
            attributes.push(ChainAttribute::Type(kind.into()));
        }
        let msg = NfTablesMessage::NewChain(ChainMessage { attributes });
        self.push(
            format!("add chain {} {table} {chain}", family.name()),
            family,
            msg,
            NLM_F_CREATE,
        );
    }

    /// `delete chain`, with its rules.
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        let msg = NfTablesMessage::DeleteChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table.into()),
                ChainAttribute::Name(chain.into()),
            ],
        });
        self.push(
            format!("delete chain {} {table} {chain}", family.name()),
            family,
            msg,
            0,
        );
    }

    /// `flush chain`: removes every rule of the chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        let msg = NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table.into()),
                RuleAttribute::Chain(chain.into()),
            ],
        });
        self.push(
            format!("flush chain {} {table} {chain}", family.name()),
            family,
            msg,
            0,
        );
    }

    /// `delete set`.
    pub fn delete_set(&mut self, family: Family, table: &str, set: &str) {
        let msg = NfTablesMessage::DeleteSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(table.into()),
                SetAttribute::Name(set.into()),
            ],
        });
        self.push(
            format!("delete set {} {table} {set}", family.name()),
            family,
            msg,
            0,
        );
    }

    /// `add rule` at the end of the chain.
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, rule: &Rule) {
        let mut attributes = vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::Chain(chain.into()),
            RuleAttribute::Expressions(rule.expressions()),
        ];
        if let Some(ud) = rule.userdata() {
            attributes.push(RuleAttribute::UserData(ud));
        }
        let msg = NfTablesMessage::NewRule(RuleMessage { attributes });
        self.push(
            format!("add rule {} {table} {chain}", family.name()),
            family,
            msg,
            NLM_F_CREATE | NLM_F_APPEND,
        );
    }

    /// Applies every change, or none: the first failure aborts the transaction and is
    /// returned, naming the change that failed.
    pub fn commit(self) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let sock = open().map_err(|e| Error::new("open nfnetlink socket", e))?;
        let delimiter = |inner: ControlMessage| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, SUBSYS_NFTABLES),
                inner,
            )
        };
        let mut buf = Vec::new();
        append(
            &mut buf,
            delimiter(ControlMessage::BatchBegin),
            0,
            NLM_F_REQUEST,
        );
        let mut whats = Vec::with_capacity(self.ops.len());
        for (seq, (what, family, msg, flags)) in self.ops.into_iter().enumerate() {
            let m = NetfilterMessage::new(NetfilterHeader::new(family.proto(), 0, 0), msg);
            append(
                &mut buf,
                m,
                seq as u32 + 1,
                NLM_F_REQUEST | NLM_F_ACK | flags,
            );
            whats.push(what);
        }
        let end = whats.len() as u32 + 1;
        append(
            &mut buf,
            delimiter(ControlMessage::BatchEnd),
            end,
            NLM_F_REQUEST,
        );
        sock.send(&buf, 0)
            .map_err(|e| Error::new("send nf_tables batch", e))?;
        // One ack per change; an error names its change by sequence number (the begin
        // message's, 0, when the commit itself failed) and ends the wait.
        let mut acked = 0;
        while acked < whats.len() {
            let data = recv(&sock).map_err(|e| Error::new("read nf_tables acks", e))?;
            for (seq, payload) in
                parse_all(&data).map_err(|e| Error::new("read nf_tables acks", e))?
            {
                if let NetlinkPayload::Error(err) = payload {
                    match err.code {
                        None => acked += 1,
                        Some(code) => {
                            let what = match seq as usize {
                                0 => "commit nf_tables batch".to_string(),
                                i => whats.get(i - 1).cloned().unwrap_or_default(),
                            };
                            return Err(Error::new(
                                what,
                                io::Error::from_raw_os_error(-code.get()),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// True when table `table` of `family` exists.
pub fn table_exists(family: Family, table: &str) -> Result<bool> {
    let msg = NfTablesMessage::GetTable(TableMessage {
        attributes: vec![TableAttribute::Name(table.into())],
    });
    let what = || format!("get table {} {table}", family.name());
    match request(family, msg, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => Ok(false),
        Err(e) => Err(Error::new(what(), e)),
    }
}

/// The names of the chains of table `table` (none when the table does not exist).
pub fn chains(family: Family, table: &str) -> Result<Vec<String>> {
    let msg = NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![ChainAttribute::Table(table.into())],
    });
    let what = || format!("list chains {} {table}", family.name());
    let replies = match request(family, msg, NLM_F_DUMP) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => return Ok(Vec::new()),
        Err(e) => return Err(Error::new(what(), e)),
    };
    let mut out = Vec::new();
    for reply in replies {
        if let NfTablesMessage::NewChain(c) = reply {
            let of_table = c
                .attributes
                .iter()
                .any(|a| matches!(a, ChainAttribute::Table(t) if t == table));
            let name = c.attributes.iter().find_map(|a| match a {
                ChainAttribute::Name(n) => Some(n.clone()),
                _ => None,
            });
            if let (true, Some(name)) = (of_table, name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// The comments of the rules of chain `chain`, in order (`None` for a rule without one);
/// empty when the table or chain does not exist.
pub fn rule_comments(family: Family, table: &str, chain: &str) -> Result<Vec<Option<String>>> {
    let msg = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::Chain(chain.into()),
        ],
    });
    let what = || format!("list chain {} {table} {chain}", family.name());
    let replies = match request(family, msg, NLM_F_DUMP) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => return Ok(Vec::new()),
        Err(e) => return Err(Error::new(what(), e)),
    };
    let mut out = Vec::new();
    for reply in replies {
        if let NfTablesMessage::NewRule(r) = reply {
            let in_chain = r
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Chain(c) if c == chain))
                && r.attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Table(t) if t == table));
            if !in_chain {
                continue;
            }
            out.push(r.attributes.iter().find_map(|a| match a {
                RuleAttribute::UserData(ud) => rule::comment_of(ud),
                _ => None,
            }));
        }
    }
    Ok(out)
}

/// Sends one get request (a dump with `NLM_F_DUMP`) and collects the nf_tables replies.
fn request(family: Family, msg: NfTablesMessage, flags: u16) -> io::Result<Vec<NfTablesMessage>> {
    let sock = open()?;
    let mut buf = Vec::new();
    let m = NetfilterMessage::new(NetfilterHeader::new(family.proto(), 0, 0), msg);
    append(&mut buf, m, 1, NLM_F_REQUEST | NLM_F_ACK | flags);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let data = recv(&sock)?;
        for (_, payload) in parse_all(&data)? {
            match payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(m),
                    ..
                }) => {
                    out.push(m);
                    // A single get answers with one message and then its ack.
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(out),
                    Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                },
                _ => {}
            }
        }
    }
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

/// One datagram from the kernel (a dump part may hold several messages).
fn recv(sock: &Socket) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    sock.recv(&mut buf, 0)?;
    Ok(buf)
}

fn append(buf: &mut Vec<u8>, msg: NetfilterMessage, seq: u32, flags: u16) {
    let mut m = NetlinkMessage::from(msg);
    m.header.flags = flags;
    m.header.sequence_number = seq;
    m.finalize();
    let start = buf.len();
    buf.resize(start + m.buffer_len(), 0);
    m.serialize(&mut buf[start..]);
}

/// Every netlink message of a datagram, as (sequence number, payload).
fn parse_all(mut data: &[u8]) -> io::Result<Vec<(u32, NetlinkPayload<NetfilterMessage>)>> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut out = Vec::new();
    while !data.is_empty() {
        let buf = NetlinkBuffer::new_checked(&data).map_err(|e| bad(e.to_string()))?;
        let len = (buf.length() as usize).max(16);
        let msg = NetlinkMessage::<NetfilterMessage>::parse(&buf)
            .map_err(|e| bad(format!("cannot decode a reply: {e}")))?;
        out.push((msg.header.sequence_number, msg.payload));
        // Messages are 4-byte aligned within a datagram.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(out)
}
