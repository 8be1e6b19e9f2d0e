//! The replicated member list: every member's id, name, peer URLs and client URLs.
//! It changes only by applying committed entries (raft conf changes add and remove
//! members; a "publish" entry records a started member's name and client URLs), so every
//! member holds the same list; it is persisted with the state machine and travels in
//! snapshots. A member's peer URLs change by a committed "member update" entry (etcd's
//! MemberUpdate), checked here when applied so every member decides the same. Removed ids are remembered so a removed member can never rejoin by mistake.

use std::collections::BTreeSet;

use prost::Message;

use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::Member;
use crate::proto::kvstorepb::{MemberAttributes, StoredMembers};

/// The member list.
#[derive(Debug, Default, Clone)]
pub struct Members {
    /// Sorted by id.
    list: Vec<Member>,
    removed: BTreeSet<u64>,
}

impl Members {
    /// A list of the given members (the initial cluster).
    pub fn new(members: Vec<Member>) -> Members {
        let mut m = Members::default();
        for member in members {
            m.add(member);
        }
        m
    }

    /// The list stored in `backend`, if any.
    pub fn load(backend: &dyn Backend) -> Result<Option<Members>> {
        let Some(b) = backend.get(keys::MEMBERS)? else {
            return Ok(None);
        };
        Ok(Some(Members::from_stored(StoredMembers::decode(
            b.as_slice(),
        )?)))
    }

    pub fn from_stored(s: StoredMembers) -> Members {
        let mut m = Members::new(s.members);
        m.removed = s.removed.into_iter().collect();
        m
    }

    pub fn to_stored(&self) -> StoredMembers {
        StoredMembers {
            members: self.list.clone(),
            removed: self.removed.iter().copied().collect(),
        }
    }

    /// Adds the list to `batch`.
    pub fn persist(&self, batch: &mut WriteBatch) {
        batch.put(keys::MEMBERS, self.to_stored().encode_to_vec());
    }

    /// Every member, by id.
    pub fn list(&self) -> Vec<Member> {
        self.list.clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.list.iter().map(|m| m.id).collect()
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.list.iter().find(|m| m.id == id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// Adds (or replaces) a member.
    pub fn add(&mut self, member: Member) {
        match self.list.binary_search_by_key(&member.id, |m| m.id) {
            Ok(i) => self.list[i] = member,
            Err(i) => self.list.insert(i, member),
        }
    }

    /// Makes learner `id` a voting member (a no-op for anyone else).
    pub fn promote(&mut self, id: u64) {
        if let Some(m) = self.list.iter_mut().find(|m| m.id == id) {
            m.is_learner = false;
        }
    }

    /// Removes a member for good; false if it was not a member.
    pub fn remove(&mut self, id: u64) -> bool {
        self.removed.insert(id);
        let before = self.list.len();
        self.list.retain(|m| m.id != id);
        before != self.list.len()
    }

    /// Records a started member's name and client URLs.
    pub fn publish(&mut self, attrs: &MemberAttributes) -> Result<()> {
        let m = self
            .list
            .iter_mut()
            .find(|m| m.id == attrs.id)
            .ok_or(Error::MemberNotFound)?;
        m.name = attrs.name.clone();
        m.client_ur_ls = attrs.client_urls.clone();
        Ok(())
    }

    /// Gives member `id` the peer URLs `urls`, as etcd 3.4 checks it when the change is
    /// applied: an unknown (or removed) member is "member not found"; a URL another member
    /// already has is "Peer URLs already exists" (the member's own current URLs may stay).
    /// The URLs' syntax is checked before the change is proposed.
    pub fn update_peer_urls(&mut self, id: u64, urls: &[String]) -> Result<()> {
        let i = self
            .list
            .iter()
            .position(|m| m.id == id)
            .ok_or(Error::MemberNotFound)?;
        if self
            .list
            .iter()
            .any(|m| m.id != id && m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(Error::PeerUrlExists);
        }
        self.list[i].peer_ur_ls = urls.to_vec();
        Ok(())
    }

    /// The member already using one of `urls` as a peer URL.
    pub fn with_peer_url(&self, urls: &[String]) -> Option<&Member> {
        self.list
            .iter()
            .find(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)))
    }

    /// The first peer URL of member `id`.
    pub fn peer_url(&self, id: u64) -> Option<&str> {
        self.get(id)
            .and_then(|m| m.peer_ur_ls.first())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str) -> Member {
        Member {
            id,
            peer_ur_ls: vec![url.into()],
            ..Default::default()
        }
    }

    #[test]
    fn add_publish_remove() {
        let mut m = Members::new(vec![member(3, "http://c"), member(1, "http://a")]);
        assert_eq!(m.ids(), vec![1, 3]);
        assert_eq!(m.with_peer_url(&["http://c".into()]).map(|m| m.id), Some(3));
        m.publish(&MemberAttributes {
            id: 3,
            name: "c".into(),
            client_urls: vec!["http://c:2379".into()],
        })
        .expect("publish");
        assert_eq!(m.get(3).map(|m| m.name.as_str()), Some("c"));
        assert!(m.remove(3));
        assert!(!m.remove(3));
        assert!(m.is_removed(3));
        let back = Members::from_stored(m.to_stored());
        assert_eq!(back.ids(), vec![1]);
        assert!(back.is_removed(3));
    }

    #[test]
    fn update_peer_urls_as_etcd_checks_it() {
        let mut m = Members::new(vec![member(1, "http://a"), member(2, "http://b")]);
        let urls = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Its own URL may stay among the new ones.
        m.update_peer_urls(2, &urls(&["http://b", "http://b2"]))
            .expect("update");
        assert_eq!(
            m.get(2).map(|m| m.peer_ur_ls.clone()),
            Some(urls(&["http://b", "http://b2"]))
        );
        assert_eq!(m.peer_url(2), Some("http://b"));
        // Another member's URL is refused, and nothing changes.
        assert!(matches!(
            m.update_peer_urls(2, &urls(&["http://a"])),
            Err(Error::PeerUrlExists)
        ));
        assert_eq!(
            m.get(1).map(|m| m.peer_ur_ls.clone()),
            Some(urls(&["http://a"]))
        );
        assert!(matches!(
            m.update_peer_urls(9, &urls(&["http://z"])),
            Err(Error::MemberNotFound)
        ));
        assert!(m.remove(1));
        assert!(matches!(
            m.update_peer_urls(1, &urls(&["http://z"])),
            Err(Error::MemberNotFound)
        ));
    }
}
