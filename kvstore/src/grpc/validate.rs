//! Request checks made before anything is proposed, with etcd's errors: empty keys,
//! conflicting flags, too many transaction operations, duplicate keys in a transaction.

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

/// A branch may not put one key twice, nor put a key it also deletes (nested
/// transactions included, as etcd checks).
fn check_intervals(ops: &[RequestOp]) -> Result<()> {
    let mut puts: Vec<&[u8]> = Vec::new();
    let mut dels: Vec<KeyRange> = Vec::new();
    collect(ops, &mut puts, &mut dels)?;
    for p in &puts {
        if dels.iter().any(|d| d.contains(p)) {
            return Err(Error::DuplicateKey);
        }
    }
    Ok(())
}

fn collect<'a>(
    ops: &'a [RequestOp],
    puts: &mut Vec<&'a [u8]>,
    dels: &mut Vec<KeyRange>,
) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if puts.contains(&p.key.as_ref()) {
                    return Err(Error::DuplicateKey);
                }
                puts.push(p.key.as_ref());
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                dels.push(KeyRange::new(&d.key, &d.range_end));
            }
            Some(request_op::Request::RequestTxn(t)) => {
                // Either branch of a nested txn may run; each is checked with the outer ops.
                let mut p2 = puts.clone();
                let mut d2 = dels.clone();
                collect(&t.success, &mut p2, &mut d2)?;
                let mut p3 = puts.clone();
                let mut d3 = dels.clone();
                collect(&t.failure, &mut p3, &mut d3)?;
                let (bigger_p, bigger_d) = if p2.len() >= p3.len() {
                    (p2, d2)
                } else {
                    (p3, d3)
                };
                *puts = bigger_p;
                *dels = bigger_d;
            }
            _ => {}
        }
    }
    Ok(())
}
