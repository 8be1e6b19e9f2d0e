//! etcd's watch guarantees, checked on what watchers recorded during a run (etcd's
//! robustness suite checks the same list, `tests/robustness/validate/watch.go`):
//! - **ordered**: a watcher's events come in revision order;
//! - **unique**: no event (revision, key) twice;
//! - **atomic**: a revision's events arrive in one response, never split;
//! - **no gaps**: from its start revision on, a watcher of the whole keyspace sees every
//!   revision (every revision changes some key), up to the last one of the run;
//! - **resumable**: a watcher whose stream broke (its member killed) opens a new one from its
//!   last revision + 1, on another member, and the two together show no gap or duplicate;
//! - **reliable**: every acknowledged write appears at the revision its response gave, as
//!   what it wrote; every value put was written by some client (nothing made up);
//! - **agreement**: watchers that saw the same revision saw the same events at it;
//! - **truthful progress**: a progress notification at revision R comes only once every
//!   event up to R has arrived on its stream.
//!
//! The checker only reads the records; what opens and resumes the streams is the harness's.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{Acked, Change, Value};

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    pub change: Change,
}

/// One watch stream: the revision it asked to start from, the events of each response
/// (responses without events, such as the creation's, are not kept), and its progress
/// notifications: (how many responses with events had come before it, its revision).
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub member: usize,
    pub from: i64,
    pub responses: Vec<Vec<Event>>,
    pub progress: Vec<(usize, i64)>,
}

/// Everything one watcher (of the whole keyspace) received, stream after stream.
#[derive(Clone, Debug, Default)]
pub struct WatchLog {
    pub name: String,
    pub streams: Vec<Stream>,
}

impl WatchLog {
    /// The revision the watcher has seen up to (0: nothing yet).
    pub fn last_rev(&self) -> i64 {
        self.streams
            .iter()
            .flat_map(|s| s.responses.iter().flatten())
            .map(|e| e.rev)
            .max()
            .unwrap_or(0)
    }

    /// Number of events received.
    pub fn events(&self) -> usize {
        self.streams
            .iter()
            .flat_map(|s| s.responses.iter())
            .map(Vec::len)
            .sum()
    }
}

/// Checks every log against the guarantees (module doc). `written`: every value any client
/// sent in a write, acknowledged or not; `until`: the last revision of the run, which every
/// watcher must have reached. Returns the violations, each a sentence.
pub fn check(
    logs: &[WatchLog],
    acked: &[Acked],
    written: &HashSet<Value>,
    until: i64,
) -> Vec<String> {
    let mut bad = Vec::new();
    // Events by revision, from the first watcher that saw the revision: the others must agree.
    let mut reference: BTreeMap<i64, (String, Vec<(String, Change)>)> = BTreeMap::new();
    for log in logs {
        let by_rev = check_one(log, written, until, &mut bad);
        for (rev, mut changes) in by_rev {
            changes.sort();
            match reference.get(&rev) {
                Some((who, theirs)) if *theirs != changes => bad.push(format!(
                    "{}: revision {rev} is {changes:?}, {who} saw {theirs:?}",
                    log.name
                )),
                Some(_) => {}
                None => {
                    reference.insert(rev, (log.name.clone(), changes));
                }
            }
        }
        let covered = log.streams.first().map_or(i64::MAX, |s| s.from);
        // The first event of each (revision, key), for the lookups below.
        let mut first: HashMap<(i64, &str), &Event> = HashMap::new();
        for e in log
            .streams
            .iter()
            .flat_map(|s| s.responses.iter().flatten())
        {
            first.entry((e.rev, e.key.as_str())).or_insert(e);
        }
        for a in acked.iter().filter(|a| a.rev >= covered && a.rev <= until) {
            let seen = first.get(&(a.rev, a.key.as_str()));
            match seen {
                None => bad.push(format!(
                    "{}: acknowledged {:?} of {} at revision {} never arrived",
                    log.name, a.change, a.key, a.rev
                )),
                Some(e) if e.change != a.change => bad.push(format!(
                    "{}: acknowledged {:?} of {} at revision {} arrived as {:?}",
                    log.name, a.change, a.key, a.rev, e.change
                )),
                Some(_) => {}
            }
        }
    }
    bad
}

/// The per-watcher guarantees; returns the watcher's events grouped by revision.
fn check_one(
    log: &WatchLog,
    written: &HashSet<Value>,
    until: i64,
    bad: &mut Vec<String>,
) -> BTreeMap<i64, Vec<(String, Change)>> {
    let name = &log.name;
    let mut by_rev: BTreeMap<i64, Vec<(String, Change)>> = BTreeMap::new();
    let mut seen: HashSet<(i64, String)> = HashSet::new();
    // Which response (stream, index) carried each revision.
    let mut carrier: HashMap<i64, (usize, usize)> = HashMap::new();
    let Some(first) = log.streams.first() else {
        bad.push(format!("{name}: never opened a stream"));
        return by_rev;
    };
    // The revision the next event must carry (or the one before, for a revision's next
    // event in the same response).
    let mut next = first.from;
    let mut last: Option<i64> = None;
    for (s, stream) in log.streams.iter().enumerate() {
        if s > 0 && stream.from != next {
            bad.push(format!(
                "{name}: stream {s} resumed from revision {} on member {}, not {next} (the \
                 last revision seen + 1)",
                stream.from, stream.member
            ));
        }
        // The highest revision received in the first n responses of the stream, for each n.
        let mut highest = Vec::with_capacity(stream.responses.len() + 1);
        highest.push(stream.from - 1);
        for events in &stream.responses {
            let top = events.iter().map(|e| e.rev).max().unwrap_or(i64::MIN);
            highest.push(top.max(highest.last().copied().unwrap_or(i64::MIN)));
        }
        for &(before, rev) in &stream.progress {
            // Every revision carries events (the watch covers the whole keyspace), so "all
            // events up to `rev` arrived" is "the last revision received is at least `rev`".
            let received = highest[before.min(stream.responses.len())];
            if rev > received.max(stream.from - 1) {
                bad.push(format!(
                    "{name}: progress notification at revision {rev} on stream {s} (member {}) \
                     when only revisions up to {received} had arrived",
                    stream.member
                ));
            }
        }
        for (r, events) in stream.responses.iter().enumerate() {
            for e in events {
                if let Change::Put(v) = &e.change
                    && !written.contains(v)
                {
                    bad.push(format!(
                        "{name}: {} at revision {} holds {v:?}, which no client wrote",
                        e.key, e.rev
                    ));
                }
                if !seen.insert((e.rev, e.key.clone())) {
                    bad.push(format!(
                        "{name}: {} at revision {} arrived twice (stream {s} from member {})",
                        e.key, e.rev, stream.member
                    ));
                    continue;
                }
                match last {
                    Some(l) if e.rev < l => bad.push(format!(
                        "{name}: revision {} arrived after revision {l}",
                        e.rev
                    )),
                    Some(l) if e.rev == l => {}
                    _ if e.rev != next => bad.push(format!(
                        "{name}: revision {} arrived where {next} was due: revisions {next}..{} \
                         missing (stream {s} from member {})",
                        e.rev,
                        e.rev - 1,
                        stream.member
                    )),
                    _ => {}
                }
                match carrier.get(&e.rev) {
                    Some(&at) if at != (s, r) => bad.push(format!(
                        "{name}: revision {} split over two responses",
                        e.rev
                    )),
                    Some(_) => {}
                    None => {
                        carrier.insert(e.rev, (s, r));
                    }
                }
                last = Some(last.map_or(e.rev, |l| l.max(e.rev)));
                next = next.max(e.rev + 1);
                by_rev
                    .entry(e.rev)
                    .or_default()
                    .push((e.key.clone(), e.change.clone()));
            }
        }
    }
    if next <= until {
        bad.push(format!(
            "{name}: saw up to revision {}, the run ended at {until}",
            next - 1
        ));
    }
    by_rev
}
