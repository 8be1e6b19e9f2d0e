//! How this member's raft is configured, and how a leader's appends to one follower leave as
//! one message.
//!
//! raft-rs can merge the appends it queues for a peer within one `Ready` itself
//! (`batch_append`), but in 0.7 that merge is unsafe: it appends new entries to a queued
//! append that carries none (a commit update or a probe) without checking that they follow
//! its index. After a follower's rejection moves the peer's next index back, the message
//! then says "after entry N, here are entries N-3..N": the follower answers with N plus the
//! number of entries, an index it does not hold, and the leader counts that follower as
//! holding entries it never received, towards a quorum too. The follower's raft panics at the
//! next heartbeat ("to_commit … out of range").
//!
//! So `batch_append` stays off, and [`coalesce`] merges the appends after raft made them,
//! only where one continues the other: the later one's previous index and term are the
//! earlier one's last entry. A merged message is then a plain, well-formed append.

use raft::eraftpb::{Message, MessageType};

/// A merged append carries at most this many bytes of entries (raft's own bound on one
/// message, `max_size_per_msg`).
pub const MAX_APPEND_BYTES: u64 = 1024 * 1024;

/// This member's raft configuration: `me`, an election after `election_ticks` silent
/// heartbeat ticks, and `applied` as the state machine's applied index.
pub fn raft_config(me: u64, election_ticks: usize, applied: u64) -> raft::Config {
    raft::Config {
        id: me,
        election_tick: election_ticks,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: MAX_APPEND_BYTES,
        max_inflight_msgs: 256,
        pre_vote: true,
        check_quorum: true,
        // Unsafe in raft-rs 0.7 (module doc): `coalesce` does the merging.
        batch_append: false,
        ..Default::default()
    }
}

/// Whether `m`, from a peer, is an append whose entries do not follow its index, or do not
/// follow one another: raft-rs would answer it with an index this member does not hold (a
/// leader running raft-rs 0.7 with `batch_append` on makes such messages). The raft loop
/// drops it; the leader sends again from what this member does acknowledge.
pub fn malformed(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgAppend
        && m.entries
            .iter()
            .enumerate()
            .any(|(i, e)| e.index != m.index + 1 + i as u64)
}

/// The index and term of the last entry `m` (an append) leaves the follower with.
fn ends_at(m: &Message) -> (u64, u64) {
    match m.entries.last() {
        Some(e) => (e.index, e.term),
        None => (m.index, m.log_term),
    }
}

fn entry_bytes(m: &Message) -> u64 {
    m.entries.iter().map(|e| e.data.len() as u64 + 16).sum()
}

/// `msgs` with every append that continues the last message to the same peer merged into
/// it: its entries added, the higher commit index taken. Nothing else changes order or
/// content.
pub fn coalesce(msgs: Vec<Message>) -> Vec<Message> {
    if msgs.len() < 2 {
        return msgs;
    }
    let mut out: Vec<Message> = Vec::with_capacity(msgs.len());
    /// A peer's last message so far: where it is in `out`, and its entries' bytes.
    struct Last {
        to: u64,
        at: usize,
        bytes: u64,
    }
    let mut last: Vec<Last> = Vec::new();
    for mut m in msgs {
        let bytes = entry_bytes(&m);
        let slot = last.iter().position(|l| l.to == m.to);
        if let Some(l) = slot.map(|s| &mut last[s]) {
            let prev = &mut out[l.at];
            let continues = m.get_msg_type() == MessageType::MsgAppend
                && prev.get_msg_type() == MessageType::MsgAppend
                && prev.term == m.term
                && ends_at(prev) == (m.index, m.log_term)
                && l.bytes + bytes <= MAX_APPEND_BYTES;
            if continues {
                let entries = prev.mut_entries();
                for e in m.take_entries().into_iter() {
                    entries.push(e);
                }
                prev.commit = prev.commit.max(m.commit);
                l.bytes += bytes;
                continue;
            }
        }
        let here = Last {
            to: m.to,
            at: out.len(),
            bytes,
        };
        match slot {
            Some(s) => last[s] = here,
            None => last.push(here),
        }
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests;
