//! Proposals a follower forwarded to its leader, sent again when no answer came, and the
//! leader's memory of what it appended, so that a copy sent again is never applied twice.
//!
//! A follower hands a client's request to raft, which forwards it to the leader as a
//! message. A message lost on the way (a network fault, a connection broken and reopened)
//! left the client waiting until its deadline, even when the fault lasted a moment: nothing
//! sent it again. Now the follower proposes it again (the same request, with the same id and
//! the same term) while it is unanswered, the term has not changed and its caller waits:
//! first after [`FIRST_RESEND`], then twice as long each time.
//!
//! The leader keeps the ids of the forwarded requests it appended in its term for longer
//! than any follower sends them again ([`Appended`]), and drops a copy of one it has. Only
//! the leader of the term a request was proposed in can append it usefully: a copy that
//! reaches a later leader is appended in a later term than its own and skipped by every
//! member when applied (`raft_loop::stale_proposal`); its proposer has by then answered
//! "leader changed". So no request is applied twice, and the leader's memory can stay in
//! memory: a new leader starts with none and needs none.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType};

/// How long a follower waits for a forwarded request's answer before it sends it again.
pub const FIRST_RESEND: Duration = Duration::from_millis(400);
/// The longest wait between two sendings.
const LONGEST_WAIT: Duration = Duration::from_secs(2);

/// A request this member forwarded to its leader, as it was proposed.
#[derive(Debug)]
pub struct Forwarded {
    pub data: Vec<u8>,
    first: Instant,
    sent: Instant,
    wait: Duration,
}

impl Forwarded {
    /// `data`, forwarded now.
    pub fn new(data: Vec<u8>, now: Instant) -> Forwarded {
        Forwarded {
            data,
            first: now,
            sent: now,
            wait: FIRST_RESEND,
        }
    }

    /// Whether to send it again now: its wait is over and it was first sent less than
    /// `horizon` ago (after that its caller has given up). Counts the sending when it is.
    pub fn due(&mut self, now: Instant, horizon: Duration) -> bool {
        if now.duration_since(self.sent) < self.wait || now.duration_since(self.first) >= horizon {
            return false;
        }
        self.sent = now;
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
        true
    }
}

/// The id of the request in a proposal's data (field 1 of `InternalRequest`), read without
/// decoding the request.
pub fn request_id(data: &[u8]) -> Option<u64> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut buf = data;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if tag == 1 && wire == WireType::Varint {
            return decode_varint(&mut buf).ok();
        }
        skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
    }
    None
}

/// The id of the client request an entry carries, if it is one.
fn entry_request(e: &Entry) -> Option<u64> {
    if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
        return None;
    }
    request_id(&e.data)
}

/// What a leader appended of the requests its followers forwarded in its term: their ids,
/// for `keep` after each was appended.
#[derive(Debug)]
pub struct Appended {
    term: u64,
    keep: Duration,
    ids: HashSet<u64>,
    order: VecDeque<(Instant, u64)>,
}

impl Appended {
    /// Ids kept for `keep`: longer than a follower sends a request again.
    pub fn new(keep: Duration) -> Appended {
        Appended {
            term: 0,
            keep,
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// The entries of a forwarded proposal that the leader of `term` has not appended yet,
    /// and the ids of the requests among them (for [`Appended::record`]); copies of appended
    /// ones (and repeats within `entries`) are left out.
    pub fn new_entries(
        &mut self,
        term: u64,
        entries: Vec<Entry>,
        now: Instant,
    ) -> (Vec<Entry>, Vec<u64>) {
        if term != self.term {
            self.term = term;
            self.ids.clear();
            self.order.clear();
        }
        while let Some(&(at, id)) = self.order.front() {
            if now.duration_since(at) < self.keep {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
        }
        let (mut kept, mut ids) = (Vec::with_capacity(entries.len()), Vec::new());
        for e in entries {
            match entry_request(&e) {
                Some(id) if self.ids.contains(&id) || ids.contains(&id) => {}
                Some(id) => {
                    ids.push(id);
                    kept.push(e);
                }
                None => kept.push(e),
            }
        }
        (kept, ids)
    }

    /// Notes the requests `ids` (of [`Appended::new_entries`]) as appended by the leader of `term`
    /// (raft took them).
    pub fn record(&mut self, term: u64, ids: &[u64], now: Instant) {
        if term != self.term {
            return;
        }
        for &id in ids {
            if self.ids.insert(id) {
                self.order.push_back((now, id));
            }
        }
    }

    /// How many ids are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests;
