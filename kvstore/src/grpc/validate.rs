//! Request checks made before anything is proposed, with etcd's errors: empty keys,
//! conflicting flags, too many transaction operations, duplicate keys in a transaction.

use std::collections::HashSet;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::mvcc::KeyRange;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};

pub fn range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::InvalidArgument(
            "etcdserver: value is provided".into(),
        ));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::InvalidArgument(
            "etcdserver: lease is provided".into(),
        ));
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn txn(t: &TxnRequest, max_ops: usize) -> Result<()> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(Error::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(Error::EmptyKey);
        }
    }
    for ops in [&t.success, &t.failure] {
        for op in ops.iter() {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => range(r)?,
                Some(request_op::Request::RequestPut(p)) => put(p)?,
                Some(request_op::Request::RequestDeleteRange(d)) => delete_range(d)?,
                Some(request_op::Request::RequestTxn(inner)) => txn(inner, max_ops)?,
                None => {}
            }
        }
        check_intervals(ops)?;
    }
    Ok(())
}

/// A branch may not put one key twice, nor put a key it also deletes. A nested
/// transaction's branches count against the outer operations (either may run), but not
/// against each other (only one runs). etcd's `checkIntervals`.
fn check_intervals(ops: &[RequestOp]) -> Result<()> {
    intervals(ops).map(|_| ())
}

/// The keys put and the ranges deleted by `ops`, nested transactions included.
fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some(KeyRange::new(&d.key, &d.range_end))
            }
            _ => None,
        })
        .collect();
    let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
