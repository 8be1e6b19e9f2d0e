//! etcd's `--strict-reconfig-check`: the rules that refuse a membership change which
//! would leave the cluster without a quorum of started members (read from the replicated
//! member list: a member is started once it has published its name) or of members the
//! leader hears from (its record of when each peer last spoke and since when without a
//! gap). The same rules and answers as etcd 3.4's `mayAddMember` / `mayRemoveMember`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::Member;

/// How long a peer must have been heard from without a gap to count as connected
/// (etcd's `HealthInterval`).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The leader's view of its peers: for how long each has been heard from without a gap.
/// Peers not heard from recently are absent; the leader itself always counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    pub leader: u64,
    pub active_for: HashMap<u64, Duration>,
    /// Each member's matched log index on the leader (itself included).
    pub matched: HashMap<u64, u64>,
}

impl Activity {
    /// Whether `id` has been connected for at least [`HEALTH_INTERVAL`].
    fn connected(&self, id: u64) -> bool {
        id == self.leader
            || self
                .active_for
                .get(&id)
                .is_some_and(|d| *d >= HEALTH_INTERVAL)
    }

    /// Whether `id` is heard from at all (etcd's non-zero `ActiveSince`).
    fn active(&self, id: u64) -> bool {
        id == self.leader || self.active_for.contains_key(&id)
    }
}

/// When each peer was last heard from, and since when without a gap longer than `gap`:
/// kept by the raft thread from the messages it receives (on the leader every follower
/// answers each heartbeat).
#[derive(Debug)]
pub struct PeerActivity {
    gap: Duration,
    /// Peer id to (first message of the current run, last message).
    seen: HashMap<u64, (Instant, Instant)>,
}

impl PeerActivity {
    /// A peer silent for longer than `gap` counts as gone.
    pub fn new(gap: Duration) -> PeerActivity {
        PeerActivity {
            gap,
            seen: HashMap::new(),
        }
    }

    /// A message from `id` arrived at `now`.
    pub fn heard(&mut self, id: u64, now: Instant) {
        let gap = self.gap;
        self.seen
            .entry(id)
            .and_modify(|(since, last)| {
                if now.saturating_duration_since(*last) > gap {
                    *since = now;
                }
                *last = now;
            })
            .or_insert((now, now));
    }

    /// For how long each peer heard from within the last `gap` has been heard from.
    pub fn snapshot(&self, leader: u64, now: Instant) -> Activity {
        let active_for = self
            .seen
            .iter()
            .filter(|(_, (_, last))| now.saturating_duration_since(*last) <= self.gap)
            .map(|(id, (since, _))| (*id, now.saturating_duration_since(*since)))
            .collect();
        Activity {
            leader,
            active_for,
            matched: HashMap::new(),
        }
    }
}

fn started(m: &Member) -> bool {
    !m.name.is_empty()
}

/// The voting members (learners neither vote nor count toward a quorum).
pub fn voters(members: &[Member]) -> Vec<Member> {
    members.iter().filter(|m| !m.is_learner).cloned().collect()
}

/// How close a learner's log must be to the leader's to be promoted (etcd's `readyPercent`).
const LEARNER_READY: f64 = 0.9;

/// At most this many learners at a time (etcd 3.4's `maxLearners`).
pub const MAX_LEARNERS: usize = 1;

/// etcd's `isLearnerReady`: a member the leader tracks whose matched index is below 90% of
/// the leader's is not in sync; an id the leader does not track passes (the change is then
/// refused when applied, as "member not found").
pub fn check_learner_ready(id: u64, activity: &Activity) -> Result<()> {
    let Some(&learner) = activity.matched.get(&id) else {
        return Ok(());
    };
    let leader = activity.matched.get(&activity.leader).copied().unwrap_or(0);
    if (learner as f64) < (leader as f64) * LEARNER_READY {
        return Err(Error::LearnerNotReady);
    }
    Ok(())
}

/// Adding a voter needs a quorum of the grown cluster already started (a one-member
/// cluster may always grow to two: that is how its data is restored elsewhere).
pub fn check_started_add(members: &[Member]) -> Result<()> {
    let members = &voters(members)[..];
    let grown = members.len() + 1;
    let nstarted = members.iter().filter(|m| started(m)).count();
    if nstarted == 1 && grown == 2 {
        return Ok(());
    }
    if nstarted < grown / 2 + 1 {
        return Err(Error::UnhealthyCluster);
    }
    Ok(())
}

/// Promoting a learner needs the started voters, with the learner counted as started, to
/// make a quorum of the grown cluster (etcd's `IsReadyToPromoteMember`).
pub fn check_started_promote(members: &[Member]) -> Result<()> {
    let members = voters(members);
    let grown = members.len() + 1;
    let nstarted = 1 + members.iter().filter(|m| started(m)).count();
    if nstarted < grown / 2 + 1 {
        return Err(Error::UnhealthyCluster);
    }
    Ok(())
}

/// Removing voter `id` needs a quorum of the remaining members started.
pub fn check_started_remove(members: &[Member], id: u64) -> Result<()> {
    let members = &voters(members)[..];
    let rest: Vec<&Member> = members.iter().filter(|m| m.id != id).collect();
    let nstarted = rest.iter().filter(|m| started(m)).count();
    if nstarted < rest.len() / 2 + 1 {
        return Err(Error::UnhealthyCluster);
    }
    Ok(())
}

/// Adding a voter needs every current voter connected to the leader.
pub fn check_active_add(voters: &[u64], activity: &Activity) -> Result<()> {
    if voters.iter().all(|&id| activity.connected(id)) {
        Ok(())
    } else {
        Err(Error::Unhealthy)
    }
}

/// Removing voter `id` is fine if the leader does not hear from it (it is not part of
/// the active quorum); otherwise the voters connected to the leader, less the removed
/// one, must still be a quorum of the current voters.
pub fn check_active_remove(voters: &[u64], id: u64, activity: &Activity) -> Result<()> {
    if id != activity.leader && !activity.active(id) {
        return Ok(());
    }
    let connected = voters.iter().filter(|&&v| activity.connected(v)).count();
    if connected.saturating_sub(1) < 1 + (voters.len().saturating_sub(1)) / 2 {
        return Err(Error::Unhealthy);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str) -> Member {
        Member {
            id,
            name: name.into(),
            ..Default::default()
        }
    }

    fn activity(leader: u64, peers: &[(u64, u64)]) -> Activity {
        Activity {
            leader,
            active_for: peers
                .iter()
                .map(|&(id, s)| (id, Duration::from_secs(s)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn learners_are_promoted_in_sync_only() {
        let mut a = activity(1, &[]);
        a.matched = [(1, 100), (2, 89), (3, 90)].into_iter().collect();
        assert!(matches!(
            check_learner_ready(2, &a),
            Err(Error::LearnerNotReady)
        ));
        assert!(check_learner_ready(3, &a).is_ok());
        assert!(check_learner_ready(9, &a).is_ok());
        // A learner is neither counted as started nor as a voter.
        let mut learner = member(4, "");
        learner.is_learner = true;
        let members = [member(1, "a"), member(2, "b"), learner];
        assert!(check_started_add(&members).is_ok());
        assert_eq!(voters(&members).len(), 2);
    }

    #[test]
    fn started_members_for_add() {
        // One started member may always get a second.
        assert!(check_started_add(&[member(1, "a")]).is_ok());
        // Then a third needs two started of three.
        let two = [member(1, "a"), member(2, "")];
        assert!(matches!(
            check_started_add(&two),
            Err(Error::UnhealthyCluster)
        ));
        // Two started of four: short of three.
        let three = [member(1, "a"), member(2, "b"), member(3, "")];
        assert!(check_started_add(&three).is_err());
        // Three started of five.
        let four = [
            member(1, "a"),
            member(2, "b"),
            member(3, "c"),
            member(4, ""),
        ];
        assert!(check_started_add(&four).is_ok());
    }

    #[test]
    fn started_members_for_remove() {
        let m = [member(1, "a"), member(2, "b"), member(3, "")];
        // Removing the unstarted one leaves two of two started.
        assert!(check_started_remove(&m, 3).is_ok());
        // Removing a started one leaves one of two.
        assert!(matches!(
            check_started_remove(&m, 2),
            Err(Error::UnhealthyCluster)
        ));
    }

    #[test]
    fn add_needs_every_voter_connected() {
        let voters = [1, 2, 3];
        assert!(check_active_add(&voters, &activity(1, &[(2, 9), (3, 6)])).is_ok());
        // One down.
        assert!(matches!(
            check_active_add(&voters, &activity(1, &[(2, 9)])),
            Err(Error::Unhealthy)
        ));
        // Back, but not for long enough yet.
        assert!(check_active_add(&voters, &activity(1, &[(2, 9), (3, 1)])).is_err());
    }

    #[test]
    fn remove_keeps_an_active_quorum() {
        let voters = [1, 2, 3];
        let one_down = activity(1, &[(2, 9)]);
        // The member that is down may go.
        assert!(check_active_remove(&voters, 3, &one_down).is_ok());
        // A healthy one (or the leader) may not: one active member would remain.
        assert!(matches!(
            check_active_remove(&voters, 2, &one_down),
            Err(Error::Unhealthy)
        ));
        assert!(check_active_remove(&voters, 1, &one_down).is_err());
        // All up: any one may go.
        let all = activity(1, &[(2, 9), (3, 9)]);
        assert!(check_active_remove(&voters, 2, &all).is_ok());
        assert!(check_active_remove(&voters, 1, &all).is_ok());
    }

    #[test]
    fn activity_runs_restart_after_a_gap() {
        let t0 = Instant::now();
        let mut a = PeerActivity::new(Duration::from_secs(1));
        a.heard(2, t0);
        a.heard(2, t0 + Duration::from_millis(500));
        a.heard(2, t0 + Duration::from_millis(1200));
        let s = a.snapshot(1, t0 + Duration::from_millis(1300));
        assert_eq!(s.active_for.get(&2), Some(&Duration::from_millis(1300)));
        // Silent for over a second: gone, and a new run starts when it speaks again.
        assert!(
            a.snapshot(1, t0 + Duration::from_millis(2300))
                .active_for
                .is_empty()
        );
        a.heard(2, t0 + Duration::from_millis(3000));
        let s = a.snapshot(1, t0 + Duration::from_millis(3100));
        assert_eq!(s.active_for.get(&2), Some(&Duration::from_millis(100)));
    }
}
