//! Histories of concurrent operations on keys (put, put with a lease, linearizable get,
//! compare-and-swap, delete, compare-and-delete, lease revoke) and their linearizability
//! check: each key is a register, checked on its own (linearizability is local) by `search`,
//! Wing & Gong's search with Lowe's memoization, as in porcupine. stateright's
//! `LinearizabilityTester`, used before, searches without memoization: it ran out of 20 s on
//! one key of a CI run whose other keys took 0.2-0.4 s; on generated histories of 400
//! operations by 6 clients it took 2-5 s for three seeds and more than 60 s for a fourth, and
//! on those of 4,000 operations by 8 clients (the `checker` tests in `linearizability.rs`)
//! more than 60 s, where this search, unoptimized build, takes 40-150 ms.
//!
//! The register is etcd's robustness model cut to one key: a value (or none), and the lease
//! it is attached to; a revoke of that lease deletes it. Each lease is attached to one key
//! only, so its revoke is an operation on that key and locality holds. A transaction writing
//! several keys is recorded as one write on each: every key's projection of a linearizable
//! history is linearizable, so the check stays sound (it is weaker for such transactions;
//! their atomicity is checked through the watch streams, `watch_check`).
//!
//! Outcomes follow Jepsen/Knossos: an operation that returned is `Ok`; one that certainly
//! had no effect (a failed read, a request never sent) is `Failed` and dropped; a write
//! whose fate is unknown (timeout, lost connection, leader change) is `Unknown`: it returns
//! "at infinity", after every other event, and whatever it returned is accepted, so the
//! search may place it at any point after its invocation. Placing it last is the same as
//! its never having happened (nothing comes after it to see it), so every operation is
//! linearized and "not at all" needs no case of its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A value written; every write in a history writes a distinct one.
pub type Value = String;

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put(Value),
    /// A put attached to lease `lease` (a lease this key alone is ever attached to).
    PutLease {
        value: Value,
        lease: i64,
    },
    Get,
    /// Write `new` if the key currently holds `expect` (`None`: the key is absent).
    Cas {
        expect: Option<Value>,
        new: Value,
    },
    Delete,
    /// Delete the key if it currently holds `expect`.
    CasDelete {
        expect: Option<Value>,
    },
    /// Revoke the lease: the key goes if it is still attached to it.
    Revoke(i64),
}

impl Op {
    /// Whether the operation can make the key absent again.
    fn deletes(&self) -> bool {
        matches!(self, Op::Delete | Op::CasDelete { .. } | Op::Revoke(_))
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    PutOk,
    GetOk(Option<Value>),
    CasOk,
    /// The comparison failed; the key held this value (read in the same transaction).
    CasFailed(Option<Value>),
    /// How many keys a delete removed (0 or 1).
    Deleted(i64),
    Revoked,
}

/// The sequential reference: one key's value, `None` while it does not exist, and the
/// lease it is attached to (0: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CasRegister(pub Option<Value>, pub i64);

impl CasRegister {
    /// Applies `op`; returns what it returns.
    pub fn apply(&mut self, op: &Op) -> Ret {
        match op {
            Op::Put(v) => {
                *self = CasRegister(Some(v.clone()), 0);
                Ret::PutOk
            }
            Op::PutLease { value, lease } => {
                *self = CasRegister(Some(value.clone()), *lease);
                Ret::PutOk
            }
            Op::Get => Ret::GetOk(self.0.clone()),
            Op::Cas { expect, new } => {
                if &self.0 == expect {
                    *self = CasRegister(Some(new.clone()), 0);
                    Ret::CasOk
                } else {
                    Ret::CasFailed(self.0.clone())
                }
            }
            Op::Delete => {
                let n = i64::from(self.0.is_some());
                *self = CasRegister::default();
                Ret::Deleted(n)
            }
            Op::CasDelete { expect } => {
                if &self.0 == expect {
                    *self = CasRegister::default();
                    Ret::CasOk
                } else {
                    Ret::CasFailed(self.0.clone())
                }
            }
            Op::Revoke(lease) => {
                if self.0.is_some() && self.1 == *lease {
                    *self = CasRegister::default();
                }
                Ret::Revoked
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

/// Records invocations and returns in real-time order from many concurrent clients: each
/// event is appended under one lock, so the order of the list is the order of the events
/// (the search takes it as it is; there are no equal times to break).
/// Each client must run one operation at a time.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    /// How often each error was seen, for the report.
    errors: Mutex<BTreeMap<String, usize>>,
    /// The acknowledged writes with the revision each response gave (for the watch check).
    acked: Mutex<Vec<Acked>>,
}

/// What a write did to a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Put(Value),
    Delete,
}

/// A write the store acknowledged, with the revision its response gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub key: String,
    pub rev: i64,
    pub change: Change,
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
    /// Of the `ok` ones: deletes that removed the key, and lease revokes.
    pub deleted: usize,
    pub revoked: usize,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(ret) => {
                self.ok += 1;
                match ret {
                    Ret::CasOk => self.cas_ok += 1,
                    Ret::CasFailed(_) => self.cas_failed += 1,
                    Ret::Deleted(n) => self.deleted += usize::from(*n > 0),
                    Ret::Revoked => self.revoked += 1,
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

    /// Notes that a write to `key` was acknowledged at revision `rev`.
    pub fn acked(&self, key: &str, rev: i64, change: Change) {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Acked {
                key: key.to_string(),
                rev,
                change,
            });
    }

    /// The acknowledged writes noted so far.
    pub fn acked_writes(&self) -> Vec<Acked> {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every value any operation tried to write, whatever became of it.
    pub fn written(&self) -> HashSet<Value> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                Event::Invoke {
                    op: Op::Put(v) | Op::PutLease { value: v, .. } | Op::Cas { new: v, .. },
                    ..
                } => Some(v.clone()),
                _ => None,
            })
            .collect()
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

    /// Every completed operation: the client, when it was invoked and when it ended, and
    /// whether it succeeded (for reports that explain a gap).
    pub fn spans(&self) -> Vec<(usize, Instant, Instant, bool)> {
        let events = self.events();
        let mut open = HashMap::new();
        let mut out = Vec::new();
        for e in events.iter() {
            match e {
                Event::Invoke { id, client, at, .. } => {
                    open.insert(*id, (*client, *at));
                }
                Event::Return { id, outcome, at } => {
                    if let Some((client, from)) = open.remove(id) {
                        out.push((client, from, *at, matches!(outcome, Outcome::Ok(_))));
                    }
                }
            }
        }
        out
    }

    /// When each operation ended, and whether it succeeded, in the order they ended.
    pub fn returns(&self) -> Vec<(Instant, bool)> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                Event::Return { outcome, at, .. } => Some((*at, matches!(outcome, Outcome::Ok(_)))),
                Event::Invoke { .. } => None,
            })
            .collect()
    }

    /// The longest time between two successful operations of any client (how long the
    /// store was unavailable to them all at once), and how many such gaps exceeded `over`.
    pub fn gaps(&self, over: Duration) -> (Duration, usize) {
        let oks: Vec<Instant> = self
            .returns()
            .into_iter()
            .filter_map(|(at, ok)| ok.then_some(at))
            .collect();
        oks.windows(2)
            .map(|p| p[1].saturating_duration_since(p[0]))
            .fold((Duration::ZERO, 0), |(longest, count), gap| {
                (longest.max(gap), count + usize::from(gap > over))
            })
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

    /// Checks every key's history, each within `deadline` (the search is exponential in
    /// the worst case, memoization or not; running out of time is `Inconclusive`, never a
    /// pass).
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
/// (Only a search-time saving: the search may place any unknown write last anyway.)
/// Not on a key that anything deletes: there an unread write still shows, through a
/// delete's count or a revoke that removes it, so none is dropped.
fn prune_unobserved(ops: &mut KeyOps) -> usize {
    if ops.iter().any(|(_, op, _, _, _)| op.deletes()) {
        return 0;
    }
    let mut seen = HashSet::new();
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
            Op::Put(v) | Op::PutLease { value: v, .. } | Op::Cas { new: v, .. } => v,
            _ => continue,
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

    // The operations that may have taken effect, numbered for the search, with what they
    // returned (`None`: unknown, anything goes); their calls and returns in the recorded
    // order, the unknown ones' returns after everything else.
    let mut searched: Vec<(Op, Option<Ret>)> = Vec::new();
    let mut number = vec![None; ops.len()];
    for (i, (_, op, outcome, _, _)) in ops.iter().enumerate() {
        let ret = match outcome {
            Outcome::Ok(ret) => Some(ret.clone()),
            Outcome::Unknown => None,
            Outcome::Failed => continue,
        };
        number[i] = Some(searched.len());
        searched.push((op.clone(), ret));
    }
    let mut order = Vec::new();
    for e in events {
        let (id, call) = match e {
            Event::Invoke { id, .. } => (id, true),
            Event::Return { id, .. } => (id, false),
        };
        if let Some(&i) = index.get(id)
            && let Some(n) = number[i]
            && (call || searched[n].1.is_some())
        {
            order.push(Entry { op: n, call });
        }
    }
    for (n, (_, ret)) in searched.iter().enumerate() {
        if ret.is_none() {
            order.push(Entry { op: n, call: false });
        }
    }

    let started = Instant::now();
    let verdict = search(&searched, &order, started + deadline);
    KeyReport {
        key,
        counts,
        pruned,
        verdict,
        elapsed: started.elapsed(),
        history,
    }
}

/// A call or a return of operation `op`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
}

/// The calls and returns not yet linearized, in time order: a list linked both ways through
/// indices, so an operation's call and return come out and go back in constant time.
/// Slot 0 is the head, slot 1 the tail; operation `i`'s call is slot `2 + 2i`, its return
/// `3 + 2i`.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
}

const HEAD: usize = 0;
const TAIL: usize = 1;

fn slot(e: Entry) -> usize {
    2 + 2 * e.op + usize::from(!e.call)
}

fn entry(slot: usize) -> Entry {
    Entry {
        op: (slot - 2) / 2,
        call: slot.is_multiple_of(2),
    }
}

impl Entries {
    fn new(order: &[Entry]) -> Self {
        let slots = 2 + order.len();
        let (mut next, mut prev) = (vec![TAIL; slots], vec![HEAD; slots]);
        let mut last = HEAD;
        for &e in order {
            next[last] = slot(e);
            prev[slot(e)] = last;
            last = slot(e);
        }
        next[last] = TAIL;
        prev[TAIL] = last;
        Entries { next, prev }
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    /// Takes operation `op`'s call and return out of the list.
    fn lift(&mut self, op: usize) {
        for s in [
            slot(Entry { op, call: true }),
            slot(Entry { op, call: false }),
        ] {
            let (p, n) = (self.prev[s], self.next[s]);
            self.next[p] = n;
            self.prev[n] = p;
        }
    }

    /// Undoes `lift(op)`, which must be the last lift not yet undone: the lifted slots
    /// still name their old neighbours, which are back in place.
    fn unlift(&mut self, op: usize) {
        for s in [
            slot(Entry { op, call: false }),
            slot(Entry { op, call: true }),
        ] {
            let (p, n) = (self.prev[s], self.next[s]);
            self.next[p] = s;
            self.prev[n] = s;
        }
    }
}

/// Whether `ops` (each an operation and what it returned, `None` for anything), called and
/// returning in `order`, are linearizable on a register that starts absent; `Inconclusive`
/// once `deadline` has passed.
///
/// Wing & Gong's search with Lowe's memoization, as in porcupine: walk the list of calls
/// and returns from the start and linearize the first call whose effect on the register
/// gives what it returned, taking its call and return out of the list and starting again
/// from the front. Reaching a return means its operation should have been linearized by
/// now: undo the last linearization and go on from the entry after that call. A (set of
/// linearized operations, register) pair seen before is not explored again, since what can
/// follow depends on nothing else. One cut of our own (see `Awaited`): no write may
/// overwrite a value that an operation not yet linearized must still read. Linearizable
/// once the list is empty; a violation when there is nothing left to undo. The choices are
/// kept on a stack, not in recursion.
fn search(ops: &[(Op, Option<Ret>)], order: &[Entry], deadline: Instant) -> Verdict {
    debug_assert_eq!(
        order.len(),
        2 * ops.len(),
        "a call and a return per operation"
    );
    let mut list = Entries::new(order);
    let mut register = CasRegister::default();
    let mut seen: HashSet<(Vec<u64>, CasRegister)> = HashSet::new();
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let flip = |set: &mut Vec<u64>, op: usize| set[op / 64] ^= 1 << (op % 64);
    let mut awaited = Awaited::new(ops);
    // Each linearized operation, with the register before it.
    let mut choices: Vec<(usize, CasRegister)> = Vec::new();
    let mut at = list.first();
    let mut steps = 0u64;
    while list.first() != TAIL {
        steps += 1;
        if steps.is_multiple_of(1024) && Instant::now() >= deadline {
            return Verdict::Inconclusive;
        }
        let Entry { op, call } = entry(at);
        if !call {
            let Some((op, before)) = choices.pop() else {
                return Verdict::Violation;
            };
            flip(&mut linearized, op);
            awaited.undo(op);
            register = before;
            list.unlift(op);
            at = list.next[slot(Entry { op, call: true })];
            continue;
        }
        let mut after = register.clone();
        let ret = after.apply(&ops[op].0);
        if ops[op].1.as_ref().is_none_or(|r| *r == ret) {
            flip(&mut linearized, op);
            awaited.linearize(op);
            if (after == register || !awaited.awaits(&register))
                && seen.insert((linearized.clone(), after.clone()))
            {
                choices.push((op, std::mem::replace(&mut register, after)));
                list.lift(op);
                at = list.first();
                continue;
            }
            flip(&mut linearized, op);
            awaited.undo(op);
        }
        at = list.next[at];
    }
    Verdict::Linearizable
}

/// The values that operations not yet linearized must find in the register: what reads
/// and failed swaps returned, what successful swaps compared with. While one is awaited, it
/// must not be overwritten: every write writes a distinct value, so it could never come
/// back. Nor could the key's absence unless something deletes it: on a key with deletes,
/// an awaited absence is no reason to refuse a write. This cuts a wrong branch at the write
/// that starts it rather than at the read that fails later; without it, each unknown write
/// in flight doubled the states explored (linearized early and overwritten unseen, or not
/// yet), and a generated history of 4,000 operations with some writes in flight for tens of
/// operations did not finish in 2 s.
struct Awaited<'a> {
    /// By operation: the value it must find, if any.
    need: Vec<Option<&'a Option<Value>>>,
    /// By value: how many operations not yet linearized must find it.
    count: HashMap<&'a Option<Value>, usize>,
    /// Whether the key can become absent again (some operation deletes it).
    absence_recurs: bool,
}

impl<'a> Awaited<'a> {
    fn new(ops: &'a [(Op, Option<Ret>)]) -> Self {
        let need: Vec<_> = ops
            .iter()
            .map(|(op, ret)| match (op, ret) {
                (_, Some(Ret::GetOk(v) | Ret::CasFailed(v))) => Some(v),
                (Op::Cas { expect, .. } | Op::CasDelete { expect }, Some(Ret::CasOk)) => {
                    Some(expect)
                }
                _ => None,
            })
            .collect();
        let mut count = HashMap::new();
        for v in need.iter().flatten() {
            *count.entry(*v).or_default() += 1;
        }
        let absence_recurs = ops.iter().any(|(op, _)| op.deletes());
        Awaited {
            need,
            count,
            absence_recurs,
        }
    }

    fn linearize(&mut self, op: usize) {
        if let Some(v) = self.need[op]
            && let Some(n) = self.count.get_mut(v)
        {
            *n -= 1;
        }
    }

    fn undo(&mut self, op: usize) {
        if let Some(v) = self.need[op]
            && let Some(n) = self.count.get_mut(v)
        {
            *n += 1;
        }
    }

    fn awaits(&self, register: &CasRegister) -> bool {
        if register.0.is_none() && self.absence_recurs {
            return false;
        }
        self.count.get(&register.0).is_some_and(|n| *n > 0)
    }
}
