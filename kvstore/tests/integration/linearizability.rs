//! Linearizability under faults: several clients, spread over the members of a 3-member
//! cluster in network namespaces, run puts, linearizable gets and compare-and-swaps (Txn
//! comparing the value or the mod_revision) on a few keys while members are SIGKILLed and
//! restarted and leaders are partitioned away; the recorded history is then checked per key
//! by a search for a linearization (Wing & Gong's, memoized as Lowe's and porcupine's; see
//! `common::history`). Zero violations allowed. The same code runs against etcd 3.4 and
//! kvstore; the checker itself is shown to reject non-linearizable histories by hand-made
//! ones, and to settle generated histories of thousands of operations in well under a
//! second.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Kind;
use common::history::{Recorder, Verdict};
use common::netns::NetCluster;
use common::traffic::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: usize = 10;
const CLIENTS: usize = 6;
const WORKLOAD: Duration = Duration::from_secs(24);

fn key(k: usize) -> String {
    format!("lin/{k}")
}

/// A client's loop until `stop`: random operations on random keys; after an error it backs
/// off a little (so a dead member does not flood the history with unknown writes) and, if
/// the error left a write's fate unknown, goes on with its next operation while that write
/// may still land (the checker lets an unknown write take effect at any later point).
async fn client_loop(mut c: Client, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let k = key(rng.random_range(0..KEYS));
        let failed = match rng.random_range(0..10) {
            0..=3 => c.get(&k).await,
            4..=6 => c.put(&k).await,
            7..=8 => c.cas(&k, false).await,
            _ => c.cas(&k, true).await,
        };
        let pause = if failed {
            rng.random_range(50..150)
        } else {
            rng.random_range(5..30)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The faults, on a fixed schedule: kill the leader and restart it; isolate the leader and
/// heal; kill one member while another is isolated (no quorum at all) and recover;
/// isolate the leader once more and heal.
async fn nemesis(c: &NetCluster, rng: &mut StdRng) {
    let start = Instant::now();
    let at = |s: f64| async move {
        let t = Duration::from_secs_f64(s);
        tokio::time::sleep(t.saturating_sub(start.elapsed())).await;
    };
    let leader_or_any = |rng: &mut StdRng, l: Option<usize>| l.unwrap_or(rng.random_range(0..3));

    at(2.5).await;
    let l = leader_or_any(rng, c.leader().await);
    eprintln!("nemesis {:?}: kill leader {l}", start.elapsed());
    c.kill(l);
    at(5.5).await;
    eprintln!("nemesis {:?}: restart {l}", start.elapsed());
    c.restart(l);

    at(8.5).await;
    let l = leader_or_any(rng, c.leader().await);
    eprintln!("nemesis {:?}: isolate leader {l}", start.elapsed());
    c.isolate(l);
    at(12.5).await;
    eprintln!("nemesis {:?}: heal", start.elapsed());
    c.heal();

    at(14.5).await;
    let dead = rng.random_range(0..3);
    let cut = (dead + rng.random_range(1..3)) % 3;
    eprintln!("nemesis {:?}: kill {dead}, isolate {cut}", start.elapsed());
    c.kill(dead);
    c.isolate(cut);
    at(17.5).await;
    eprintln!("nemesis {:?}: heal, restart {dead}", start.elapsed());
    c.heal();
    c.restart(dead);

    at(20.0).await;
    let l = leader_or_any(rng, c.leader().await);
    eprintln!("nemesis {:?}: isolate leader {l}", start.elapsed());
    c.isolate(l);
    at(22.5).await;
    eprintln!("nemesis {:?}: heal", start.elapsed());
    c.heal();
}

fn linearizable_under_faults(kind: Kind) {
    let c = NetCluster::start(kind, 3);
    let seed: u64 = rand::random();
    eprintln!("{kind:?}: seed {seed}");
    let rec = Arc::new(Recorder::default());
    c.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..CLIENTS {
            let client = Client::new(
                id,
                c.channel(id % 3, Duration::from_millis(1500)),
                rec.clone(),
            );
            tasks.push(tokio::spawn(client_loop(
                client,
                seed.wrapping_add(id as u64),
                stop.clone(),
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        nemesis(&c, &mut rng).await;
        tokio::time::sleep(WORKLOAD.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
    });

    // Recovery: every member back and healthy, then a final linearizable read of every key
    // at every member, recorded like any other read: it pins down the unknown writes.
    c.heal();
    for i in 0..3 {
        if !c.is_running(i) {
            c.restart(i);
        }
    }
    for i in 0..3 {
        c.wait_healthy(i, Duration::from_secs(30));
    }
    c.block_on(async {
        for m in 0..3 {
            let mut client = Client::new(
                CLIENTS + m,
                c.channel(m, Duration::from_secs(5)),
                rec.clone(),
            );
            for k in 0..KEYS {
                let deadline = Instant::now() + Duration::from_secs(15);
                while client.get(&key(k)).await {
                    assert!(
                        Instant::now() < deadline,
                        "{kind:?}: member {m} never served a linearizable read after recovery"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });

    let counts = rec.counts();
    eprintln!("{kind:?}: {counts:?}");
    for (e, n) in rec.errors() {
        eprintln!("{kind:?}: {n:>5} x {e}");
    }
    let reports = rec.check(Duration::from_secs(20));
    let mut bad = Vec::new();
    for r in &reports {
        eprintln!(
            "{kind:?}: {} {:?} ({} unobserved unknown writes pruned): {:?} in {:?}",
            r.key, r.counts, r.pruned, r.verdict, r.elapsed
        );
        if r.verdict != Verdict::Linearizable {
            bad.push(format!("{} {:?}:\n{}", r.key, r.verdict, r.history));
        }
    }
    assert!(
        bad.is_empty(),
        "{kind:?}: {} key(s) not shown linearizable (seed {seed}):\n{}",
        bad.len(),
        bad.join("\n")
    );
    // The history must be worth checking: many completed operations, swaps that won and
    // swaps that lost.
    assert!(
        counts.ok >= 300 && counts.cas_ok >= 10 && counts.cas_failed >= 10,
        "{kind:?}: too little happened to check: {counts:?}"
    );
}

mod on_etcd {
    #[test]
    fn linearizable_under_faults() {
        super::linearizable_under_faults(super::Kind::Etcd);
    }
}

mod on_kvstore {
    #[test]
    fn linearizable_under_faults() {
        super::linearizable_under_faults(super::Kind::Kvstore);
    }
}

/// The checker on hand-made histories: it must accept linearizable ones and reject the
/// anomalies a faulty store would produce; and on large generated ones, where it must
/// settle either way well within its time (stateright's tester, used before, did not
/// settle these in 60 s).
mod checker {
    use super::common::history::{CasRegister, KeyReport, Op, Outcome, Recorder, Ret, Verdict};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::time::Duration;

    fn v(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    /// `(client, op, outcome)`: an invocation if `outcome` is `None`, else the return of
    /// that client's pending operation.
    type Step = (usize, Option<Op>, Option<Outcome>);

    /// Replays `steps` on key "k" and checks them within `deadline`.
    fn report(steps: &[Step], deadline: Duration) -> KeyReport {
        let rec = Recorder::default();
        let mut pending = HashMap::new();
        for (client, op, outcome) in steps {
            match (op, outcome) {
                (Some(op), None) => {
                    pending.insert(*client, rec.invoke(*client, "k", op.clone()));
                }
                (None, Some(o)) => rec.complete(pending[client], o.clone()),
                _ => panic!("a step is an invocation or a return"),
            }
        }
        rec.check(deadline).pop().expect("one key")
    }

    fn verdict(steps: &[Step]) -> bool {
        let r = report(steps, Duration::from_secs(10));
        assert_ne!(r.verdict, Verdict::Inconclusive);
        r.verdict == Verdict::Linearizable
    }

    fn inv(c: usize, op: Op) -> Step {
        (c, Some(op), None)
    }

    fn ret(c: usize, r: Ret) -> Step {
        (c, None, Some(Outcome::Ok(r)))
    }

    fn unknown(c: usize) -> Step {
        (c, None, Some(Outcome::Unknown))
    }

    /// A history that a real register produced: `clients` clients run `ops` operations
    /// (reads, puts, compare-and-swaps from the last value the client saw), each taking
    /// effect at one moment between its invocation and its return, with every other
    /// client's invocations, effects and returns interleaved at random, so nearly all
    /// clients are in flight at once. About one write in forty ends `Unknown`: it takes
    /// effect at some later moment, often tens of operations later, or never.
    fn generated(clients: usize, ops: usize, seed: u64) -> Vec<Step> {
        enum Client {
            Idle,
            Sent(Op),
            Answered(Ret),
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut register = CasRegister::default();
        let mut state: Vec<Client> = (0..clients).map(|_| Client::Idle).collect();
        let mut seen: Vec<Option<String>> = vec![None; clients];
        let mut in_limbo: Vec<Op> = Vec::new();
        let (mut steps, mut sent) = (Vec::new(), 0);
        while sent < ops || state.iter().any(|c| !matches!(c, Client::Idle)) {
            let c = rng.random_range(0..=clients);
            if c == clients {
                // Now and then an unknown write lands late.
                if !in_limbo.is_empty() && rng.random_ratio(1, 20) {
                    let op = in_limbo.swap_remove(rng.random_range(0..in_limbo.len()));
                    register.apply(&op);
                }
                continue;
            }
            state[c] = match std::mem::replace(&mut state[c], Client::Idle) {
                Client::Idle if sent < ops => {
                    sent += 1;
                    let op = match rng.random_range(0..10) {
                        0..=3 => Op::Get,
                        4..=6 => Op::Put(format!("c{c}-{sent}")),
                        _ => Op::Cas {
                            expect: seen[c].clone(),
                            new: format!("c{c}-{sent}"),
                        },
                    };
                    steps.push(inv(c, op.clone()));
                    Client::Sent(op)
                }
                Client::Idle => Client::Idle,
                Client::Sent(op) if op != Op::Get && rng.random_ratio(1, 40) => {
                    steps.push(unknown(c));
                    in_limbo.push(op);
                    Client::Idle
                }
                Client::Sent(op) => {
                    let r = register.apply(&op);
                    seen[c] = register.0.clone();
                    Client::Answered(r)
                }
                Client::Answered(r) => {
                    steps.push(ret(c, r));
                    Client::Idle
                }
            };
        }
        steps
    }

    /// `steps` with one read in the second half made stale: it returns the value of a
    /// completed write that another completed write, invoked after the first returned,
    /// replaced before the read was invoked.
    fn with_a_stale_read(mut steps: Vec<Step>) -> Vec<Step> {
        // Every operation that returned, as (invocation step, return step).
        let mut pending = HashMap::new();
        let mut spans = Vec::new();
        for (i, (client, op, _)) in steps.iter().enumerate() {
            if op.is_some() {
                pending.insert(*client, i);
            } else {
                spans.push((pending[client], i));
            }
        }
        let wrote = |&&(i, r): &&(usize, usize)| match (&steps[i].1, &steps[r].2) {
            (
                Some(Op::Put(v) | Op::Cas { new: v, .. }),
                Some(Outcome::Ok(Ret::PutOk | Ret::CasOk)),
            ) => Some(v.clone()),
            _ => None,
        };
        let read = *spans
            .iter()
            .find(|(i, r)| {
                *i > steps.len() / 2 && matches!(steps[*r].2, Some(Outcome::Ok(Ret::GetOk(_))))
            })
            .expect("a read");
        let later = spans
            .iter()
            .rfind(|s| wrote(s).is_some() && s.1 < read.0)
            .expect("a write before the read");
        let earlier = spans
            .iter()
            .rfind(|s| wrote(s).is_some() && s.1 < later.0)
            .expect("a write before that one");
        let stale = wrote(&earlier);
        steps[read.1].2 = Some(Outcome::Ok(Ret::GetOk(stale)));
        steps
    }

    #[test]
    fn a_large_concurrent_history_is_checked_quickly() {
        for seed in 0..3 {
            let steps = generated(8, 4000, seed);
            let r = report(&steps, Duration::from_secs(2));
            eprintln!(
                "seed {seed}: {:?} ({} pruned): {:?} in {:?}",
                r.counts, r.pruned, r.verdict, r.elapsed
            );
            assert_eq!(r.verdict, Verdict::Linearizable, "seed {seed}");
        }
    }

    #[test]
    fn a_stale_read_in_a_large_history_is_found_quickly() {
        for seed in 0..3 {
            let steps = with_a_stale_read(generated(8, 4000, seed));
            let r = report(&steps, Duration::from_secs(2));
            eprintln!("seed {seed}: {:?} in {:?}", r.verdict, r.elapsed);
            assert_eq!(r.verdict, Verdict::Violation, "seed {seed}");
        }
    }

    #[test]
    fn rejects_a_stale_read() {
        // A write completes, then a later read returns the value from before it.
        let h = [
            inv(0, Op::Put("a".into())),
            ret(0, Ret::PutOk),
            inv(0, Op::Put("b".into())),
            ret(0, Ret::PutOk),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
        ];
        assert!(!verdict(&h), "a stale read must be a violation");
        // The same read overlapping the second write is fine.
        let h = [
            inv(0, Op::Put("a".into())),
            ret(0, Ret::PutOk),
            inv(0, Op::Put("b".into())),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
            ret(0, Ret::PutOk),
        ];
        assert!(verdict(&h));
    }

    #[test]
    fn rejects_reads_going_back_in_time() {
        // Two concurrent writes, both finished; then a reader sees b and, strictly later, a.
        let h = [
            inv(0, Op::Put("a".into())),
            inv(1, Op::Put("b".into())),
            ret(0, Ret::PutOk),
            ret(1, Ret::PutOk),
            inv(2, Op::Get),
            ret(2, Ret::GetOk(v("b"))),
            inv(2, Op::Get),
            ret(2, Ret::GetOk(v("a"))),
        ];
        assert!(!verdict(&h));
        // While the writes are still running, the same reads are fine (b, then a lands).
        let h = [
            inv(0, Op::Put("a".into())),
            inv(1, Op::Put("b".into())),
            inv(2, Op::Get),
            ret(2, Ret::GetOk(v("b"))),
            inv(2, Op::Get),
            ret(2, Ret::GetOk(v("a"))),
            ret(0, Ret::PutOk),
            ret(1, Ret::PutOk),
        ];
        assert!(verdict(&h));
    }

    #[test]
    fn rejects_a_lost_compare_and_swap() {
        // A CAS reported as failed although the key held the expected value.
        let h = [
            inv(0, Op::Put("a".into())),
            ret(0, Ret::PutOk),
            inv(
                1,
                Op::Cas {
                    expect: v("a"),
                    new: "b".into(),
                },
            ),
            ret(1, Ret::CasFailed(v("a"))),
        ];
        assert!(!verdict(&h));
        // Two CAS from the same value cannot both succeed.
        let h = [
            inv(0, Op::Put("a".into())),
            ret(0, Ret::PutOk),
            inv(
                1,
                Op::Cas {
                    expect: v("a"),
                    new: "b".into(),
                },
            ),
            inv(
                2,
                Op::Cas {
                    expect: v("a"),
                    new: "c".into(),
                },
            ),
            ret(1, Ret::CasOk),
            ret(2, Ret::CasOk),
        ];
        assert!(!verdict(&h));
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        // A write of unknown fate later observed: it took effect.
        let h = [
            inv(0, Op::Put("a".into())),
            unknown(0),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
        ];
        assert!(verdict(&h));
        // Never observed: it did not.
        let h = [
            inv(0, Op::Put("a".into())),
            unknown(0),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(None)),
        ];
        assert!(verdict(&h));
        // But once seen, it cannot disappear again.
        let h = [
            inv(0, Op::Put("a".into())),
            unknown(0),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(None)),
        ];
        assert!(!verdict(&h));
        // And a read of a value nobody wrote is always a violation.
        let h = [inv(1, Op::Get), ret(1, Ret::GetOk(v("z")))];
        assert!(!verdict(&h));
    }

    #[test]
    fn a_client_continues_after_an_unknown_write() {
        // Client 0's first write is unknown; it goes on, and its read of its own second
        // write is fine.
        let h = [
            inv(0, Op::Put("a".into())),
            unknown(0),
            inv(0, Op::Put("b".into())),
            ret(0, Ret::PutOk),
            inv(0, Op::Get),
            ret(0, Ret::GetOk(v("b"))),
        ];
        assert!(verdict(&h));
        // The unknown write may land after the second one, but not after a later read
        // that saw the second one and then an even later read that saw it back.
        let h = [
            inv(0, Op::Put("a".into())),
            unknown(0),
            inv(0, Op::Put("b".into())),
            ret(0, Ret::PutOk),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
        ];
        assert!(
            verdict(&h),
            "a delayed unknown write can overwrite a later one"
        );
        let h = [
            inv(0, Op::Put("a".into())),
            unknown(0),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
            inv(0, Op::Put("b".into())),
            ret(0, Ret::PutOk),
            inv(1, Op::Get),
            ret(1, Ret::GetOk(v("a"))),
        ];
        assert!(!verdict(&h), "an unknown write takes effect once at most");
    }
}
