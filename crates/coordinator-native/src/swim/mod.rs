//! SWIM membership with Lifeguard's refinements, sans-IO.
//!
//! Every probe interval this node pings one member (round robin over a
//! shuffled list). A member that does not answer within the probe timeout is
//! pinged indirectly through a few others, and over its TCP connection (a
//! path that survives lost or filtered UDP). A member whose probes have
//! failed for `suspect_after` is suspected; the suspicion goes to the member
//! itself at once, which refutes it by raising its version. A suspect that
//! does not refute is declared dead after a timeout that starts long and
//! shrinks as other members independently confirm the suspicion. Another
//! node's verdict of death is only a suspicion here (the member can still
//! refute it); only a member's own departure is final.
//!
//! Local health (Lifeguard): probes that fail while the helpers asked to
//! relay them do not answer either, and suspicions of this node, mean that
//! this node itself is slow or cut off; it then probes more slowly and waits
//! longer before suspecting anyone, and recovers with each successful probe.
//!
//! News about members rides on every packet, each piece a bounded number of
//! times. Full states are exchanged (over TCP, by the driver) with the seed
//! nodes at start and periodically, with a random member from time to time,
//! and with a member declared dead that turns out to be reachable, so that
//! a healed partition merges at once. Members declared dead are pinged now
//! and then, with the news of their death, so that one that was wrongly
//! declared dead learns it and refutes.
//!
//! The state machine is driven by [`Swim::handle_packet`], [`Swim::contact`],
//! [`Swim::stream_probe`], [`Swim::stream_ack`], [`Swim::merge_state`] and
//! [`Swim::tick`], and says what to do through [`Swim::drain_outputs`]. It
//! never reads a clock or touches a socket.

mod packet;
pub mod sim;
#[cfg(test)]
mod tests;

pub use packet::{
    DecodeError, GossipCodec, MAX_DATAGRAM, MAX_PACKET, Message, Packet, State, Update,
    decode_body, decode_probe, decode_state, encode_body, encode_probe, encode_state,
};

use coordinator_core::{MemberState, NodeId};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Timing and fan-out of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwimConfig {
    /// One probe per interval.
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before indirect pings and the
    /// probe over TCP go out.
    pub probe_timeout: Duration,
    /// Members asked to ping a silent one on our behalf.
    pub indirect_probes: usize,
    /// A member whose probe failed is suspected once it has been silent this long.
    pub suspect_after: Duration,
    /// A suspect that does not refute is dead after this long once
    /// `confirmations` other members have independently suspected it too…
    pub suspicion_timeout: Duration,
    /// …and after this long when nobody else has.
    pub suspicion_max: Duration,
    /// Independent suspicions that bring the timeout down to its minimum.
    pub confirmations: usize,
    /// Local health: how many times slower at worst this node probes and
    /// suspects when it misses acks itself.
    pub health_max: u32,
    /// Each piece of news is sent `retransmit_mult * ceil(log10(n + 2))` times.
    pub retransmit_mult: u32,
    /// While there is news, it is sent to `gossip_fanout` random members this often.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// How often the seed nodes are joined again (full state exchange).
    pub rejoin_interval: Duration,
    /// How often the full state is exchanged with a random member.
    pub sync_interval: Duration,
    /// How often a member declared dead is pinged with the news of its death.
    pub dead_contact_interval: Duration,
    /// How long dead and departed members are remembered.
    pub forget_after: Duration,
}

impl SwimConfig {
    /// Settings derived from the engine's: probes at the heartbeat interval,
    /// suspicion after `suspect_after` of silence, death `dead_after` after the
    /// last sign of life when others confirm the suspicion (half as long again
    /// when nobody does).
    pub fn from_timing(heartbeat: Duration, suspect_after: Duration, dead_after: Duration) -> Self {
        let suspicion = dead_after.saturating_sub(suspect_after).max(heartbeat);
        Self {
            probe_interval: heartbeat,
            probe_timeout: heartbeat / 2,
            indirect_probes: 3,
            suspect_after,
            suspicion_timeout: suspicion,
            suspicion_max: suspicion * 3 / 2,
            confirmations: 3,
            health_max: 8,
            retransmit_mult: 4,
            gossip_interval: heartbeat / 2,
            gossip_fanout: 3,
            rejoin_interval: heartbeat * 20,
            sync_interval: heartbeat * 60,
            dead_contact_interval: heartbeat * 2,
            forget_after: Duration::from_secs(600),
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a gossip packet over UDP.
    Send { to: SocketAddr, packet: Packet },
    /// Probe `target` over its TCP connection with `update` (this node's news
    /// of it); its answer goes to [`Swim::stream_ack`] with `seq`.
    StreamProbe {
        target: NodeId,
        seq: u32,
        update: Update,
    },
    /// Exchange full states over TCP with whoever listens at `addr`.
    Sync { addr: SocketAddr },
    /// A member's state changed (for the engine).
    Report {
        id: NodeId,
        run: u64,
        state: MemberState,
    },
}

#[derive(Clone, Debug)]
struct Suspicion {
    started: Instant,
    /// Distinct members that suspect it (the first one first), at most
    /// `confirmations + 1`.
    by: Vec<NodeId>,
}

#[derive(Clone, Debug)]
struct Entry {
    update: Update,
    /// Last direct or indirect sign of life.
    last_heard: Instant,
    /// When `update.state` last changed.
    since: Instant,
    /// Start of the first of our probes of it that went unanswered, in a row.
    failing_since: Option<Instant>,
    /// While it is suspect.
    suspicion: Option<Suspicion>,
    /// When it was last told directly of its suspicion or death.
    told: Option<Instant>,
    /// Whether the engine has been told about this member.
    reported: bool,
}

#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    run: u64,
    seq: u32,
    started: Instant,
    indirect_sent: bool,
    acked: bool,
    /// Helpers asked to relay, and how many said they could not reach it.
    helpers: usize,
    nacks: usize,
}

/// A ping we send on behalf of another member's indirect probe.
#[derive(Clone, Debug)]
struct Relay {
    requester: SocketAddr,
    requester_seq: u32,
    /// When to tell the requester that the target did not answer (once).
    nack_at: Option<Instant>,
    expires: Instant,
}

/// One node's view of the cluster and its protocol state.
pub struct Swim {
    config: SwimConfig,
    id: NodeId,
    run: u64,
    addr: SocketAddr,
    version: u32,
    seeds: Vec<SocketAddr>,
    members: BTreeMap<NodeId, Entry>,
    /// News to spread: (update, sends left).
    news: Vec<(Update, u32)>,
    probe_order: Vec<NodeId>,
    /// Probes in progress: the round robin's, and those of failing members.
    probes: Vec<Probe>,
    /// The last probes that failed, (seq, target, run): a late ack still counts.
    failed: std::collections::VecDeque<(u32, NodeId, u64)>,
    next_probe: Instant,
    next_gossip: Instant,
    next_rejoin: Instant,
    next_sync: Instant,
    next_dead_contact: Instant,
    /// A state exchange with a reachable member held dead is due no sooner.
    next_heal_sync: Instant,
    next_seq: u32,
    relays: HashMap<u32, Relay>,
    /// Local health: 0 is healthy; timings are scaled by `1 + health`.
    health: u32,
    /// The members' deadlines as last scanned (`None`: scan again).
    members_due: Option<(Option<Instant>, bool)>,
    outputs: Vec<Output>,
    rng: StdRng,
    left: bool,
}

impl Swim {
    /// A node `id` in its run `run`, reachable at `addr`, joining through `seeds`.
    pub fn new(
        config: SwimConfig,
        id: NodeId,
        run: u64,
        addr: SocketAddr,
        seeds: Vec<SocketAddr>,
        now: Instant,
        seed: u64,
    ) -> Self {
        let mut swim = Self {
            config,
            id,
            run,
            addr,
            version: 0,
            seeds: seeds.into_iter().filter(|seed| *seed != addr).collect(),
            members: BTreeMap::new(),
            news: Vec::new(),
            probe_order: Vec::new(),
            probes: Vec::new(),
            failed: std::collections::VecDeque::new(),
            next_probe: now,
            next_gossip: now,
            next_rejoin: now,
            next_sync: now + config.sync_interval,
            next_dead_contact: now + config.dead_contact_interval,
            next_heal_sync: now,
            next_seq: 1,
            relays: HashMap::new(),
            health: 0,
            members_due: None,
            outputs: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            left: false,
        };
        swim.tick(now);
        swim
    }

    /// This node as the others should know it.
    pub fn local_update(&self) -> Update {
        let state = if self.left { State::Left } else { State::Alive };
        Update::own(self.id, self.run, self.version, state, self.addr)
    }

    /// Members that should receive broadcasts (alive or suspect), with their addresses.
    pub fn reachable(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.members
            .iter()
            .filter(|(_, e)| e.update.state.is_live())
            .map(|(&id, e)| (id, e.update.addr))
    }

    /// Where `id` listens, if it is a live member.
    pub fn address(&self, id: NodeId) -> Option<SocketAddr> {
        self.members
            .get(&id)
            .filter(|e| e.update.state.is_live())
            .map(|e| e.update.addr)
    }

    /// The address a member was last known at, live or not.
    pub fn last_address(&self, id: NodeId) -> Option<SocketAddr> {
        self.members.get(&id).map(|e| e.update.addr)
    }

    /// The state of a member as known here.
    pub fn state_of(&self, id: NodeId) -> Option<(u64, State)> {
        self.members
            .get(&id)
            .map(|e| (e.update.run, e.update.state))
    }

    /// This node's local health: 0 when its own probes are answered; up to
    /// `health_max` when it misses acks itself (its timings are then scaled
    /// by `1 + health`).
    pub fn health(&self) -> u32 {
        self.health
    }

    /// Members known, this node excluded.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Everything known, this node included, for a full state exchange.
    pub fn full_state(&self) -> Vec<Update> {
        std::iter::once(self.local_update())
            .chain(self.members.values().map(|e| e.update.clone()))
            .collect()
    }

    /// What the driver must do now.
    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.outputs.drain(..)
    }

    /// Whether there is something for the driver to do.
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// When [`Swim::tick`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut next = self.next_probe.min(self.next_rejoin).min(self.next_sync);
        if !self.news.is_empty() {
            next = next.min(self.next_gossip);
        }
        for probe in self.probes.iter().filter(|p| !p.acked) {
            let due = if probe.indirect_sent {
                probe.started + self.scaled(self.config.probe_interval)
            } else {
                probe.started + self.scaled(self.config.probe_timeout)
            };
            next = next.min(due);
        }
        for relay in self.relays.values() {
            next = next.min(relay.nack_at.unwrap_or(relay.expires));
        }
        let (due, any_dead) = self.members_due.unwrap_or_else(|| self.members_deadline());
        if let Some(due) = due {
            next = next.min(due);
        }
        if any_dead {
            next = next.min(self.next_dead_contact);
        }
        next
    }

    /// The members' earliest deadline (suspicion, death, forgetting), and
    /// whether any member is dead: a scan of every member, which
    /// [`Swim::next_deadline`] reuses until something can make a deadline
    /// earlier (a sign of life only makes them later).
    fn members_deadline(&self) -> (Option<Instant>, bool) {
        let live = self.live_count();
        let mut any_dead = false;
        let mut next: Option<Instant> = None;
        for entry in self.members.values() {
            let due = match entry.update.state {
                State::Alive => match entry.failing_since {
                    Some(since) => self.suspect_at(since, entry.last_heard),
                    None => continue,
                },
                State::Suspect => match &entry.suspicion {
                    Some(suspicion) => self.suspicion_deadline(suspicion, live),
                    None => continue,
                },
                State::Dead | State::Left => {
                    any_dead |= entry.update.state == State::Dead;
                    entry.since + self.config.forget_after
                }
            };
            next = Some(next.map_or(due, |next| next.min(due)));
        }
        (next, any_dead)
    }

    /// Something may have made a member's deadline earlier.
    fn members_changed(&mut self) {
        self.members_due = None;
    }

    /// Whether this node has left: its timers have nothing more to do.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Leaves the cluster: the news goes to a few members at once.
    pub fn leave(&mut self) {
        self.left = true;
        self.version = self.version.saturating_add(1);
        let update = self.local_update();
        self.queue_news(update);
        let targets: Vec<SocketAddr> = self.reachable().map(|(_, addr)| addr).collect();
        for addr in targets {
            let packet = self.packet(Vec::new());
            self.outputs.push(Output::Send { to: addr, packet });
        }
    }

    /// Runs the timers.
    pub fn tick(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.check_probes(now);
        if now >= self.next_probe {
            self.next_probe = now + self.scaled(self.config.probe_interval);
            self.start_probes(now);
        }
        if now >= self.next_gossip && !self.news.is_empty() {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip(now);
        }
        if now >= self.next_rejoin {
            self.next_rejoin = now + self.config.rejoin_interval;
            // Seeds that are live members need no re-join.
            let live: Vec<SocketAddr> = self.reachable().map(|(_, addr)| addr).collect();
            for seed in self.seeds.clone() {
                if !live.contains(&seed) {
                    self.outputs.push(Output::Sync { addr: seed });
                }
            }
        }
        if now >= self.next_sync {
            self.next_sync = now + self.config.sync_interval;
            let live: Vec<SocketAddr> = self.reachable().map(|(_, addr)| addr).collect();
            if let Some(addr) = live.choose(&mut self.rng) {
                self.outputs.push(Output::Sync { addr: *addr });
            }
        }
        if now >= self.next_dead_contact {
            self.next_dead_contact = now + self.config.dead_contact_interval;
            self.contact_the_dead(now);
        }
        self.check_relays(now);
        // The members are scanned only when one of them may be due.
        let due = match self.members_due {
            None => true,
            Some((due, _)) => due.is_some_and(|due| due <= now),
        };
        if due {
            self.check_members(now);
            self.members_due = Some(self.members_deadline());
        }
    }

    /// `duration` scaled by this node's local health.
    fn scaled(&self, duration: Duration) -> Duration {
        duration * (1 + self.health)
    }

    fn live_count(&self) -> usize {
        self.members
            .values()
            .filter(|e| e.update.state.is_live())
            .count()
            + 1
    }

    /// When a suspicion turns into death (both bounds times `log10(members)`
    /// past ten members): `suspicion_max` with no confirmation, shrinking
    /// (logarithmically, as in Lifeguard) to
    /// `suspicion_timeout` with `confirmations` of them, or with as many as
    /// there are other members to confirm it.
    fn suspicion_deadline(&self, suspicion: &Suspicion, live: usize) -> Instant {
        let expected = self.config.confirmations.min(live.saturating_sub(2));
        let confirmed = suspicion.by.len().saturating_sub(1);
        // News takes longer to reach everyone in a larger cluster: a
        // suspicion waits longer there (as in memberlist), so that the
        // member's refutation reaches every node first.
        let spread = (live as f64).log10().max(1.0);
        let (min, max) = (
            self.config.suspicion_timeout.mul_f64(spread),
            self.config.suspicion_max.mul_f64(spread),
        );
        let timeout = if expected == 0 || confirmed >= expected || max <= min {
            min
        } else {
            let fraction = ((confirmed + 1) as f64).ln() / ((expected + 1) as f64).ln();
            max.saturating_sub((max - min).mul_f64(fraction)).max(min)
        };
        suspicion.started + timeout
    }

    /// Suspects members whose probes keep failing; declares overdue suspects
    /// dead; forgets long-gone members.
    fn check_members(&mut self, now: Instant) {
        let live = self.live_count();
        let mut changed = Vec::new();
        let mut forgotten = Vec::new();
        for (&id, entry) in self.members.iter() {
            match entry.update.state {
                State::Alive
                    if entry
                        .failing_since
                        .is_some_and(|since| now >= self.suspect_at(since, entry.last_heard)) =>
                {
                    changed.push(Update {
                        state: State::Suspect,
                        by: self.id,
                        ..entry.update.clone()
                    });
                }
                State::Suspect
                    if entry
                        .suspicion
                        .as_ref()
                        .is_some_and(|s| now >= self.suspicion_deadline(s, live)) =>
                {
                    changed.push(Update {
                        state: State::Dead,
                        by: self.id,
                        ..entry.update.clone()
                    });
                }
                State::Dead | State::Left
                    if now.saturating_duration_since(entry.since) >= self.config.forget_after =>
                {
                    forgotten.push(id);
                }
                _ => {}
            }
        }
        for id in forgotten {
            self.members.remove(&id);
        }
        for update in changed {
            let (id, addr) = (update.id, update.addr);
            self.apply(now, update, None);
            // The member hears our verdict from us at once: if it is alive,
            // it refutes now rather than when the gossip happens to reach it.
            self.tell(now, id, addr);
        }
    }

    /// Sends `id` (at `addr`) the news of its own suspicion or death, at most
    /// once per probe interval.
    fn tell(&mut self, now: Instant, id: NodeId, addr: SocketAddr) {
        let Some(entry) = self.members.get_mut(&id) else {
            return;
        };
        if entry.update.state == State::Alive
            || entry.update.state == State::Left
            || entry
                .told
                .is_some_and(|told| now < told + self.config.probe_interval)
        {
            return;
        }
        entry.told = Some(now);
        let packet = self.packet_for(id, Vec::new());
        self.outputs.push(Output::Send { to: addr, packet });
    }

    /// Pings one member declared dead, with the news of its death: one that
    /// is alive after all (a healed partition, a lost path) refutes.
    fn contact_the_dead(&mut self, now: Instant) {
        let dead: Vec<(NodeId, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, e)| e.update.state == State::Dead)
            .map(|(&id, e)| (id, e.update.addr))
            .collect();
        if let Some(&(id, addr)) = dead.choose(&mut self.rng) {
            let seq = self.next_seq();
            let packet = self.packet_for(id, vec![Message::Ping { seq, target: id }]);
            self.outputs.push(Output::Send { to: addr, packet });
            if let Some(entry) = self.members.get_mut(&id) {
                entry.told = Some(now);
            }
        }
    }

    /// Relays whose target stayed silent: the requester is told (Nack).
    fn check_relays(&mut self, now: Instant) {
        let mut nacks = Vec::new();
        self.relays.retain(|_, relay| {
            if relay.nack_at.is_some_and(|at| now >= at) {
                relay.nack_at = None;
                nacks.push((relay.requester, relay.requester_seq));
            }
            relay.expires > now
        });
        for (to, seq) in nacks {
            let packet = self.packet(vec![Message::Nack { seq }]);
            self.outputs.push(Output::Send { to, packet });
        }
    }

    /// Runs the probes in progress: indirect pings and the TCP probe after
    /// the timeout, failure at the end.
    fn check_probes(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.probes.len() {
            let probe = self.probes[index].clone();
            if probe.acked {
                self.probes.swap_remove(index);
                if self.health > 0 {
                    // Shorter timings: deadlines may come sooner.
                    self.health -= 1;
                    self.members_changed();
                }
                continue;
            }
            if now >= probe.started + self.scaled(self.config.probe_interval) {
                self.probes.swap_remove(index);
                self.probe_failed(&probe);
                continue;
            }
            index += 1;
            if probe.indirect_sent || now < probe.started + self.scaled(self.config.probe_timeout) {
                continue;
            }
            let Some(target) = self
                .members
                .get(&probe.target)
                .filter(|e| e.update.run == probe.run)
                .map(|e| e.update.clone())
            else {
                continue;
            };
            let mut helpers: Vec<SocketAddr> = self
                .members
                .iter()
                .filter(|&(&id, e)| id != probe.target && e.update.state == State::Alive)
                .map(|(_, e)| e.update.addr)
                .collect();
            helpers.shuffle(&mut self.rng);
            helpers.truncate(self.config.indirect_probes);
            if let Some(p) = self.probes.iter_mut().find(|p| p.seq == probe.seq) {
                p.indirect_sent = true;
                p.helpers = helpers.len();
            }
            for helper in helpers {
                let packet = self.packet(vec![Message::PingReq {
                    seq: probe.seq,
                    target: probe.target,
                    addr: target.addr,
                }]);
                self.outputs.push(Output::Send { to: helper, packet });
            }
            self.outputs.push(Output::StreamProbe {
                target: probe.target,
                seq: probe.seq,
                update: target,
            });
        }
    }

    /// A probe got no answer by any path.
    fn probe_failed(&mut self, probe: &Probe) {
        if self.failed.len() >= MAX_REPROBES * 4 {
            self.failed.pop_front();
        }
        self.failed.push_back((probe.seq, probe.target, probe.run));
        self.members_changed();
        // Not one helper even said it failed too: this node may be the one
        // cut off, so it slows down (Lifeguard's local health). A helper that
        // answers shows that this node is heard; one that does not may be
        // on the far side of a partition.
        if probe.helpers > 0 && probe.nacks == 0 {
            self.health = (self.health + 1).min(self.config.health_max);
        }
        let id = self.id;
        let Some(entry) = self.members.get_mut(&probe.target) else {
            return;
        };
        if entry.update.run != probe.run {
            // The member restarted meanwhile: the failure was its old run's.
            return;
        }
        match entry.update.state {
            State::Alive => {
                entry.failing_since.get_or_insert(probe.started);
            }
            State::Suspect => {
                // Our own failed probe confirms someone else's suspicion.
                let update = Update {
                    by: id,
                    ..entry.update.clone()
                };
                self.confirm(update);
            }
            _ => {}
        }
    }

    /// Sends the news to a few random members: live ones, and those declared
    /// dead a short while ago, so that a member wrongly declared dead learns it
    /// and refutes.
    fn gossip(&mut self, now: Instant) {
        let recent = self.config.suspicion_max * 4;
        let mut targets: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|e| {
                e.update.state.is_live()
                    || (e.update.state == State::Dead
                        && now.saturating_duration_since(e.since) < recent)
            })
            .map(|e| e.update.addr)
            .collect();
        targets.shuffle(&mut self.rng);
        targets.truncate(self.config.gossip_fanout);
        for to in targets {
            if self.news.is_empty() {
                break;
            }
            let packet = self.packet(Vec::new());
            self.outputs.push(Output::Send { to, packet });
        }
    }

    /// When a member whose probes have failed since `failing_since`, last
    /// heard from at `last_heard`, is suspected: once its probes have failed
    /// for `suspect_after` less one probe timeout (so a member that stops
    /// answering for less than that, a paused process, is not suspected even
    /// when a probe started just as it stopped), and never before
    /// `suspect_after` of silence. Scaled by local health.
    fn suspect_at(&self, failing_since: Instant, last_heard: Instant) -> Instant {
        let failing = self.scaled(
            self.config
                .suspect_after
                .saturating_sub(self.config.probe_timeout),
        );
        (failing_since + failing).max(last_heard + self.scaled(self.config.suspect_after))
    }

    /// Probes the next member of the round robin, and again every member
    /// whose last probe failed (to clear or confirm it without holding up the
    /// round robin). The round robin takes two steps when one step would
    /// leave members unprobed for longer than `suspect_after`, and one more
    /// while members are failing (at most three): one failure is often not
    /// alone (a partition, a lost switch), and the others are found sooner.
    fn start_probes(&mut self, now: Instant) {
        let failing: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, e)| e.update.state == State::Alive && e.failing_since.is_some())
            .map(|(&id, _)| id)
            .take(MAX_REPROBES)
            .collect();
        // A round robin longer than `suspect_after` would leave a silent
        // member unprobed for longer than that: it takes two steps then.
        let members = self.live_count().saturating_sub(1) as u32;
        let base = if self.config.probe_interval * members > self.config.suspect_after {
            2
        } else {
            1
        };
        let steps = (base + failing.len()).min(3);
        for target in failing {
            self.probe_member(now, target);
        }
        for _ in 0..steps {
            if self.probe_order.is_empty() {
                self.probe_order = self
                    .members
                    .iter()
                    .filter(|(_, e)| e.update.state.is_live())
                    .map(|(&id, _)| id)
                    .collect();
                self.probe_order.shuffle(&mut self.rng);
            }
            while let Some(target) = self.probe_order.pop() {
                if self.probe_member(now, target) {
                    break;
                }
            }
        }
    }

    /// Pings `target` if it is live and not being probed already.
    fn probe_member(&mut self, now: Instant, target: NodeId) -> bool {
        if self.probes.iter().any(|p| p.target == target) {
            return false;
        }
        let Some(entry) = self
            .members
            .get(&target)
            .filter(|e| e.update.state.is_live())
        else {
            return false;
        };
        let (run, addr) = (entry.update.run, entry.update.addr);
        let seq = self.next_seq();
        self.probes.push(Probe {
            target,
            run,
            seq,
            started: now,
            indirect_sent: false,
            acked: false,
            helpers: 0,
            nacks: 0,
        });
        // A suspect learns of its suspicion from every probe of it.
        let packet = self.packet_for(target, vec![Message::Ping { seq, target }]);
        self.outputs.push(Output::Send { to: addr, packet });
        true
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// A packet from this node with `messages` and as much news as fits.
    fn packet(&mut self, messages: Vec<Message>) -> Packet {
        self.packet_with(messages, None)
    }

    /// A packet to `target` that carries, first, what this node knows of it
    /// when that is a suspicion or a death, so that it can refute.
    fn packet_for(&mut self, target: NodeId, messages: Vec<Message>) -> Packet {
        let about = self
            .members
            .get(&target)
            .filter(|e| matches!(e.update.state, State::Suspect | State::Dead))
            .map(|e| e.update.clone());
        self.packet_with(messages, about)
    }

    fn packet_with(&mut self, messages: Vec<Message>, first: Option<Update>) -> Packet {
        let mut packet = Packet {
            from: self.id,
            run: self.run,
            messages,
            updates: Vec::new(),
        };
        let mut room = MAX_PACKET.saturating_sub(packet.encoded_len());
        if let Some(update) = first {
            room = room.saturating_sub(update.encoded_len());
            packet.updates.push(update);
        }
        // Freshest news (most sends left) first.
        self.news.sort_by_key(|(_, left)| std::cmp::Reverse(*left));
        for (update, left) in self.news.iter_mut() {
            let len = update.encoded_len();
            if len > room || packet.updates.len() >= u8::MAX as usize {
                continue;
            }
            if packet.updates.first() == Some(update) {
                continue;
            }
            room -= len;
            *left -= 1;
            packet.updates.push(update.clone());
        }
        self.news.retain(|(_, left)| *left > 0);
        packet
    }

    fn queue_news(&mut self, update: Update) {
        let live = self.reachable().count() as f64;
        let sends = self.config.retransmit_mult * ((live + 2.0).log10().ceil() as u32).max(1);
        self.news.retain(|(queued, _)| queued.id != update.id);
        self.news.push((update, sends));
    }

    /// A gossip packet that passed authentication and replay checks.
    pub fn handle_packet(&mut self, now: Instant, from_addr: SocketAddr, packet: Packet) {
        if self.left || packet.from == self.id {
            return;
        }
        let Packet {
            from,
            run,
            messages,
            updates,
        } = packet;
        for update in updates {
            self.apply(now, update, Some(from_addr));
        }
        self.heard_from(now, from, run, from_addr);
        for message in messages {
            match message {
                Message::Ping { seq, target } => {
                    // A ping meant for another node (an old address) gets no ack.
                    if target == self.id {
                        let packet = self.packet(vec![Message::Ack { seq }]);
                        self.outputs.push(Output::Send {
                            to: from_addr,
                            packet,
                        });
                    }
                }
                Message::Ack { seq } => self.on_ack(now, seq),
                Message::Nack { seq } => {
                    if let Some(probe) = self.probes.iter_mut().find(|p| p.seq == seq) {
                        probe.nacks += 1;
                    }
                }
                Message::PingReq { seq, target, addr } => {
                    if self.relays.len() >= MAX_RELAYS {
                        continue;
                    }
                    let relay_seq = self.next_seq();
                    self.relays.insert(
                        relay_seq,
                        Relay {
                            requester: from_addr,
                            requester_seq: seq,
                            nack_at: Some(now + self.config.probe_timeout * 3 / 4),
                            expires: now + self.config.probe_interval * 2,
                        },
                    );
                    let packet = self.packet_for(
                        target,
                        vec![Message::Ping {
                            seq: relay_seq,
                            target,
                        }],
                    );
                    self.outputs.push(Output::Send { to: addr, packet });
                }
            }
        }
    }

    fn on_ack(&mut self, now: Instant, seq: u32) {
        if let Some(relay) = self.relays.remove(&seq) {
            let packet = self.packet(vec![Message::Ack {
                seq: relay.requester_seq,
            }]);
            self.outputs.push(Output::Send {
                to: relay.requester,
                packet,
            });
            return;
        }
        let probe = match self.probes.iter_mut().find(|p| p.seq == seq) {
            Some(probe) => {
                probe.acked = true;
                Some((probe.target, probe.run))
            }
            // A late ack of a probe that failed is still a sign of life.
            None => self
                .failed
                .iter()
                .find(|(failed, ..)| *failed == seq)
                .map(|&(_, target, run)| (target, run)),
        };
        if let Some((target, run)) = probe
            && let Some(entry) = self.members.get_mut(&target)
            && entry.update.run == run
        {
            entry.failing_since = None;
            entry.last_heard = now;
        }
    }

    /// A probe over TCP from `from` (run `run`, at `addr`) carrying its news
    /// of this node; the answer to send back is this node's own state, after
    /// refuting whatever needed it.
    pub fn stream_probe(
        &mut self,
        now: Instant,
        from: NodeId,
        run: u64,
        addr: SocketAddr,
        update: Update,
    ) -> Update {
        if !self.left && from != self.id {
            self.heard_from(now, from, run, addr);
            if update.id == self.id {
                self.apply(now, update, Some(addr));
            }
        }
        self.local_update()
    }

    /// The answer to a probe over TCP: `update` is the member's own state.
    pub fn stream_ack(&mut self, now: Instant, from: NodeId, seq: u32, update: Update) {
        if self.left || update.id != from || from == self.id {
            return;
        }
        let run = update.run;
        self.apply(now, update, None);
        if let Some(probe) = self
            .probes
            .iter_mut()
            .find(|p| p.seq == seq && p.target == from && p.run == run)
        {
            probe.acked = true;
        }
        // A late answer is still a sign of life after the probe that failed.
        if let Some(entry) = self.members.get_mut(&from)
            && entry.update.run == run
        {
            entry.failing_since = None;
            entry.last_heard = now;
        }
    }

    /// Direct evidence that `id` (run `run`) is alive: a packet or an
    /// authenticated connection from it.
    fn heard_from(&mut self, now: Instant, id: NodeId, run: u64, addr: SocketAddr) {
        match self.members.get_mut(&id) {
            Some(entry) if entry.update.run == run => {
                entry.last_heard = now;
                entry.failing_since = None;
                match entry.update.state {
                    State::Suspect => self.tell(now, id, addr),
                    State::Dead => {
                        // Reachable after all: it learns of its death from us,
                        // and a state exchange merges what each side missed.
                        self.tell(now, id, addr);
                        if now >= self.next_heal_sync {
                            self.next_heal_sync = now + self.config.probe_interval * 2;
                            self.outputs.push(Output::Sync { addr });
                        }
                    }
                    _ => {}
                }
            }
            Some(entry) if entry.update.run > run => {}
            _ => {
                // Not known (or an older run): learn it from the sender itself.
                self.apply(now, Update::own(id, run, 0, State::Alive, addr), Some(addr));
            }
        }
    }

    /// The driver saw a connection with `id` close without a departure (a
    /// crashed process closes its sockets): probe it now rather than when
    /// the round robin reaches it.
    pub fn connection_lost(&mut self, now: Instant, id: NodeId) {
        if !self.left {
            self.probe_member(now, id);
        }
    }

    /// An authenticated TCP connection from `id`, listening at `addr`.
    pub fn contact(&mut self, now: Instant, id: NodeId, run: u64, addr: SocketAddr) {
        if id != self.id && !self.left {
            self.heard_from(now, id, run, addr);
        }
    }

    /// A full state received from another node (by a sync over TCP).
    pub fn merge_state(&mut self, now: Instant, updates: Vec<Update>) {
        if self.left {
            return;
        }
        for update in updates {
            self.apply(now, update, None);
        }
    }

    /// News that this node is suspect or dead: refuted at once with a higher
    /// version, sent straight to whoever said it and to whoever suspects it.
    /// News older than a refutation already made is answered the same way
    /// (its sender missed the refutation), without a new version.
    fn refute(&mut self, update: Update, source: Option<SocketAddr>) {
        if self.left || update.run != self.run || update.state == State::Alive {
            return;
        }
        if update.version >= self.version {
            self.version = update.version.saturating_add(1);
            // Being suspected is a sign that this node is slow or cut off.
            self.health = (self.health + 1).min(self.config.health_max);
            let refutation = self.local_update();
            self.queue_news(refutation);
        }
        let mut targets: Vec<SocketAddr> = source.into_iter().collect();
        if let Some(entry) = self.members.get(&update.by)
            && !targets.contains(&entry.update.addr)
        {
            targets.push(entry.update.addr);
        }
        for to in targets {
            let packet = self.packet_with(Vec::new(), Some(self.local_update()));
            self.outputs.push(Output::Send { to, packet });
        }
    }

    /// Another member's suspicion of a member already suspect here: the
    /// suspicion is shortened, and the confirmation spread once.
    fn confirm(&mut self, update: Update) {
        let max = self.config.confirmations + 1;
        let Some(entry) = self.members.get_mut(&update.id) else {
            return;
        };
        let Some(suspicion) = entry.suspicion.as_mut() else {
            return;
        };
        if suspicion.by.contains(&update.by) || suspicion.by.len() >= max {
            return;
        }
        suspicion.by.push(update.by);
        self.members_due = None;
        let news = Update {
            state: State::Suspect,
            ..update
        };
        self.queue_news(news);
    }

    /// Applies one piece of news if it is newer than what is known, and
    /// spreads it further; refutes news of this node's own suspicion or death.
    fn apply(&mut self, now: Instant, update: Update, source: Option<SocketAddr>) {
        if update.id == self.id {
            self.refute(update, source);
            return;
        }
        let mut update = update;
        let current = self.members.get(&update.id);
        if update.state == State::Dead && update.by != self.id && current.is_some() {
            // Another node's verdict is a suspicion here: the member may be
            // alive and reachable from here, and can refute it. (A member not
            // known here is recorded dead and never reported.)
            update.state = State::Suspect;
        }
        if let Some(entry) = current
            && entry.update.state == State::Suspect
            && update.state == State::Suspect
            && entry.update.run == update.run
            && entry.update.version == update.version
        {
            self.confirm(update);
            return;
        }
        let accept = match current {
            None => true,
            Some(entry) => supersedes(&update, &entry.update),
        };
        if !accept {
            return;
        }
        let state_changed =
            current.is_none_or(|e| e.update.state != update.state || e.update.run != update.run);
        let fresh = state_changed || current.is_some_and(|e| e.update.version != update.version);
        let was_reported = current.is_some_and(|e| e.reported);
        let was_live = current.is_some_and(|e| e.update.state.is_live());
        let entry = self.members.entry(update.id).or_insert_with(|| Entry {
            update: update.clone(),
            last_heard: now,
            since: now,
            failing_since: None,
            suspicion: None,
            told: None,
            reported: false,
        });
        if entry.update.run != update.run {
            entry.last_heard = now;
            entry.failing_since = None;
            entry.told = None;
        }
        if state_changed {
            entry.since = now;
        }
        if update.state == State::Alive {
            entry.failing_since = None;
        }
        if update.state == State::Suspect {
            if fresh || entry.suspicion.is_none() {
                entry.suspicion = Some(Suspicion {
                    started: now,
                    by: vec![update.by],
                });
            }
        } else {
            entry.suspicion = None;
        }
        entry.update = update.clone();
        self.members_due = None;
        // Members never seen alive are not reported dead or departed.
        let report = state_changed && (was_reported || update.state.is_live());
        if report {
            entry.reported = true;
            self.outputs.push(Output::Report {
                id: update.id,
                run: update.run,
                state: update.state.into(),
            });
        }
        if update.state.is_live() && !was_live {
            // A new live member joins the probe rotation at a random place.
            let at = self.rng.random_range(0..=self.probe_order.len());
            self.probe_order.insert(at, update.id);
        }
        let suspected_by_another = update.state == State::Suspect && update.by != self.id;
        let id = update.id;
        self.queue_news(update);
        if suspected_by_another {
            // Someone else suspects it: we probe it now, to confirm the
            // suspicion or to carry it to the member, which refutes.
            self.probe_order.retain(|&member| member != id);
            self.probe_member(now, id);
        }
    }
}

/// Failing members probed again at each interval, beside the round robin.
const MAX_REPROBES: usize = 3;

/// Indirect probes relayed for others at once (a flood of PingReqs cannot
/// make this node remember without bound).
const MAX_RELAYS: usize = 1024;

/// Whether `new` is newer news than `old` about the same member (SWIM's
/// precedence: a later run beats everything; within a run, departure is final,
/// alive needs a higher version, suspect and dead need at least the same).
fn supersedes(new: &Update, old: &Update) -> bool {
    if new.run != old.run {
        return new.run > old.run;
    }
    match (old.state, new.state) {
        (State::Left, _) => false,
        (_, State::Left) => true,
        (_, State::Alive) => new.version > old.version,
        (State::Alive, State::Suspect) => new.version >= old.version,
        (State::Suspect, State::Suspect) => new.version > old.version,
        (State::Dead, State::Suspect) => false,
        (State::Dead, State::Dead) => false,
        (_, State::Dead) => new.version >= old.version,
    }
}
