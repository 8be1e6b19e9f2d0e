//! Simple tokens (etcd's default `--auth-token=simple`): opaque strings a member hands out on
//! a successful login and maps back to the user on each request.
//!
//! A login is a raft entry, so every member records the same token when it applies it and a
//! client may use it on any member. The table itself is not replicated state: each member
//! keeps it in memory, drops a token unused for the TTL (`--auth-token-ttl`, etcd's 300 s;
//! each use renews it, as etcd's simple tokens do), and forgets them all on restart or when
//! authentication is disabled. A deleted user's or a changed password's tokens are dropped at
//! once. Clients answered "invalid auth token" log in again, as etcd's do.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

/// etcd's default token TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Letters a token prefix is drawn from, and its length (etcd's).
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const PREFIX_LEN: usize = 16;
/// Past this many live tokens, expired ones are swept on each new login.
const SWEEP_AT: usize = 1024;

#[derive(Debug)]
struct Entry {
    user: String,
    expires: Instant,
}

/// The token table of one member.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    table: Mutex<HashMap<String, Entry>>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new(DEFAULT_TTL)
    }
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh random prefix for a login the member is about to propose.
    pub fn prefix() -> String {
        let mut rng = rand::rng();
        (0..PREFIX_LEN)
            .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
            .collect()
    }

    /// Records `token` for `user` (applying a login).
    pub fn insert(&self, token: String, user: String) {
        let now = Instant::now();
        let mut t = self.table.lock();
        if t.len() >= SWEEP_AT {
            t.retain(|_, e| e.expires > now);
        }
        t.insert(
            token,
            Entry {
                user,
                expires: now + self.ttl,
            },
        );
    }

    /// The user `token` was issued to, renewing it; None if unknown or expired.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut t = self.table.lock();
        match t.get_mut(token) {
            Some(e) if e.expires > now => {
                e.expires = now + self.ttl;
                Some(e.user.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    /// Drops every token of `user`.
    pub fn invalidate(&self, user: &str) {
        self.table.lock().retain(|_, e| e.user != user);
    }

    /// Drops every token.
    pub fn clear(&self) {
        self.table.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_users_expire_and_are_invalidated() {
        let t = Tokens::new(Duration::from_millis(50));
        let p = Tokens::prefix();
        assert_eq!(p.len(), PREFIX_LEN);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        t.insert(format!("{p}.1"), "alice".into());
        t.insert("b.2".into(), "bob".into());
        assert_eq!(t.user(&format!("{p}.1")).as_deref(), Some("alice"));
        assert_eq!(t.user("nope"), None);
        t.invalidate("alice");
        assert_eq!(t.user(&format!("{p}.1")), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(t.user("b.2"), None);
    }
}
