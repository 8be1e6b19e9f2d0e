//! One user's permissions merged over their roles (etcd's range permission cache), and the
//! question every check asks of them: does the union of this user's READ (or WRITE) ranges
//! cover this key, or all of this range?
//!
//! A permission is on one key (`range_end` empty), on `[key, range_end)`, or on every key from
//! `key` on (`range_end` "\0"), as etcd stores them. A request is asked the same way: a key
//! alone needs a permission that contains it; a range needs ranges that together cover it
//! without a gap (etcd's `adt` interval tree `Contains`).

use crate::proto::authpb::{Permission, permission};

/// Where a range ends: before a key, or at the end of the keyspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Before(Vec<u8>),
    Never,
}

/// A half-open key interval `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: End,
}

impl Interval {
    /// The interval of a permission or a request: one key, a range, or from a key on.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                End::Before(next)
            }
            [0] => End::Never,
            end => End::Before(end.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }

    fn contains_key(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key
            && match &self.end {
                End::Before(e) => key < e.as_slice(),
                End::Never => true,
            }
    }
}

/// What one user may do, merged over all of their roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPerms {
    /// Sorted by start.
    read: Vec<Interval>,
    write: Vec<Interval>,
}

/// Which kind of access a check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl UserPerms {
    /// Merges `perms` (all the permissions of all the user's roles).
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> UserPerms {
        let mut u = UserPerms::default();
        for p in perms {
            let ivl = Interval::of(&p.key, &p.range_end);
            match permission::Type::try_from(p.perm_type) {
                Ok(permission::Type::Read) => u.read.push(ivl),
                Ok(permission::Type::Write) => u.write.push(ivl),
                Ok(permission::Type::Readwrite) => {
                    u.read.push(ivl.clone());
                    u.write.push(ivl);
                }
                // An unknown type grants nothing.
                Err(_) => {}
            }
        }
        u.read.sort_by(|a, b| a.start.cmp(&b.start));
        u.write.sort_by(|a, b| a.start.cmp(&b.start));
        u
    }

    /// Whether the user may `access` the key `key` (range_end empty) or the range
    /// `[key, range_end)` ("\0": every key from `key` on).
    pub fn allows(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let ivls = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        let want = Interval::of(key, range_end);
        let empty = match &want.end {
            End::Before(e) => e.as_slice() <= key,
            End::Never => false,
        };
        if range_end.is_empty() || empty {
            // One key (or a range with nothing in it, asked as its first key).
            return ivls.iter().any(|i| i.contains_key(key));
        }
        // Walk the ranges in order of start, extending the covered prefix of `want`.
        let mut covered = want.start.clone();
        for i in ivls {
            if i.start.as_slice() > covered.as_slice() {
                break;
            }
            if !i.contains_key(&covered) {
                continue;
            }
            match &i.end {
                End::Never => return true,
                End::Before(e) => {
                    if let End::Before(w) = &want.end
                        && e >= w
                    {
                        return true;
                    }
                    covered = e.clone();
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: permission::Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn keys_ranges_and_from_key() {
        use permission::Type::*;
        let u = UserPerms::merge(&[
            perm(Read, "a", ""),
            perm(Readwrite, "foo/", "foo0"),
            perm(Write, "w", "\0"),
        ]);
        assert!(u.allows(Access::Read, b"a", b""));
        assert!(!u.allows(Access::Read, b"a0", b""));
        assert!(!u.allows(Access::Write, b"a", b""));
        assert!(u.allows(Access::Read, b"foo/x", b""));
        assert!(u.allows(Access::Write, b"foo/", b"foo0"));
        assert!(u.allows(Access::Read, b"foo/a", b"foo/b"));
        assert!(!u.allows(Access::Read, b"foo/", b"foo1"));
        assert!(!u.allows(Access::Read, b"fo", b"foo0"));
        assert!(u.allows(Access::Write, b"zzz", b""));
        assert!(u.allows(Access::Write, b"w", b"\0"));
        assert!(u.allows(Access::Write, b"x", b"y"));
        assert!(!u.allows(Access::Read, b"w", b""));
        assert!(!u.allows(Access::Write, b"v", b"\0"));
        // A range over everything needs a permission over everything.
        assert!(!u.allows(Access::Read, b"\0", b"\0"));
    }

    #[test]
    fn ranges_cover_together_only_without_a_gap() {
        use permission::Type::*;
        let u = UserPerms::merge(&[
            perm(Read, "c", "e"),
            perm(Read, "a", "c"),
            perm(Read, "f", "g"),
        ]);
        assert!(u.allows(Access::Read, b"a", b"e"));
        assert!(u.allows(Access::Read, b"b", b"d"));
        assert!(!u.allows(Access::Read, b"a", b"g"));
        assert!(u.allows(Access::Read, b"f", b"g"));
        // A single key's interval [k, k\0) joins a range that starts right after it.
        let v = UserPerms::merge(&[perm(Read, "k", ""), perm(Read, "k\0", "m")]);
        assert!(v.allows(Access::Read, b"k", b"m"));
    }
}
