//! Heartbeat membership, sans-IO: it is told what was heard and what time it
//! is, and says what changed. The engine feeds it; tests drive it with a fake
//! clock.
//!
//! A carrier with a failure detector of its own (`Native`'s gossip) reports
//! each member's state instead: then silence decides nothing here and
//! [`Membership::reported`] moves members between states. A node becomes a
//! member only once it has also spoken an authenticated envelope, so the
//! carrier's word alone never adds one.

use crate::api::{Member, MemberChange, MemberEvent, MemberState, NodeId};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Failure-detection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// Silence after which a member is suspected.
    pub suspect_after: Duration,
    /// Silence after which a member is declared dead.
    pub dead_after: Duration,
    /// How long a dead or departed member is remembered (so that its stale
    /// messages are recognised) before it is forgotten.
    pub forget_after: Duration,
}

/// What hearing from a node amounted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A node (or incarnation) not known before.
    New,
    /// A known member, refreshed.
    Known,
    /// Old news: an older incarnation, a replayed counter, or a departed node.
    Stale,
    /// Another process claims this node's id.
    Conflict,
    /// A node not known before, refused: as many nodes as allowed are known.
    Full,
}

#[derive(Clone, Debug)]
struct Peer {
    incarnation: u64,
    state: MemberState,
    last_heard: Instant,
    counter: u64,
    /// When `state` last changed.
    since: Instant,
}

/// The membership as seen by one node.
#[derive(Debug)]
pub struct Membership {
    local: NodeId,
    local_incarnation: u64,
    detection: Detection,
    /// States come from the carrier's reports, not from silence.
    carrier_reports: bool,
    /// No failure detection at all: members are those heard from, until
    /// they leave or restart (heartbeats off on a carrier without reports).
    undetected: bool,
    /// The carrier's last report per node, members or not yet.
    carrier_view: BTreeMap<NodeId, (u64, MemberState)>,
    peers: BTreeMap<NodeId, Peer>,
    /// Other nodes known at most (members, dead or departed ones remembered).
    max_peers: usize,
    /// When this membership began: the local member's `since`.
    created: Instant,
}

/// Nodes a membership knows at most, unless told otherwise.
pub const MAX_PEERS: usize = 4096;

impl Membership {
    pub fn new(local: NodeId, local_incarnation: u64, detection: Detection) -> Self {
        Self {
            local,
            local_incarnation,
            detection,
            carrier_reports: false,
            undetected: false,
            carrier_view: BTreeMap::new(),
            peers: BTreeMap::new(),
            max_peers: MAX_PEERS,
            created: Instant::now(),
        }
    }

    /// Knows at most `max` other nodes: a node beyond that is refused
    /// ([`Heard::Full`]) until one is forgotten, so that forged ids cannot
    /// grow it without bound.
    pub fn with_max_peers(mut self, max: usize) -> Self {
        self.max_peers = max.max(1);
        self
    }

    /// How many other nodes it knows (members, and the dead and departed it remembers).
    pub fn known(&self) -> usize {
        self.peers.len()
    }

    /// Membership whose states the carrier reports ([`Membership::reported`]).
    pub fn reported_by_carrier(mut self) -> Self {
        self.carrier_reports = true;
        self
    }

    /// Membership without failure detection: silence makes no member
    /// suspect or dead (nothing periodic is sent to break it).
    pub fn undetected(mut self) -> Self {
        self.undetected = true;
        self
    }

    /// Whether silence decides states (heartbeats are sent and read).
    fn by_silence(&self) -> bool {
        !self.carrier_reports && !self.undetected
    }

    /// The carrier's failure detector says `id` (run `incarnation`) is now in `state`.
    pub fn reported(
        &mut self,
        now: Instant,
        id: NodeId,
        incarnation: u64,
        state: MemberState,
        events: &mut Vec<MemberEvent>,
    ) -> Heard {
        if id == self.local {
            return Heard::Stale;
        }
        match self.carrier_view.get(&id) {
            Some(&(run, _)) if run > incarnation => return Heard::Stale,
            None if self.carrier_view.len() >= self.max_peers => return Heard::Full,
            _ => {
                self.carrier_view.insert(id, (incarnation, state));
            }
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            // Not a member until it speaks an envelope itself.
            return Heard::Stale;
        };
        if incarnation > peer.incarnation {
            // A new run the engine has not heard from yet: it becomes a restart
            // when it speaks.
            return Heard::Known;
        }
        if state == MemberState::Left {
            return self.left(now, id, incarnation, events);
        }
        if incarnation < peer.incarnation || peer.state == MemberState::Left {
            return Heard::Stale;
        }
        if peer.state == state {
            return Heard::Known;
        }
        let change = match (peer.state, state) {
            (_, MemberState::Dead) => MemberChange::Died,
            (MemberState::Dead, MemberState::Suspect) => return Heard::Known,
            (_, MemberState::Suspect) => MemberChange::Suspected,
            _ => MemberChange::Recovered,
        };
        if state == MemberState::Dead && peer.state == MemberState::Alive {
            peer.state = MemberState::Suspect;
            events.push(event(id, peer, MemberChange::Suspected));
        }
        peer.state = state;
        peer.since = now;
        peer.last_heard = now;
        events.push(event(id, peer, change));
        Heard::Known
    }

    /// A heartbeat (or join, or announce) from `from`, with its monotonic `counter`.
    pub fn heard(
        &mut self,
        now: Instant,
        from: NodeId,
        incarnation: u64,
        counter: u64,
        events: &mut Vec<MemberEvent>,
    ) -> Heard {
        self.observe(now, from, incarnation, Some(counter), events)
    }

    /// Any other authenticated, fresh message from `from`: evidence of life.
    pub fn touched(
        &mut self,
        now: Instant,
        from: NodeId,
        incarnation: u64,
        events: &mut Vec<MemberEvent>,
    ) -> Heard {
        self.observe(now, from, incarnation, None, events)
    }

    fn observe(
        &mut self,
        now: Instant,
        from: NodeId,
        incarnation: u64,
        counter: Option<u64>,
        events: &mut Vec<MemberEvent>,
    ) -> Heard {
        if from == self.local {
            return if incarnation == self.local_incarnation {
                Heard::Stale
            } else {
                Heard::Conflict
            };
        }
        let fresh = |counter: Option<u64>| Peer {
            incarnation,
            state: MemberState::Alive,
            last_heard: now,
            counter: counter.unwrap_or(0),
            since: now,
        };
        // What the carrier last said of this run, if it has.
        let verdict = match self.carrier_view.get(&from) {
            Some(&(run, state)) if run == incarnation => Some(state),
            Some(&(run, _)) if run > incarnation => return Heard::Stale,
            _ => None,
        };
        if self.carrier_reports && matches!(verdict, Some(MemberState::Dead | MemberState::Left)) {
            return Heard::Stale;
        }
        let change = match self.peers.get(&from) {
            None if self.peers.len() >= self.max_peers => return Heard::Full,
            None => Some(MemberChange::Joined),
            Some(peer) if incarnation > peer.incarnation => Some(MemberChange::Restarted {
                previous_incarnation: peer.incarnation,
            }),
            Some(_) => None,
        };
        if let Some(change) = change {
            let peer = fresh(counter);
            events.push(event(from, &peer, change));
            self.peers.insert(from, peer);
            if self.carrier_reports && verdict == Some(MemberState::Suspect) {
                self.reported(now, from, incarnation, MemberState::Suspect, events);
            }
            return Heard::New;
        }
        let by_silence = self.by_silence();
        let peer = self.peers.get_mut(&from).expect("listed: checked above");
        if incarnation < peer.incarnation || peer.state == MemberState::Left {
            return Heard::Stale;
        }
        if let Some(counter) = counter {
            if counter <= peer.counter {
                return Heard::Stale;
            }
            peer.counter = counter;
        }
        peer.last_heard = peer.last_heard.max(now);
        if by_silence && matches!(peer.state, MemberState::Suspect | MemberState::Dead) {
            peer.state = MemberState::Alive;
            peer.since = now;
            events.push(event(from, peer, MemberChange::Recovered));
        }
        Heard::Known
    }

    /// `from` said it is leaving.
    pub fn left(
        &mut self,
        now: Instant,
        from: NodeId,
        incarnation: u64,
        events: &mut Vec<MemberEvent>,
    ) -> Heard {
        if from == self.local {
            return if incarnation == self.local_incarnation {
                Heard::Stale
            } else {
                Heard::Conflict
            };
        }
        let full = self.peers.len() >= self.max_peers;
        match self.peers.get_mut(&from) {
            Some(peer) if peer.incarnation > incarnation || peer.state == MemberState::Left => {
                Heard::Stale
            }
            Some(peer) => {
                peer.incarnation = incarnation;
                peer.state = MemberState::Left;
                peer.since = now;
                events.push(event(from, peer, MemberChange::Left));
                Heard::Known
            }
            None if full => Heard::Full,
            None => {
                // Never seen alive: remember the departure so late heartbeats do not revive it.
                let peer = Peer {
                    incarnation,
                    state: MemberState::Left,
                    last_heard: now,
                    counter: u64::MAX,
                    since: now,
                };
                self.peers.insert(from, peer);
                Heard::Stale
            }
        }
    }

    /// Moves silent members to suspect and dead, and forgets old ones.
    pub fn tick(&mut self, now: Instant, events: &mut Vec<MemberEvent>) {
        let detection = self.detection;
        let by_silence = self.by_silence();
        let mut forgotten = Vec::new();
        for (&id, peer) in self.peers.iter_mut() {
            let silence = now.saturating_duration_since(peer.last_heard);
            if by_silence && peer.state == MemberState::Alive && silence >= detection.suspect_after
            {
                peer.state = MemberState::Suspect;
                peer.since = now;
                events.push(event(id, peer, MemberChange::Suspected));
            }
            if by_silence && peer.state == MemberState::Suspect && silence >= detection.dead_after {
                peer.state = MemberState::Dead;
                peer.since = now;
                events.push(event(id, peer, MemberChange::Died));
            }
            let gone = matches!(peer.state, MemberState::Dead | MemberState::Left);
            if gone && now.saturating_duration_since(peer.since) >= detection.forget_after {
                if peer.state == MemberState::Dead {
                    events.push(event(id, peer, MemberChange::Removed));
                }
                forgotten.push(id);
            }
        }
        for id in forgotten {
            self.peers.remove(&id);
        }
    }

    /// When [`Membership::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let d = self.detection;
        self.peers
            .values()
            .filter_map(|peer| match peer.state {
                MemberState::Alive | MemberState::Suspect if !self.by_silence() => None,
                MemberState::Alive => Some(peer.last_heard + d.suspect_after),
                MemberState::Suspect => Some(peer.last_heard + d.dead_after),
                MemberState::Dead | MemberState::Left => Some(peer.since + d.forget_after),
            })
            .min()
    }

    /// The local node and every member that has not left, by id.
    pub fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.state != MemberState::Left)
            .map(|(&id, peer)| member(id, peer))
            .collect();
        let local = self.local_member();
        let at = members.partition_point(|m| m.id < self.local);
        members.insert(at, local);
        members
    }

    /// One member as known here (the local node included).
    pub fn get(&self, id: NodeId) -> Option<Member> {
        if id == self.local {
            return Some(self.local_member());
        }
        self.peers.get(&id).map(|peer| member(id, peer))
    }

    fn local_member(&self) -> Member {
        Member {
            id: self.local,
            incarnation: self.local_incarnation,
            state: MemberState::Alive,
            local: true,
            since: self.created,
            address: None,
        }
    }
}

fn member(id: NodeId, peer: &Peer) -> Member {
    Member {
        id,
        incarnation: peer.incarnation,
        state: peer.state,
        local: false,
        since: peer.since,
        address: None,
    }
}

fn event(id: NodeId, peer: &Peer, change: MemberChange) -> MemberEvent {
    MemberEvent {
        member: member(id, peer),
        change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn detection() -> Detection {
        Detection {
            suspect_after: 300 * MS,
            dead_after: 500 * MS,
            forget_after: 10_000 * MS,
        }
    }

    /// Node 1 (incarnation 1) that heard node 2 (incarnation 1, counter 1) at `t0`; events cleared.
    fn knowing_node_2(t0: Instant) -> (Membership, Vec<MemberEvent>) {
        let mut m = Membership::new(1, 1, detection());
        let mut ev = Vec::new();
        m.heard(t0, 2, 1, 1, &mut ev);
        ev.clear();
        (m, ev)
    }

    fn changes(events: &mut Vec<MemberEvent>) -> Vec<(NodeId, MemberChange)> {
        events.drain(..).map(|e| (e.member.id, e.change)).collect()
    }

    #[test]
    fn a_new_node_joins_and_is_listed_once_beside_the_local_one() {
        let t0 = Instant::now();
        let mut m = Membership::new(2, 7, detection());
        let mut ev = Vec::new();
        assert_eq!(m.heard(t0, 1, 100, 1, &mut ev), Heard::New);
        assert_eq!(m.heard(t0, 1, 100, 2, &mut ev), Heard::Known);
        assert_eq!(changes(&mut ev), vec![(1, MemberChange::Joined)]);
        let ids: Vec<_> = m.members().iter().map(|m| (m.id, m.local)).collect();
        assert_eq!(ids, vec![(1, false), (2, true)]);
    }

    #[test]
    fn silence_makes_suspect_then_dead_at_the_configured_times() {
        let t0 = Instant::now();
        let (mut m, mut ev) = knowing_node_2(t0);
        assert_eq!(m.next_deadline(), Some(t0 + 300 * MS));
        m.tick(t0 + 299 * MS, &mut ev);
        assert!(ev.is_empty());
        m.tick(t0 + 300 * MS, &mut ev);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Suspected)]);
        assert_eq!(m.next_deadline(), Some(t0 + 500 * MS));
        m.tick(t0 + 500 * MS, &mut ev);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Died)]);
        assert_eq!(m.get(2).unwrap().state, MemberState::Dead);
    }

    #[test]
    fn a_late_tick_still_reports_suspect_before_dead() {
        let t0 = Instant::now();
        let (mut m, mut ev) = knowing_node_2(t0);
        m.tick(t0 + 2000 * MS, &mut ev);
        assert_eq!(
            changes(&mut ev),
            vec![(2, MemberChange::Suspected), (2, MemberChange::Died)]
        );
    }

    #[test]
    fn a_heartbeat_refutes_suspicion() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection());
        let mut ev = Vec::new();
        m.heard(t0, 2, 1, 1, &mut ev);
        m.tick(t0 + 350 * MS, &mut ev);
        ev.clear();
        m.heard(t0 + 360 * MS, 2, 1, 2, &mut ev);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Recovered)]);
        m.tick(t0 + 600 * MS, &mut ev);
        assert!(ev.is_empty(), "heard 240 ms ago, not yet suspect");
    }

    #[test]
    fn a_replayed_heartbeat_does_not_revive_a_dead_node() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection());
        let mut ev = Vec::new();
        m.heard(t0, 2, 1, 5, &mut ev);
        m.tick(t0 + 600 * MS, &mut ev);
        ev.clear();
        assert_eq!(m.heard(t0 + 700 * MS, 2, 1, 5, &mut ev), Heard::Stale);
        assert_eq!(m.heard(t0 + 700 * MS, 2, 1, 3, &mut ev), Heard::Stale);
        assert!(ev.is_empty());
        assert_eq!(m.get(2).unwrap().state, MemberState::Dead);
    }

    #[test]
    fn a_restart_replaces_the_old_incarnation_and_is_never_listed_twice() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection());
        let mut ev = Vec::new();
        m.heard(t0, 2, 10, 9, &mut ev);
        m.tick(t0 + 600 * MS, &mut ev);
        ev.clear();
        assert_eq!(m.heard(t0 + 700 * MS, 2, 11, 1, &mut ev), Heard::New);
        assert_eq!(
            changes(&mut ev),
            vec![(
                2,
                MemberChange::Restarted {
                    previous_incarnation: 10
                }
            )]
        );
        assert_eq!(m.members().iter().filter(|m| m.id == 2).count(), 1);
        assert_eq!(m.get(2).unwrap().incarnation, 11);
        assert_eq!(
            m.heard(t0 + 710 * MS, 2, 10, 99, &mut ev),
            Heard::Stale,
            "old incarnation ignored"
        );
    }

    #[test]
    fn a_leave_removes_the_member_at_once_and_keeps_it_gone() {
        let t0 = Instant::now();
        let (mut m, mut ev) = knowing_node_2(t0);
        m.left(t0 + MS, 2, 1, &mut ev);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Left)]);
        assert!(m.members().iter().all(|m| m.id != 2));
        assert_eq!(
            m.heard(t0 + 2 * MS, 2, 1, 2, &mut ev),
            Heard::Stale,
            "a late heartbeat does not revive it"
        );
        m.tick(t0 + 5000 * MS, &mut ev);
        assert!(ev.is_empty(), "a departed node is not suspected");
        assert_eq!(
            m.heard(t0 + 6000 * MS, 2, 2, 1, &mut ev),
            Heard::New,
            "its next incarnation may join"
        );
    }

    #[test]
    fn dead_members_are_forgotten_after_a_while() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection());
        let mut ev = Vec::new();
        m.heard(t0, 2, 1, 1, &mut ev);
        m.tick(t0 + 500 * MS, &mut ev);
        ev.clear();
        m.tick(t0 + 10_500 * MS, &mut ev);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Removed)]);
        assert!(m.get(2).is_none());
    }

    #[test]
    fn carrier_reports_decide_states_and_silence_does_not() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection()).reported_by_carrier();
        let mut ev = Vec::new();
        assert_eq!(
            m.reported(t0, 2, 5, MemberState::Alive, &mut ev),
            Heard::Stale
        );
        assert!(
            m.get(2).is_none(),
            "the carrier's word alone adds no member"
        );
        assert_eq!(m.touched(t0, 2, 5, &mut ev), Heard::New);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Joined)]);
        m.tick(t0 + 5000 * MS, &mut ev);
        assert!(ev.is_empty(), "silence decides nothing");
        m.reported(t0 + 5000 * MS, 2, 5, MemberState::Suspect, &mut ev);
        m.reported(t0 + 5001 * MS, 2, 5, MemberState::Alive, &mut ev);
        m.reported(t0 + 5002 * MS, 2, 5, MemberState::Dead, &mut ev);
        assert_eq!(
            changes(&mut ev),
            vec![
                (2, MemberChange::Suspected),
                (2, MemberChange::Recovered),
                (2, MemberChange::Suspected),
                (2, MemberChange::Died)
            ],
            "death is always preceded by suspicion"
        );
        m.touched(t0 + 5003 * MS, 2, 5, &mut ev);
        m.reported(t0 + 5003 * MS, 2, 5, MemberState::Suspect, &mut ev);
        assert!(
            ev.is_empty(),
            "a message or a late suspicion does not revive the dead"
        );
        assert_eq!(m.get(2).unwrap().state, MemberState::Dead);
        m.reported(t0 + 6000 * MS, 2, 6, MemberState::Alive, &mut ev);
        assert!(ev.is_empty(), "a new run is a restart once it speaks");
        m.heard(t0 + 6000 * MS, 2, 6, 1, &mut ev);
        assert_eq!(
            changes(&mut ev),
            vec![(
                2,
                MemberChange::Restarted {
                    previous_incarnation: 5
                }
            )]
        );
        m.reported(t0 + 6001 * MS, 2, 5, MemberState::Dead, &mut ev);
        assert!(ev.is_empty(), "reports about an older run are stale");
        m.reported(t0 + 6002 * MS, 2, 6, MemberState::Left, &mut ev);
        m.reported(t0 + 6003 * MS, 2, 6, MemberState::Alive, &mut ev);
        assert_eq!(changes(&mut ev), vec![(2, MemberChange::Left)]);
    }

    #[test]
    fn a_node_the_carrier_declared_dead_is_not_revived_by_a_late_message() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection()).reported_by_carrier();
        let mut ev = Vec::new();
        m.reported(t0, 3, 7, MemberState::Dead, &mut ev);
        assert_eq!(m.heard(t0, 3, 7, 1, &mut ev), Heard::Stale);
        m.reported(t0, 4, 7, MemberState::Suspect, &mut ev);
        m.heard(t0, 4, 7, 1, &mut ev);
        assert_eq!(
            changes(&mut ev),
            vec![(4, MemberChange::Joined), (4, MemberChange::Suspected)]
        );
    }

    #[test]
    fn another_process_with_our_id_is_a_conflict() {
        let mut m = Membership::new(1, 5, detection());
        let mut ev = Vec::new();
        assert_eq!(m.heard(Instant::now(), 1, 6, 1, &mut ev), Heard::Conflict);
        assert_eq!(
            m.heard(Instant::now(), 1, 5, 1, &mut ev),
            Heard::Stale,
            "our own echo"
        );
        assert!(ev.is_empty());
    }

    #[test]
    fn nodes_beyond_the_limit_are_refused_until_one_is_forgotten() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, 1, detection()).with_max_peers(2);
        let mut ev = Vec::new();
        assert_eq!(m.heard(t0, 2, 1, 1, &mut ev), Heard::New);
        assert_eq!(m.heard(t0, 3, 1, 1, &mut ev), Heard::New);
        assert_eq!(m.heard(t0, 4, 1, 1, &mut ev), Heard::Full);
        assert_eq!(m.left(t0, 5, 1, &mut ev), Heard::Full);
        assert_eq!(m.known(), 2);
        assert!(m.get(4).is_none());
        // Node 3 dies and is forgotten: room for node 4.
        m.heard(t0 + 400 * MS, 2, 1, 2, &mut ev);
        m.tick(t0 + 600 * MS, &mut ev);
        m.heard(t0 + 700 * MS, 2, 1, 3, &mut ev);
        m.tick(t0 + 10_600 * MS, &mut ev);
        assert!(m.get(3).is_none());
        assert_eq!(m.heard(t0 + 10_600 * MS, 4, 1, 1, &mut ev), Heard::New);
    }
}
