use super::*;
use raft::eraftpb::Entry;
use raft::prelude::ConfState;
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![0; 10].into(),
        ..Default::default()
    }
}

fn append(to: u64, index: u64, log_term: u64, ents: &[(u64, u64)], commit: u64) -> Message {
    let mut m = Message {
        to,
        term: 5,
        index,
        log_term,
        commit,
        ..Default::default()
    };
    m.set_msg_type(MessageType::MsgAppend);
    m.set_entries(ents.iter().map(|&(i, t)| entry(i, t)).collect());
    m
}

fn heartbeat(to: u64) -> Message {
    let mut m = Message {
        to,
        term: 5,
        ..Default::default()
    };
    m.set_msg_type(MessageType::MsgHeartbeat);
    m
}

fn indexes(m: &Message) -> Vec<u64> {
    m.entries.iter().map(|e| e.index).collect()
}

#[test]
fn appends_that_continue_each_other_merge() {
    let out = coalesce(vec![
        append(2, 10, 4, &[(11, 5)], 9),
        append(2, 11, 5, &[(12, 5), (13, 5)], 11),
        // A commit update that continues from the last entry.
        append(2, 13, 5, &[], 12),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].index, out[0].log_term), (10, 4));
    assert_eq!(indexes(&out[0]), vec![11, 12, 13]);
    assert_eq!(out[0].commit, 12);
}

/// The message raft-rs 0.7's `batch_append` got wrong: an empty append (a commit update)
/// queued first, then the follower's rejection moves its next index back and entries are
/// sent from there. They do not follow index 20, so they must leave as their own message.
#[test]
fn entries_after_a_step_back_stay_apart() {
    let msgs = vec![
        append(2, 20, 5, &[], 18),
        append(2, 16, 5, &[(17, 5), (18, 5), (19, 5), (20, 5)], 18),
    ];
    let out = coalesce(msgs.clone());
    assert_eq!(out, msgs);
    // Nor does an append whose previous term differs from the last entry's.
    let msgs = vec![
        append(2, 10, 4, &[(11, 4)], 9),
        append(2, 11, 5, &[(12, 5)], 9),
    ];
    assert_eq!(coalesce(msgs.clone()), msgs);
}

#[test]
fn peers_merge_apart_and_other_messages_keep_their_place() {
    let out = coalesce(vec![
        append(2, 10, 5, &[(11, 5)], 9),
        append(3, 8, 5, &[(9, 5), (10, 5), (11, 5)], 9),
        append(2, 11, 5, &[(12, 5)], 10),
        heartbeat(3),
        append(3, 11, 5, &[(12, 5)], 10),
    ]);
    let shape: Vec<(u64, MessageType, Vec<u64>)> = out
        .iter()
        .map(|m| (m.to, m.get_msg_type(), indexes(m)))
        .collect();
    assert_eq!(
        shape,
        vec![
            (2, MessageType::MsgAppend, vec![11, 12]),
            (3, MessageType::MsgAppend, vec![9, 10, 11]),
            (3, MessageType::MsgHeartbeat, vec![]),
            (3, MessageType::MsgAppend, vec![12]),
        ],
        "an append after a heartbeat to the same peer is not moved before it"
    );
}

#[test]
fn a_merge_stops_at_the_size_bound() {
    let big = |index: u64| {
        let mut m = append(2, index - 1, 5, &[(index, 5)], 0);
        m.mut_entries()[0].data = vec![0; (MAX_APPEND_BYTES / 2) as usize].into();
        m
    };
    let out = coalesce(vec![big(11), big(12), big(13)]);
    assert_eq!(
        out.iter().map(indexes).collect::<Vec<_>>(),
        [vec![11], vec![12], vec![13]]
    );
}

/// Three raft nodes with this member's configuration, in memory, on a network that loses,
/// duplicates, delays and reorders messages, their appends merged by `coalesce` as the raft
/// loop does. What a follower acknowledges must be in its log: every append's entries
/// follow its index, and a leader never counts a follower of its term as holding an index
/// beyond that follower's log. (With raft-rs's `batch_append` on, this fails within a few
/// seeds: the follower is counted past its log, and its raft panics.)
#[test]
fn a_lossy_reordering_network_never_inflates_what_a_follower_holds() {
    for seed in 0..12 {
        simulate(seed, 4_000);
    }
}

fn simulate(seed: u64, rounds: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let ids = [1u64, 2, 3];
    let mut nodes: Vec<RawNode<MemStorage>> = ids
        .iter()
        .map(|&id| {
            let store = MemStorage::new_with_conf_state(ConfState::from((ids.to_vec(), vec![])));
            RawNode::new(&raft_config(id, 10, 0), store, &logger).expect("raw node")
        })
        .collect();
    let mut wire: Vec<Message> = Vec::new();
    let mut proposed = 0u64;
    for round in 0..rounds {
        // Time passes: a heartbeat tick now and then, more often while there is no leader.
        if round % 3 == 0 {
            for n in &mut nodes {
                n.tick();
            }
        }
        // Clients write through whoever leads.
        if let Some(l) = nodes.iter_mut().find(|n| n.raft.state == StateRole::Leader) {
            for _ in 0..rng.random_range(0..4) {
                proposed += 1;
                let _ = l.propose(vec![], proposed.to_be_bytes().to_vec());
            }
        }
        // Deliver some of what is on the wire, in any order; some is lost, some repeated.
        let deliver = rng.random_range(0..=wire.len().min(8));
        for _ in 0..deliver {
            let m = wire.swap_remove(rng.random_range(0..wire.len()));
            if rng.random_bool(0.1) {
                continue;
            }
            if rng.random_bool(0.05) {
                wire.push(m.clone());
            }
            let to = (m.to - 1) as usize;
            let _ = nodes[to].step(m);
        }
        for n in &mut nodes {
            let out = handle_ready(n);
            for m in &out {
                let first = m.entries.first().map(|e| e.index);
                if m.get_msg_type() == MessageType::MsgAppend && first.is_some() {
                    assert_eq!(
                        first,
                        Some(m.index + 1),
                        "seed {seed} round {round}: an append from {} to {} whose entries do \
                         not follow its index {}",
                        m.from,
                        m.to,
                        m.index
                    );
                }
            }
            wire.extend(out);
        }
        check_matched(&nodes, seed, round);
    }
    let committed = nodes
        .iter()
        .map(|n| n.raft.raft_log.committed)
        .max()
        .unwrap_or(0);
    assert!(
        committed > 100,
        "seed {seed}: the cluster made progress ({committed} committed)"
    );
}

/// Persists and "applies" one `Ready` as the raft loop does; returns what it sends, the
/// appends merged.
fn handle_ready(raw: &mut RawNode<MemStorage>) -> Vec<Message> {
    if !raw.has_ready() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rd = raw.ready();
    out.extend(coalesce(rd.take_messages()));
    let store = raw.store().clone();
    if !rd.snapshot().is_empty() {
        store
            .wl()
            .apply_snapshot(rd.snapshot().clone())
            .expect("snapshot");
    }
    rd.take_committed_entries();
    store.wl().append(rd.entries()).expect("append");
    if let Some(hs) = rd.hs() {
        store.wl().set_hardstate(hs.clone());
    }
    out.extend(rd.take_persisted_messages());
    let mut light = raw.advance(rd);
    if let Some(commit) = light.commit_index() {
        store.wl().mut_hard_state().set_commit(commit);
    }
    out.extend(coalesce(light.take_messages()));
    light.take_committed_entries();
    raw.advance_apply();
    out
}

/// A leader counts no follower of its own term as holding more than the follower's log.
fn check_matched(nodes: &[RawNode<MemStorage>], seed: u64, round: usize) {
    for l in nodes.iter().filter(|n| n.raft.state == StateRole::Leader) {
        for f in nodes.iter().filter(|n| n.raft.id != l.raft.id) {
            if f.raft.term != l.raft.term {
                continue;
            }
            let Some(pr) = l.raft.prs().get(f.raft.id) else {
                continue;
            };
            let held = f.raft.raft_log.last_index();
            assert!(
                pr.matched <= held,
                "seed {seed} round {round}: leader {} counts {} as holding {} but its log ends \
                 at {held}",
                l.raft.id,
                f.raft.id,
                pr.matched
            );
        }
    }
}

#[test]
fn an_append_whose_entries_do_not_follow_its_index_is_malformed() {
    assert!(!malformed(&append(2, 10, 5, &[(11, 5), (12, 5)], 9)));
    assert!(!malformed(&append(2, 10, 5, &[], 9)));
    assert!(!malformed(&heartbeat(2)));
    // What raft-rs 0.7's `batch_append` sent after a step back, and worse.
    assert!(malformed(&append(2, 20, 5, &[(17, 5), (18, 5)], 18)));
    assert!(malformed(&append(2, 10, 5, &[(12, 5)], 9)));
    assert!(malformed(&append(2, 10, 5, &[(11, 5), (13, 5)], 9)));
}
