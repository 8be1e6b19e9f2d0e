use super::*;
use crate::proto::etcdserverpb::PutRequest;
use crate::proto::kvstorepb::{InternalRequest, internal_request};
use prost::Message as _;

fn put(id: u64) -> Vec<u8> {
    InternalRequest {
        id,
        request: Some(internal_request::Request::Put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })),
        auth: None,
    }
    .encode_to_vec()
}

fn entry(data: Vec<u8>) -> Entry {
    Entry {
        data: data.into(),
        ..Default::default()
    }
}

fn ids(entries: &[Entry]) -> Vec<Option<u64>> {
    entries.iter().map(entry_request).collect()
}

#[test]
fn the_request_id_is_read_from_the_encoded_request() {
    assert_eq!(request_id(&put(0x1234_5678_9abc)), Some(0x1234_5678_9abc));
    // Field 1 after another field, as any encoder may order them.
    let mut later = vec![0x12, 0x00];
    later.extend([0x08, 0x2a]);
    assert_eq!(request_id(&later), Some(42));
    assert_eq!(request_id(&[]), None);
    assert_eq!(request_id(&[0xff, 0xff, 0xff]), None);
}

#[test]
fn a_forwarded_request_is_sent_again_later_and_later_until_its_caller_gave_up() {
    let t0 = Instant::now();
    let horizon = Duration::from_secs(4);
    let mut f = Forwarded::new(put(1), t0);
    assert!(!f.due(t0 + FIRST_RESEND / 2, horizon));
    assert!(f.due(t0 + FIRST_RESEND, horizon));
    // Twice the wait before the next.
    assert!(!f.due(t0 + FIRST_RESEND * 2, horizon));
    assert!(f.due(t0 + FIRST_RESEND * 3, horizon));
    assert!(!f.due(t0 + FIRST_RESEND * 6, horizon));
    assert!(f.due(t0 + FIRST_RESEND * 7, horizon));
    // Past the horizon, never.
    assert!(!f.due(t0 + horizon, horizon));
    assert!(!f.due(t0 + horizon * 3, horizon));
}

#[test]
fn a_leader_appends_a_forwarded_request_once() {
    let t0 = Instant::now();
    let mut a = Appended::new(Duration::from_secs(6));
    let (first, taken) = a.new_entries(3, vec![entry(put(1)), entry(put(2))], t0);
    assert_eq!(ids(&first), [Some(1), Some(2)]);
    a.record(3, &taken, t0);
    // A copy of 2 sent again, with 3 new; a repeat within the message too.
    let (again, taken) = a.new_entries(
        3,
        vec![entry(put(2)), entry(put(3)), entry(put(3))],
        t0 + Duration::from_millis(400),
    );
    assert_eq!(ids(&again), [Some(3)]);
    a.record(3, &taken, t0);
    assert_eq!(a.len(), 3);
    // Entries that are not client requests always pass.
    let (other, _) = a.new_entries(3, vec![entry(Vec::new()), entry(Vec::new())], t0);
    assert_eq!(other.len(), 2);
}

#[test]
fn what_was_not_taken_is_not_remembered() {
    let t0 = Instant::now();
    let mut a = Appended::new(Duration::from_secs(6));
    // raft refused the proposal (not recorded): the copy sent again is taken.
    let _ = a.new_entries(3, vec![entry(put(1))], t0);
    assert_eq!(ids(&a.new_entries(3, vec![entry(put(1))], t0).0), [Some(1)]);
}

#[test]
fn the_memory_lasts_its_time_and_its_term() {
    let t0 = Instant::now();
    let keep = Duration::from_secs(6);
    let mut a = Appended::new(keep);
    let (_, taken) = a.new_entries(3, vec![entry(put(1))], t0);
    a.record(3, &taken, t0);
    assert!(
        a.new_entries(3, vec![entry(put(1))], t0 + keep / 2)
            .0
            .is_empty()
    );
    assert_eq!(a.new_entries(3, vec![entry(put(1))], t0 + keep).0.len(), 1);
    assert!(a.is_empty());
    let (_, taken) = a.new_entries(3, vec![entry(put(2))], t0);
    a.record(3, &taken, t0);
    // A new term (a new leadership) starts empty; a record for an older term is ignored.
    assert_eq!(a.new_entries(4, vec![entry(put(2))], t0).0.len(), 1);
    a.record(3, &taken, t0);
    assert!(a.is_empty());
}
