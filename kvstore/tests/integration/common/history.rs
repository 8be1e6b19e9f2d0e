//! Histories of concurrent operations on keys (put, linearizable get, compare-and-swap)
//! and their linearizability check: each key is a compare-and-swap register, checked on its
//! own (linearizability is local) with stateright's `LinearizabilityTester`.
//!
//! Outcomes follow Jepsen/Knossos: an operation that returned is `Ok`; one that certainly
//! had no effect (a failed read, a request never sent) is `Failed` and dropped; a write
//! whose fate is unknown (timeout, lost connection, leader change) is `Unknown`: it stays
//! in flight for ever, so the checker may place it at any point after its invocation or
//! not at all, and the client that issued it continues as a new process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// A value written; every write in a history writes a distinct one.
pub type Value = String;

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put(Value),
    Get,
    /// Write `new` if the key currently holds `expect` (`None`: the key is absent).
    Cas {
        expect: Option<Value>,
        new: Value,
    },
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    PutOk,
    GetOk(Option<Value>),
    CasOk,
    /// The comparison failed; the key held this value (read in the same transaction).
    CasFailed(Option<Value>),
}

/// The sequential reference: one key's value, `None` while it does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CasRegister(pub Option<Value>);

impl SequentialSpec for CasRegister {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Put(v) => {
                self.0 = Some(v.clone());
                Ret::PutOk
            }
            Op::Get => Ret::GetOk(self.0.clone()),
            Op::Cas { expect, new } => {
                if &self.0 == expect {
                    self.0 = Some(new.clone());
                    Ret::CasOk
                } else {
                    Ret::CasFailed(self.0.clone())
                }
            }
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Ret),
    /// Certainly without effect.
    Failed,
    /// May or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
enum Event {
    Invoke {
        id: usize,
        client: usize,
        key: String,
        op: Op,
        at: Instant,
    },
    Return {
        id: usize,
        outcome: Outcome,
        at: Instant,
    },
}

/// Records invocations and returns in real-time order from many concurrent clients.
/// Each client must run one operation at a time.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    /// How often each error was seen, for the report.
    errors: Mutex<BTreeMap<String, usize>>,
}

/// Counts of one key's (or a whole history's) operations by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Of the `ok` ones: compare-and-swaps that swapped, and that found another value.
    pub cas_ok: usize,
    pub cas_failed: usize,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(ret) => {
                self.ok += 1;
                match ret {
                    Ret::CasOk => self.cas_ok += 1,
                    Ret::CasFailed(_) => self.cas_failed += 1,
                    Ret::PutOk | Ret::GetOk(_) => {}
                }
            }
            Outcome::Failed => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

/// What the checker concluded about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations agrees with a compare-and-swap register.
    Violation,
    /// The search ran out of time: not a pass.
    Inconclusive,
}

/// The verdict on one key.
#[derive(Debug)]
pub struct KeyReport {
    pub key: String,
    pub counts: Counts,
    /// Unknown writes whose value no operation mentions, left out of the search.
    pub pruned: usize,
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// The key's history, one line per operation, for a failure message.
    pub history: String,
}

impl Recorder {
    fn events(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `client` is about to send `op` on `key`; returns the operation's id.
    /// Call immediately before sending.
    pub fn invoke(&self, client: usize, key: &str, op: Op) -> usize {
        let mut ev = self.events();
        let id = ev.len();
        ev.push(Event::Invoke {
            id,
            client,
            key: key.to_string(),
            op,
            at: Instant::now(),
        });
        id
    }

    /// Notes how operation `id` ended. Call as soon as its answer (or error) arrived.
    pub fn complete(&self, id: usize, outcome: Outcome) {
        self.events().push(Event::Return {
            id,
            outcome,
            at: Instant::now(),
        });
    }

    /// Counts an error message (for the report only).
    pub fn note_error(&self, what: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    /// The errors seen, with how often.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Totals over the whole history.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in self.events().iter() {
            if let Event::Return { outcome, .. } = e {
                c.add(outcome);
            }
        }
        c
    }

    /// Checks every key's history, each on its own thread with `deadline` (the tester's
    /// search is exponential in the worst case; running out of time is `Inconclusive`,
    /// never a pass).
    pub fn check(&self, deadline: Duration) -> Vec<KeyReport> {
        let events = self.events().clone();
        let mut keys: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Invoke { key, .. } => Some(key.clone()),
                Event::Return { .. } => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|key| check_key(&events, key, deadline))
            .collect()
    }
}

/// One key's operations, in invocation order: (client, op, outcome, invoked, returned).
type KeyOps = Vec<(usize, Op, Outcome, Instant, Option<Instant>)>;

fn key_ops(events: &[Event], key: &str) -> (KeyOps, BTreeMap<usize, usize>) {
    let mut ops: KeyOps = Vec::new();
    let mut index = BTreeMap::new();
    for e in events {
        match e {
            Event::Invoke {
                id,
                client,
                key: k,
                op,
                at,
            } if k == key => {
                index.insert(*id, ops.len());
                ops.push((*client, op.clone(), Outcome::Unknown, *at, None));
            }
            Event::Return { id, outcome, at } => {
                if let Some(&i) = index.get(id) {
                    ops[i].2 = outcome.clone();
                    ops[i].4 = Some(*at);
                }
            }
            Event::Invoke { .. } => {}
        }
    }
    (ops, index)
}

/// Drops the unknown writes whose value no operation mentions (as a return, or as the
/// expected value of a compare-and-swap): each write writes a distinct value, so in any
/// linearization containing such a write nothing reads it before the next write replaces
/// it, and leaving it out yields a linearization too. Returns how many were dropped.
/// (Only a search-time saving: the tester may leave any in-flight write out anyway.)
fn prune_unobserved(ops: &mut KeyOps) -> usize {
    let mut seen = std::collections::HashSet::new();
    for (_, op, outcome, _, _) in ops.iter() {
        if let Op::Cas {
            expect: Some(v), ..
        } = op
        {
            seen.insert(v.clone());
        }
        if let Outcome::Ok(Ret::GetOk(Some(v)) | Ret::CasFailed(Some(v))) = outcome {
            seen.insert(v.clone());
        }
    }
    let mut pruned = 0;
    for (_, op, outcome, _, _) in ops.iter_mut() {
        let written = match op {
            Op::Put(v) | Op::Cas { new: v, .. } => v,
            Op::Get => continue,
        };
        if *outcome == Outcome::Unknown && !seen.contains(written) {
            *outcome = Outcome::Failed;
            pruned += 1;
        }
    }
    pruned
}

fn check_key(events: &[Event], key: String, deadline: Duration) -> KeyReport {
    let (mut ops, index) = key_ops(events, &key);
    let origin = events.first().map_or_else(Instant::now, |e| match e {
        Event::Invoke { at, .. } | Event::Return { at, .. } => *at,
    });
    let mut counts = Counts::default();
    let mut history = String::new();
    for (client, op, outcome, inv, ret) in &ops {
        counts.add(outcome);
        history.push_str(&format!(
            "  client {client:>2} {:>9.3}s..{:<10} {op:?} -> {outcome:?}\n",
            inv.duration_since(origin).as_secs_f64(),
            ret.map_or("(never)".to_string(), |r| format!(
                "{:.3}s",
                r.duration_since(origin).as_secs_f64()
            )),
        ));
    }
    let pruned = prune_unobserved(&mut ops);

    // Tester processes: a client becomes a new process after each unknown outcome. The
    // processes that end in flight get the highest ids, so the search tries the operations
    // that surely happened first.
    let mut process_of = vec![0usize; ops.len()];
    let mut incarnation: BTreeMap<usize, usize> = BTreeMap::new();
    let mut ends_in_flight: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for (i, (client, _, outcome, _, _)) in ops.iter().enumerate() {
        let inc = *incarnation.entry(*client).or_default();
        process_of[i] = inc;
        ends_in_flight.insert((*client, inc), *outcome == Outcome::Unknown);
        if *outcome == Outcome::Unknown {
            *incarnation.entry(*client).or_default() += 1;
        }
    }
    let mut ids: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let (mut done, mut open): (Vec<_>, Vec<_>) = ends_in_flight.iter().partition(|(_, f)| !**f);
    done.append(&mut open);
    for (n, (p, _)) in done.into_iter().enumerate() {
        ids.insert(*p, n);
    }
    let thread = |i: usize| ids[&(ops[i].0, process_of[i])];

    let mut tester = LinearizabilityTester::new(CasRegister(None));
    let mut valid = true;
    for e in events {
        let step = match e {
            Event::Invoke { id, .. } => match index.get(id) {
                Some(&i) if ops[i].2 != Outcome::Failed => {
                    tester.on_invoke(thread(i), ops[i].1.clone()).map(|_| ())
                }
                _ => Ok(()),
            },
            Event::Return { id, .. } => match index.get(id) {
                Some(&i) => match &ops[i].2 {
                    Outcome::Ok(ret) => tester.on_return(thread(i), ret.clone()).map(|_| ()),
                    Outcome::Failed | Outcome::Unknown => Ok(()),
                },
                None => Ok(()),
            },
        };
        if let Err(e) = step {
            history.push_str(&format!("malformed history: {e}\n"));
            valid = false;
            break;
        }
    }

    let started = Instant::now();
    let verdict = if valid {
        run_with_deadline(tester, deadline)
    } else {
        Verdict::Violation
    };
    KeyReport {
        key,
        counts,
        pruned,
        verdict,
        elapsed: started.elapsed(),
        history,
    }
}

/// Runs the tester's search on a thread with a large stack (it recurses once per
/// operation), giving up after `deadline`.
fn run_with_deadline(
    tester: LinearizabilityTester<usize, CasRegister>,
    deadline: Duration,
) -> Verdict {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("linearizability".into())
        .stack_size(1 << 30)
        .spawn(move || {
            let _ = tx.send(tester.serialized_history().is_some());
        });
    if spawned.is_err() {
        return Verdict::Inconclusive;
    }
    match rx.recv_timeout(deadline) {
        Ok(true) => Verdict::Linearizable,
        Ok(false) => Verdict::Violation,
        Err(_) => Verdict::Inconclusive,
    }
}
