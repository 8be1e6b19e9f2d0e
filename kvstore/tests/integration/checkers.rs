//! The robustness run's checkers on hand-made records: the linearizability checker's model
//! of deletes, compare-and-deletes and leases (`common::history`), and each of etcd's watch
//! guarantees (`common::watch_check`): every check must pass a good record and reject the
//! bad one a faulty store would produce.

use crate::common;

mod history {
    use super::common::history::{Op, Outcome, Recorder, Ret, Verdict};
    use std::collections::HashMap;
    use std::time::Duration;

    fn v(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    /// An invocation by a client, or the return of that client's pending operation.
    #[derive(Clone)]
    enum Step {
        Inv(usize, Op),
        Ret(usize, Outcome),
    }

    fn inv(c: usize, op: Op) -> Step {
        Step::Inv(c, op)
    }

    fn ret(c: usize, r: Ret) -> Step {
        Step::Ret(c, Outcome::Ok(r))
    }

    fn linearizable(steps: &[Step]) -> bool {
        let rec = Recorder::default();
        let mut pending = HashMap::new();
        for s in steps {
            match s {
                Step::Inv(c, op) => {
                    pending.insert(*c, rec.invoke(*c, "k", op.clone()));
                }
                Step::Ret(c, o) => rec.complete(pending[c], o.clone()),
            }
        }
        let r = rec.check(Duration::from_secs(10)).pop().expect("one key");
        assert_ne!(r.verdict, Verdict::Inconclusive);
        r.verdict == Verdict::Linearizable
    }

    fn put(c: usize, s: &str) -> [Step; 2] {
        [inv(c, Op::Put(s.into())), ret(c, Ret::PutOk)]
    }

    fn get(c: usize, s: Option<String>) -> [Step; 2] {
        [inv(c, Op::Get), ret(c, Ret::GetOk(s))]
    }

    #[test]
    fn a_deleted_key_stays_deleted() {
        let good = [
            put(0, "a"),
            [inv(0, Op::Delete), ret(0, Ret::Deleted(1))],
            get(1, None),
        ];
        assert!(linearizable(&good.concat()));
        let stale = [
            put(0, "a"),
            [inv(0, Op::Delete), ret(0, Ret::Deleted(1))],
            get(1, v("a")),
        ];
        assert!(!linearizable(&stale.concat()), "a read of a deleted value");
        // A key can come back after a delete, with a new value, and be read absent before.
        let back = [
            put(0, "a"),
            [inv(0, Op::Delete), ret(0, Ret::Deleted(1))],
            get(1, None),
            put(0, "b"),
            get(1, v("b")),
        ];
        assert!(linearizable(&back.concat()));
    }

    #[test]
    fn a_delete_counts_what_it_deleted() {
        let none = [[inv(0, Op::Delete), ret(0, Ret::Deleted(1))]];
        assert!(
            !linearizable(&none.concat()),
            "deleted a key that never existed"
        );
        let twice = [
            put(0, "a"),
            [inv(0, Op::Delete), ret(0, Ret::Deleted(1))],
            [inv(1, Op::Delete), ret(1, Ret::Deleted(1))],
        ];
        assert!(
            !linearizable(&twice.concat()),
            "deleted the same value twice"
        );
        let concurrent = [
            inv(0, Op::Delete),
            inv(1, Op::Put("a".into())),
            ret(1, Ret::PutOk),
            ret(0, Ret::Deleted(1)),
        ];
        assert!(linearizable(&concurrent), "a delete overlapping the put");
    }

    #[test]
    fn a_compare_and_delete_compares() {
        let cas = |expect: &str| Op::CasDelete { expect: v(expect) };
        let good = [
            put(0, "a"),
            [inv(0, cas("a")), ret(0, Ret::CasOk)],
            get(1, None),
        ];
        assert!(linearizable(&good.concat()));
        let wrong = [put(0, "a"), [inv(0, cas("b")), ret(0, Ret::CasOk)]];
        assert!(
            !linearizable(&wrong.concat()),
            "deleted though the value differed"
        );
        let lost = [
            put(0, "a"),
            [inv(0, cas("a")), ret(0, Ret::CasOk)],
            get(1, v("a")),
        ];
        assert!(
            !linearizable(&lost.concat()),
            "a successful compare-and-delete undone"
        );
    }

    #[test]
    fn a_revoked_lease_takes_its_key() {
        let leased = |c: usize, s: &str| {
            [
                inv(
                    c,
                    Op::PutLease {
                        value: s.into(),
                        lease: 7,
                    },
                ),
                ret(c, Ret::PutOk),
            ]
        };
        let revoke = |c: usize| [inv(c, Op::Revoke(7)), ret(c, Ret::Revoked)];
        assert!(linearizable(
            &[leased(0, "a"), revoke(0), get(1, None)].concat()
        ));
        assert!(
            !linearizable(&[leased(0, "a"), revoke(0), get(1, v("a"))].concat()),
            "the key outlived its lease's revoke"
        );
        // A put without the lease detaches the key: the revoke leaves it.
        assert!(linearizable(
            &[leased(0, "a"), put(1, "b"), revoke(0), get(1, v("b"))].concat()
        ));
        assert!(
            !linearizable(&[leased(0, "a"), put(1, "b"), revoke(0), get(1, None)].concat()),
            "a revoke took a key no longer attached to its lease"
        );
        // The revoke of another lease leaves it.
        let other = [inv(0, Op::Revoke(8)), ret(0, Ret::Revoked)];
        assert!(!linearizable(
            &[leased(0, "a"), other, get(1, None)].concat()
        ));
    }

    #[test]
    fn an_unknown_delete_may_have_happened() {
        let h = [
            put(0, "a"),
            [inv(0, Op::Delete), Step::Ret(0, Outcome::Unknown)],
            get(1, None),
            get(1, None),
        ];
        assert!(linearizable(&h.concat()));
        // Not undone once seen.
        let h = [
            put(0, "a"),
            [inv(0, Op::Delete), Step::Ret(0, Outcome::Unknown)],
            get(1, None),
            get(1, v("a")),
        ];
        assert!(!linearizable(&h.concat()));
    }

    /// The unavailability figure: the time between two successes, a failure in between
    /// not ending the gap.
    #[test]
    fn gaps_run_from_success_to_success() {
        let rec = Recorder::default();
        let op = |outcome: Outcome| {
            let id = rec.invoke(0, "k", Op::Put("x".into()));
            rec.complete(id, outcome);
        };
        op(Outcome::Ok(Ret::PutOk));
        op(Outcome::Ok(Ret::PutOk));
        std::thread::sleep(Duration::from_millis(60));
        op(Outcome::Failed);
        std::thread::sleep(Duration::from_millis(60));
        op(Outcome::Ok(Ret::PutOk));
        let (longest, over) = rec.gaps(Duration::from_millis(100));
        assert!(longest >= Duration::from_millis(120), "{longest:?}");
        assert_eq!(over, 1);
        assert_eq!(rec.returns().iter().filter(|r| !r.1).count(), 1);
    }
}

mod watch {
    use super::common::history::{Acked, Change};
    use super::common::watch_check::{Event, Stream, WatchLog, check};
    use std::collections::HashSet;

    fn ev(rev: i64, key: &str, value: &str) -> Event {
        Event {
            rev,
            key: key.into(),
            change: Change::Put(value.into()),
        }
    }

    fn del(rev: i64, key: &str) -> Event {
        Event {
            rev,
            key: key.into(),
            change: Change::Delete,
        }
    }

    fn log(name: &str, streams: Vec<(i64, Vec<Vec<Event>>)>) -> WatchLog {
        WatchLog {
            name: name.into(),
            streams: streams
                .into_iter()
                .enumerate()
                .map(|(member, (from, responses))| Stream {
                    member,
                    from,
                    responses,
                    progress: Vec::new(),
                })
                .collect(),
        }
    }

    fn written() -> HashSet<String> {
        ["a1", "b1", "a2", "c1", "c2"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Revisions 2..=5: a put, a two-key transaction, a delete, a put.
    fn good() -> Vec<Vec<Event>> {
        vec![
            vec![ev(2, "a", "a1")],
            vec![ev(3, "b", "b1"), ev(3, "c", "c1")],
            vec![del(4, "b"), ev(5, "a", "a2")],
        ]
    }

    fn acked() -> Vec<Acked> {
        vec![
            Acked {
                key: "a".into(),
                rev: 2,
                change: Change::Put("a1".into()),
            },
            Acked {
                key: "c".into(),
                rev: 3,
                change: Change::Put("c1".into()),
            },
            Acked {
                key: "b".into(),
                rev: 4,
                change: Change::Delete,
            },
        ]
    }

    fn violations(logs: &[WatchLog]) -> Vec<String> {
        check(logs, &acked(), &written(), 5)
    }

    fn rejected(logs: &[WatchLog], what: &str) {
        let v = violations(logs);
        eprintln!("{v:?}");
        assert!(
            v.iter().any(|m| m.contains(what)),
            "expected a violation saying {what:?}, got {v:?}"
        );
    }

    #[test]
    fn accepts_a_good_record() {
        let one = log("w0", vec![(2, good())]);
        // Resumed after revision 3 on another member, from 4.
        let mut first = good();
        let rest = first.split_off(2);
        let resumed = log("w1", vec![(2, first), (4, rest)]);
        // Joined late: from revision 4 only.
        let late = log("w2", vec![(4, vec![vec![del(4, "b"), ev(5, "a", "a2")]])]);
        assert_eq!(violations(&[one, resumed, late]), Vec::<String>::new());
    }

    #[test]
    fn rejects_events_out_of_order() {
        let mut r = good();
        r.swap(0, 1);
        rejected(&[log("w", vec![(2, r)])], "arrived after revision");
    }

    #[test]
    fn rejects_a_duplicate() {
        let mut r = good();
        r.push(vec![ev(5, "a", "a2")]);
        rejected(&[log("w", vec![(2, r)])], "arrived twice");
    }

    #[test]
    fn rejects_a_gap() {
        let mut r = good();
        r.remove(1);
        rejected(&[log("w", vec![(2, r)])], "missing");
    }

    #[test]
    fn rejects_a_revision_split_over_responses() {
        let mut r = good();
        r[1] = vec![ev(3, "b", "b1")];
        r.insert(2, vec![ev(3, "c", "c1")]);
        rejected(&[log("w", vec![(2, r)])], "split over two responses");
    }

    #[test]
    fn rejects_a_resume_from_the_wrong_revision() {
        // Resumed from 5 after seeing up to 3: revision 4 lost in between.
        let mut first = good();
        let mut rest = first.split_off(2);
        rest[0].remove(0);
        rejected(
            &[log("w", vec![(2, first), (5, rest)])],
            "resumed from revision 5",
        );
        // A resumed stream that replays what was seen before.
        let mut first = good();
        let rest = first.split_off(1);
        let mut replay = vec![vec![ev(2, "a", "a1")]];
        replay.extend(rest);
        rejected(&[log("w", vec![(2, first), (3, replay)])], "arrived twice");
    }

    #[test]
    fn rejects_a_lost_acknowledged_write() {
        // Revision 3 carried only b: the acknowledged put of c at 3 is missing.
        let mut r = good();
        r[1] = vec![ev(3, "b", "b1")];
        rejected(&[log("w", vec![(2, r)])], "never arrived");
        // Or it arrived with another value.
        let mut r = good();
        r[0] = vec![ev(2, "a", "a2")];
        rejected(&[log("w", vec![(2, r)])], "arrived as");
    }

    #[test]
    fn rejects_a_value_nobody_wrote() {
        let mut r = good();
        r[2][1] = ev(5, "a", "zz");
        rejected(&[log("w", vec![(2, r)])], "which no client wrote");
    }

    #[test]
    fn rejects_watchers_that_disagree() {
        let mut r = good();
        r[2][1] = ev(5, "c", "c2");
        rejected(
            &[log("w0", vec![(2, good())]), log("w1", vec![(2, r)])],
            "w0 saw",
        );
    }

    #[test]
    fn rejects_a_progress_notification_that_lies() {
        // After two responses (revisions 2 and 3) a notification at 3 is true; at 4 it is not.
        let mut w = log("w", vec![(2, good())]);
        w.streams[0].progress = vec![(0, 1), (2, 3), (3, 5)];
        assert_eq!(violations(&[w.clone()]), Vec::<String>::new());
        w.streams[0].progress = vec![(2, 4)];
        rejected(&[w], "progress notification at revision 4");
    }

    #[test]
    fn rejects_a_watcher_that_fell_behind() {
        let mut r = good();
        r.pop();
        let v = check(&[log("w", vec![(2, r)])], &acked()[..2], &written(), 5);
        assert!(v.iter().any(|m| m.contains("the run ended at 5")), "{v:?}");
    }
}
