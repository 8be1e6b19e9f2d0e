//! The replicated alarm list (etcd's alarm store) and what an active alarm refuses.
//!
//! An alarm is a (member id, type) pair. It changes only by applying a committed Alarm
//! ACTIVATE or DEACTIVATE entry, so every member holds the same list; it is persisted with the
//! state machine (under one key, written in the same batch as the applied index) and travels in
//! snapshots. Its effect is decided here, in apply, as etcd 3.4's capped and corrupt appliers
//! decide it, so every member refuses the same committed requests:
//!
//! - NOSPACE (any member's): Put, LeaseGrant, and a Txn with a put among its top-level success
//!   or failure operations (etcd's `costTxn`, which does not look into nested txns) fail with
//!   `etcdserver: mvcc: database space exceeded`. Ranges, deletes, compactions, lease revokes
//!   and keep-alives go on, so an operator can make room and then disarm.
//! - CORRUPT: every write (Put, DeleteRange, Txn that writes, Compaction, LeaseGrant,
//!   LeaseRevoke) fails with `etcdserver: corrupt cluster`. Reads go on: etcd serves ranges
//!   and read-only txns without its applier.
//!
//! A DEACTIVATE lifts the effect as soon as it is applied. This list is the one place an
//! alarm lives: a quota or corruption check (issue 17) raises its alarm by proposing an
//! ACTIVATE with its own member id ([`crate::replica::Replica::alarm`]), as etcd's quota
//! check does, and never refuses writes by itself.
//!
//! One difference from etcd: etcd swaps its applier when an alarm is raised or lifted, so
//! raising NOSPACE while CORRUPT is active (or lifting one of the two) forgets the other's
//! effect until a restart; here the effect always follows the list, as etcd's is after a
//! restart (CORRUPT checked first).

use std::collections::BTreeSet;

use prost::Message;

use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, RequestOp, TxnRequest,
    alarm_request::AlarmAction, request_op,
};
use crate::proto::kvstorepb::{StoredAlarms, internal_request};

/// The alarm list: (member id, alarm type as on the wire), sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Alarms {
    set: BTreeSet<(u64, i32)>,
}

impl Alarms {
    /// The list stored in `backend` (empty if none was ever stored).
    pub fn load(backend: &dyn Backend) -> Result<Alarms> {
        match backend.get(keys::ALARMS)? {
            Some(b) => Ok(Alarms::from_stored(StoredAlarms::decode(b.as_slice())?)),
            None => Ok(Alarms::default()),
        }
    }

    pub fn from_stored(s: StoredAlarms) -> Alarms {
        Alarms {
            set: s.alarms.iter().map(|a| (a.member_id, a.alarm)).collect(),
        }
    }

    pub fn to_stored(&self) -> StoredAlarms {
        StoredAlarms {
            alarms: self.get(AlarmType::None as i32),
        }
    }

    /// Adds the list to `batch`.
    pub fn persist(&self, batch: &mut WriteBatch) {
        batch.put(keys::ALARMS, self.to_stored().encode_to_vec());
    }

    /// The alarms of type `alarm`; every alarm for NONE (etcd's `AlarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.set
            .iter()
            .filter(|&&(_, t)| alarm == AlarmType::None as i32 || t == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn active(&self, alarm: AlarmType) -> bool {
        self.set.iter().any(|&(_, t)| t == alarm as i32)
    }

    /// Applies an Alarm request as etcd 3.4's `applierV3backend.Alarm` does: GET lists the
    /// alarms of the type asked (all for NONE); ACTIVATE answers the alarm, also one already
    /// active; DEACTIVATE answers the alarm it lifted, nothing if it was not active. Any member
    /// id and type is taken, as etcd takes it. Returns the answer and whether the list changed
    /// (the caller then persists it).
    pub fn apply(&mut self, r: &AlarmRequest) -> (AlarmResponse, bool) {
        let key = (r.member_id, r.alarm);
        let this = AlarmMember {
            member_id: r.member_id,
            alarm: r.alarm,
        };
        let (alarms, changed) = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => (self.get(r.alarm), false),
            Ok(AlarmAction::Activate) => (vec![this], self.set.insert(key)),
            Ok(AlarmAction::Deactivate) => {
                if self.set.remove(&key) {
                    (vec![this], true)
                } else {
                    (Vec::new(), false)
                }
            }
            // Refused before it is proposed; an entry with one changes nothing.
            Err(_) => (Vec::new(), false),
        };
        if changed {
            let alarm = compact_text(&this);
            if r.action == AlarmAction::Activate as i32 {
                tracing::warn!(%alarm, "alarm raised");
            } else {
                tracing::info!(%alarm, "alarm disarmed");
            }
        }
        (
            AlarmResponse {
                header: None,
                alarms,
            },
            changed,
        )
    }

    /// Refuses `request` if an active alarm forbids it (see the module doc).
    pub fn check(&self, request: &internal_request::Request) -> Result<()> {
        use internal_request::Request;
        if self.active(AlarmType::Corrupt) {
            let writes = match request {
                Request::Put(_)
                | Request::DeleteRange(_)
                | Request::Compaction(_)
                | Request::LeaseGrant(_)
                | Request::LeaseRevoke(_) => true,
                Request::Txn(t) => !txn_read_only(t),
                // etcd's corrupt applier lets membership, alarm and auth requests through.
                _ => false,
            };
            if writes {
                return Err(Error::CorruptCluster);
            }
        }
        if self.active(AlarmType::Nospace) {
            let grows = match request {
                Request::Put(_) | Request::LeaseGrant(_) => true,
                Request::Txn(t) => t.success.iter().chain(&t.failure).any(is_put),
                _ => false,
            };
            if grows {
                return Err(Error::NoSpace);
            }
        }
        Ok(())
    }
}

fn is_put(op: &RequestOp) -> bool {
    matches!(op.request, Some(request_op::Request::RequestPut(_)))
}

/// etcd's `isTxnReadonly`: only ranges, nested txns included.
fn txn_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_read_only(t),
            _ => false,
        })
}

/// An alarm as etcd prints it in `Status.errors` and its logs: the gogo-protobuf compact text
/// of `AlarmMember`, non-default fields each followed by a space
/// (`memberID:13668033151171901709 alarm:NOSPACE `).
pub fn compact_text(a: &AlarmMember) -> String {
    let mut s = String::new();
    if a.member_id != 0 {
        s.push_str(&format!("memberID:{} ", a.member_id));
    }
    if a.alarm != 0 {
        match AlarmType::try_from(a.alarm) {
            Ok(t) => s.push_str(&format!("alarm:{} ", t.as_str_name())),
            Err(_) => s.push_str(&format!("alarm:{} ", a.alarm)),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{
        DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    };
    use internal_request::Request;

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    fn member(member_id: u64, alarm: AlarmType) -> AlarmMember {
        AlarmMember {
            member_id,
            alarm: alarm as i32,
        }
    }

    #[test]
    fn activate_get_deactivate_as_etcd_answers() {
        let mut a = Alarms::default();
        let (r, changed) = a.apply(&req(AlarmAction::Activate, 7, AlarmType::Nospace));
        assert!(changed);
        assert_eq!(r.alarms, vec![member(7, AlarmType::Nospace)]);
        // Again: the same answer, nothing changes.
        let (r, changed) = a.apply(&req(AlarmAction::Activate, 7, AlarmType::Nospace));
        assert!(!changed);
        assert_eq!(r.alarms, vec![member(7, AlarmType::Nospace)]);
        a.apply(&req(AlarmAction::Activate, 3, AlarmType::Corrupt));
        // GET NONE lists all; GET of a type lists that type.
        let (all, changed) = a.apply(&req(AlarmAction::Get, 0, AlarmType::None));
        assert!(!changed);
        assert_eq!(
            all.alarms,
            vec![member(3, AlarmType::Corrupt), member(7, AlarmType::Nospace)]
        );
        let (nospace, _) = a.apply(&req(AlarmAction::Get, 0, AlarmType::Nospace));
        assert_eq!(nospace.alarms, vec![member(7, AlarmType::Nospace)]);
        // DEACTIVATE answers what it lifted; an inactive one answers nothing.
        let (r, changed) = a.apply(&req(AlarmAction::Deactivate, 7, AlarmType::Corrupt));
        assert!(!changed && r.alarms.is_empty());
        let (r, changed) = a.apply(&req(AlarmAction::Deactivate, 7, AlarmType::Nospace));
        assert!(changed);
        assert_eq!(r.alarms, vec![member(7, AlarmType::Nospace)]);
        assert_eq!(Alarms::from_stored(a.to_stored()), a);
        // An unknown action changes nothing.
        let (r, changed) = a.apply(&AlarmRequest {
            action: 9,
            member_id: 3,
            alarm: AlarmType::Corrupt as i32,
        });
        assert!(!changed && r.alarms.is_empty());
        assert_eq!(a.get(AlarmType::None as i32).len(), 1);
    }

    fn put() -> Request {
        Request::Put(PutRequest {
            key: "k".into(),
            ..Default::default()
        })
    }

    fn txn(success: Vec<request_op::Request>, failure: Vec<request_op::Request>) -> Request {
        let ops = |v: Vec<request_op::Request>| {
            v.into_iter()
                .map(|r| RequestOp { request: Some(r) })
                .collect()
        };
        Request::Txn(TxnRequest {
            compare: Vec::new(),
            success: ops(success),
            failure: ops(failure),
        })
    }

    #[test]
    fn nospace_refuses_what_grows_the_store() {
        let mut a = Alarms::default();
        a.apply(&req(AlarmAction::Activate, 1, AlarmType::Nospace));
        let range = || request_op::Request::RequestRange(RangeRequest::default());
        let del = || request_op::Request::RequestDeleteRange(DeleteRangeRequest::default());
        let put_op = || request_op::Request::RequestPut(PutRequest::default());
        for refused in [
            put(),
            Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 1 }),
            txn(vec![put_op()], vec![]),
            // A put in the branch that does not run still counts (etcd's costTxn).
            txn(vec![range()], vec![put_op()]),
        ] {
            assert!(
                matches!(a.check(&refused), Err(Error::NoSpace)),
                "{refused:?}"
            );
        }
        let nested_put = request_op::Request::RequestTxn(TxnRequest {
            success: vec![RequestOp {
                request: Some(put_op()),
            }],
            ..Default::default()
        });
        for allowed in [
            Request::DeleteRange(DeleteRangeRequest::default()),
            Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
            txn(vec![range(), del()], vec![del()]),
            // etcd 3.4's costTxn does not look into nested txns.
            txn(vec![nested_put], vec![]),
            Request::Alarm(req(AlarmAction::Deactivate, 1, AlarmType::Nospace)),
        ] {
            assert!(a.check(&allowed).is_ok(), "{allowed:?}");
        }
        a.apply(&req(AlarmAction::Deactivate, 1, AlarmType::Nospace));
        assert!(a.check(&put()).is_ok());
    }

    #[test]
    fn corrupt_refuses_every_write() {
        let mut a = Alarms::default();
        a.apply(&req(AlarmAction::Activate, 1, AlarmType::Nospace));
        a.apply(&req(AlarmAction::Activate, 2, AlarmType::Corrupt));
        let range = || request_op::Request::RequestRange(RangeRequest::default());
        let del = || request_op::Request::RequestDeleteRange(DeleteRangeRequest::default());
        for refused in [
            put(),
            Request::DeleteRange(DeleteRangeRequest::default()),
            Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
            Request::Compaction(Default::default()),
            txn(vec![range()], vec![del()]),
        ] {
            assert!(
                matches!(a.check(&refused), Err(Error::CorruptCluster)),
                "{refused:?}"
            );
        }
        let nested_range = request_op::Request::RequestTxn(TxnRequest {
            success: vec![RequestOp {
                request: Some(range()),
            }],
            ..Default::default()
        });
        assert!(a.check(&txn(vec![range(), nested_range], vec![])).is_ok());
        assert!(
            a.check(&Request::Alarm(req(
                AlarmAction::Deactivate,
                2,
                AlarmType::Corrupt
            )))
            .is_ok()
        );
        a.apply(&req(AlarmAction::Deactivate, 2, AlarmType::Corrupt));
        assert_eq!(a.get(AlarmType::Corrupt as i32), Vec::new());
        // NOSPACE is still active and still refuses puts.
        assert!(matches!(a.check(&put()), Err(Error::NoSpace)));
    }

    #[test]
    fn compact_text_as_etcd_prints_it() {
        assert_eq!(
            compact_text(&member(13668033151171901709, AlarmType::Nospace)),
            "memberID:13668033151171901709 alarm:NOSPACE "
        );
        assert_eq!(compact_text(&member(5, AlarmType::None)), "memberID:5 ");
        assert_eq!(
            compact_text(&AlarmMember {
                member_id: 0,
                alarm: 9
            }),
            "alarm:9 "
        );
    }
}
