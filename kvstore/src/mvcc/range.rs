//! Range reads with etcd's full semantics: limit with `more` and `count`, historical
//! revisions, sort order and target, keys-only, count-only and the revision filters.

use std::cmp::Ordering;

use super::{KeyRange, Mvcc};
use crate::error::Result;
use crate::proto::etcdserverpb::RangeRequest;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::mvccpb::KeyValue;

/// The answer to a range, without its header.
#[derive(Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

impl Mvcc {
    /// Serves a range request against the keyspace; `default_rev` is the revision read when
    /// the request names none (a transaction passes its own view).
    pub fn range(&self, req: &RangeRequest, default_rev: i64) -> Result<RangeResult> {
        let rev = if req.revision > 0 {
            self.read_revision(req.revision)?
        } else {
            self.read_revision(0)?;
            default_rev
        };
        let range = KeyRange::new(&req.key, &req.range_end);
        let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Sorting or filtering needs every match before the limit applies (as etcd does).
        let fetch_all = order != SortOrder::None || filtered || target != SortTarget::Key;
        let want = if req.limit > 0 && !fetch_all {
            Some(req.limit as usize + 1)
        } else {
            None
        };

        // Values are read only for key-values returned (or sorted by value); counting
        // and keys-only reads are answered from the index alone.
        let values = !req.keys_only || target == SortTarget::Value;
        let mut count = 0i64;
        let mut kvs = Vec::new();
        self.scan_entries(&range, rev, |key, e| {
            count += 1;
            if !req.count_only && want.is_none_or(|w| kvs.len() < w) {
                kvs.push(self.key_value(key, e, values)?);
            }
            Ok(true)
        })?;

        if filtered {
            kvs.retain(|kv| {
                (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_create_revision == 0
                        || kv.create_revision <= req.max_create_revision)
                    && (req.min_create_revision == 0
                        || kv.create_revision >= req.min_create_revision)
            });
        }

        let order = if target != SortTarget::Key && order == SortOrder::None {
            SortOrder::Ascend
        } else {
            order
        };
        if order != SortOrder::None {
            let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| cmp(b, a));
            } else {
                kvs.sort_by(cmp);
            }
        }

        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Default::default();
            }
        }
        Ok(RangeResult { kvs, more, count })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn store() -> Mvcc {
        let mut m = Mvcc::default();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("b", "4")] {
            let mut t = m.write();
            t.put(Bytes::from(k), Bytes::from(v), 0, false)
                .expect("put");
            t.finish();
        }
        m
    }

    fn req(key: &str, end: &str) -> RangeRequest {
        RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
            ..Default::default()
        }
    }

    #[test]
    fn limit_more_count() {
        let m = store();
        let r = m
            .range(
                &RangeRequest {
                    limit: 2,
                    ..req("a", "\0")
                },
                m.current_revision(),
            )
            .expect("range");
        assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
        let r = m
            .range(
                &RangeRequest {
                    limit: 3,
                    ..req("a", "\0")
                },
                m.current_revision(),
            )
            .expect("range");
        assert!(!r.more);
    }

    #[test]
    fn sort_and_history() {
        let m = store();
        let r = m
            .range(
                &RangeRequest {
                    sort_target: SortTarget::Value as i32,
                    sort_order: SortOrder::Descend as i32,
                    limit: 1,
                    ..req("a", "\0")
                },
                m.current_revision(),
            )
            .expect("range");
        assert_eq!(r.kvs[0].key.as_ref(), b"b");
        assert!(r.more);
        let r = m
            .range(
                &RangeRequest {
                    revision: 3,
                    ..req("b", "")
                },
                0,
            )
            .expect("range");
        assert_eq!(r.kvs[0].value.as_ref(), b"1");
        let r = m
            .range(
                &RangeRequest {
                    count_only: true,
                    ..req("a", "c")
                },
                m.current_revision(),
            )
            .expect("range");
        assert_eq!((r.kvs.len(), r.count), (0, 2));
        let r = m
            .range(
                &RangeRequest {
                    min_mod_revision: 4,
                    ..req("a", "\0")
                },
                m.current_revision(),
            )
            .expect("range");
        assert_eq!(r.kvs.len(), 2);
    }
}
