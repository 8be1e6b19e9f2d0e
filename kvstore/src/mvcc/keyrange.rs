//! The etcd v3 key-range conventions: an empty `range_end` names one key, `"\0"` means
//! every key from `key` on, and any other `range_end` is the exclusive upper bound.

use std::ops::Bound;

use bytes::Bytes;

/// Lower and upper bound of a key range, as `BTreeMap::range` takes them.
pub type Bounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A half-open interval of keys, as etcd requests spell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Bytes),
    /// `[start, end)`; `end == None` means unbounded.
    Span { start: Bytes, end: Option<Bytes> },
}

impl KeyRange {
    /// Interprets an etcd `(key, range_end)` pair.
    pub fn new(key: &Bytes, range_end: &Bytes) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if range_end.as_ref() == [0] {
            KeyRange::Span {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange::Span {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_ref() == key,
            KeyRange::Span { start, end } => {
                key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref())
            }
        }
    }

    /// The range as map bounds, or `None` when it is empty (end at or below start).
    pub fn bounds(&self) -> Option<Bounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k.as_ref()), Bound::Included(k.as_ref()))),
            KeyRange::Span { start, end: None } => {
                Some((Bound::Included(start.as_ref()), Bound::Unbounded))
            }
            KeyRange::Span {
                start,
                end: Some(end),
            } => {
                if end.as_ref() <= start.as_ref() {
                    None
                } else {
                    Some((
                        Bound::Included(start.as_ref()),
                        Bound::Excluded(end.as_ref()),
                    ))
                }
            }
        }
    }

    /// Whether two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let (a_lo, a_hi) = match self.bounds() {
            Some(b) => b,
            None => return false,
        };
        let (b_lo, b_hi) = match other.bounds() {
            Some(b) => b,
            None => return false,
        };
        below_upper(a_lo, b_hi) && below_upper(b_lo, a_hi)
    }
}

/// Whether a lower bound `lo` lies below the upper bound `hi` (the two intervals may meet).
fn below_upper(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    let lo = match lo {
        Bound::Included(k) => k,
        _ => return true,
    };
    match hi {
        Bound::Unbounded => true,
        Bound::Included(h) => lo <= h,
        Bound::Excluded(h) => lo < h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(k: &str, e: &str) -> KeyRange {
        KeyRange::new(
            &Bytes::copy_from_slice(k.as_bytes()),
            &Bytes::copy_from_slice(e.as_bytes()),
        )
    }

    #[test]
    fn conventions() {
        assert!(r("a", "").contains(b"a"));
        assert!(!r("a", "").contains(b"ab"));
        assert!(r("a", "b").contains(b"azz"));
        assert!(!r("a", "b").contains(b"b"));
        assert!(r("a", "\0").contains(b"zzz"));
        assert!(r("\0", "\0").contains(b"\x01"));
        assert!(r("b", "a").bounds().is_none());
    }

    #[test]
    fn overlap() {
        assert!(r("a", "c").overlaps(&r("b", "")));
        assert!(!r("a", "b").overlaps(&r("b", "")));
        assert!(r("a", "\0").overlaps(&r("zz", "")));
        assert!(!r("a", "").overlaps(&r("b", "")));
        assert!(r("a", "").overlaps(&r("a", "")));
    }
}
