//! SWIM membership with suspicion, sans-IO.
//!
//! Every probe interval this node pings one member (round robin over a
//! shuffled list). A member that does not answer within the probe timeout is
//! pinged indirectly through a few others. A member whose probe failed and
//! that has been silent for `suspect_after` is suspected; a suspect that does
//! not refute within `suspicion_timeout` is declared dead. News about members
//! (alive, suspect, dead, left) rides on every packet, each piece a bounded
//! number of times. A member refutes a suspicion of itself by raising its
//! version. Full states are exchanged (over TCP, by the driver) with the seed
//! nodes at start and periodically, and with a random member from time to
//! time, so that a healed partition always merges.
//!
//! The state machine is driven by [`Swim::handle_packet`], [`Swim::contact`],
//! [`Swim::merge_state`] and [`Swim::tick`], and says what to do through
//! [`Swim::drain_outputs`]. It never reads a clock or touches a socket.

mod packet;
#[cfg(test)]
mod tests;

pub use packet::{
    DecodeError, GossipCodec, MAX_DATAGRAM, MAX_PACKET, Message, Packet, State, Update,
    decode_state, encode_state,
};

use coordinator_core::{MemberState, NodeId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Timing and fan-out of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwimConfig {
    /// One probe per interval.
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before indirect pings go out.
    pub probe_timeout: Duration,
    /// Members asked to ping a silent one on our behalf.
    pub indirect_probes: usize,
    /// A member whose probe failed is suspected once it has been silent this long.
    pub suspect_after: Duration,
    /// A suspect that does not refute within this time is dead.
    pub suspicion_timeout: Duration,
    /// Each piece of news is sent `retransmit_mult * ceil(log10(n + 2))` times.
    pub retransmit_mult: u32,
    /// While there is news, it is sent to `gossip_fanout` random members this often.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// How often the seed nodes are joined again (full state exchange).
    pub rejoin_interval: Duration,
    /// How often the full state is exchanged with a random member.
    pub sync_interval: Duration,
    /// How long dead and departed members are remembered.
    pub forget_after: Duration,
}

impl SwimConfig {
    /// Settings derived from the engine's: probes at the heartbeat interval,
    /// suspicion after `suspect_after` of silence, death `dead_after` after the
    /// last sign of life.
    pub fn from_timing(heartbeat: Duration, suspect_after: Duration, dead_after: Duration) -> Self {
        Self {
            probe_interval: heartbeat,
            probe_timeout: heartbeat / 2,
            indirect_probes: 3,
            suspect_after,
            suspicion_timeout: dead_after.saturating_sub(suspect_after).max(heartbeat),
            retransmit_mult: 4,
            gossip_interval: heartbeat / 2,
            gossip_fanout: 3,
            rejoin_interval: heartbeat * 20,
            sync_interval: heartbeat * 60,
            forget_after: Duration::from_secs(600),
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a gossip packet over UDP.
    Send { to: SocketAddr, packet: Packet },
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
struct Entry {
    update: Update,
    /// Last direct or indirect sign of life.
    last_heard: Instant,
    /// When `update.state` last changed.
    since: Instant,
    /// Start of the first of our probes of it that went unanswered, in a row.
    failing_since: Option<Instant>,
    /// Whether the engine has been told about this member.
    reported: bool,
}

#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    seq: u32,
    started: Instant,
    indirect_sent: bool,
    acked: bool,
}

/// A ping we send on behalf of another member's indirect probe.
#[derive(Clone, Debug)]
struct Relay {
    requester: SocketAddr,
    requester_seq: u32,
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
    probe: Option<Probe>,
    last_target: Option<NodeId>,
    next_probe: Instant,
    next_gossip: Instant,
    next_rejoin: Instant,
    next_sync: Instant,
    next_seq: u32,
    relays: HashMap<u32, Relay>,
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
            probe: None,
            last_target: None,
            next_probe: now,
            next_gossip: now,
            next_rejoin: now,
            next_sync: now + config.sync_interval,
            next_seq: 1,
            relays: HashMap::new(),
            outputs: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            left: false,
        };
        swim.tick(now);
        swim
    }

    /// This node as the others should know it.
    pub fn local_update(&self) -> Update {
        Update {
            id: self.id,
            run: self.run,
            version: self.version,
            state: if self.left { State::Left } else { State::Alive },
            addr: self.addr,
        }
    }

    /// Members that should receive broadcasts (alive or suspect), with their addresses.
    pub fn reachable(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.members
            .iter()
            .filter(|(_, e)| matches!(e.update.state, State::Alive | State::Suspect))
            .map(|(&id, e)| (id, e.update.addr))
    }

    /// Where `id` listens, if it is a live member.
    pub fn address(&self, id: NodeId) -> Option<SocketAddr> {
        self.members
            .get(&id)
            .filter(|e| matches!(e.update.state, State::Alive | State::Suspect))
            .map(|e| e.update.addr)
    }

    /// The state of a member as known here.
    pub fn state_of(&self, id: NodeId) -> Option<(u64, State)> {
        self.members
            .get(&id)
            .map(|e| (e.update.run, e.update.state))
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

    /// When [`Swim::tick`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut next = self.next_probe.min(self.next_rejoin).min(self.next_sync);
        if !self.news.is_empty() {
            next = next.min(self.next_gossip);
        }
        if let Some(probe) = &self.probe
            && !probe.acked
            && !probe.indirect_sent
        {
            next = next.min(probe.started + self.config.probe_timeout);
        }
        for entry in self.members.values() {
            let due = match entry.update.state {
                State::Alive => match entry.failing_since {
                    Some(since) => since + self.suspect_delay(),
                    None => continue,
                },
                State::Suspect => entry.since + self.config.suspicion_timeout,
                State::Dead | State::Left => entry.since + self.config.forget_after,
            };
            next = next.min(due);
        }
        next
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
        self.check_probe(now);
        if now >= self.next_probe {
            self.next_probe = now + self.config.probe_interval;
            self.start_probe(now);
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
            if let Some(addr) = live.get(self.rng.random_range(0..live.len().max(1))) {
                self.outputs.push(Output::Sync { addr: *addr });
            }
        }
        self.relays.retain(|_, relay| relay.expires > now);
        self.check_members(now);
    }

    /// Suspects silent members whose probe failed; declares overdue suspects
    /// dead; forgets long-gone members.
    fn check_members(&mut self, now: Instant) {
        let config = self.config;
        let suspect_delay = self.suspect_delay();
        let mut changed = Vec::new();
        let mut forgotten = Vec::new();
        for (&id, entry) in self.members.iter_mut() {
            match entry.update.state {
                State::Alive
                    if entry
                        .failing_since
                        .is_some_and(|since| now >= since + suspect_delay) =>
                {
                    changed.push(Update {
                        state: State::Suspect,
                        ..entry.update.clone()
                    });
                }
                State::Suspect
                    if now.saturating_duration_since(entry.since) >= config.suspicion_timeout =>
                {
                    changed.push(Update {
                        state: State::Dead,
                        ..entry.update.clone()
                    });
                }
                State::Dead | State::Left
                    if now.saturating_duration_since(entry.since) >= config.forget_after =>
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
            self.apply(now, update);
        }
    }

    /// Finishes the current probe: indirect pings after the timeout, failure at the end.
    fn check_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.clone() else {
            return;
        };
        if probe.acked {
            self.probe = None;
            return;
        }
        if now >= probe.started + self.config.probe_interval {
            self.probe = None;
            if let Some(entry) = self.members.get_mut(&probe.target) {
                entry.failing_since.get_or_insert(probe.started);
            }
            return;
        }
        if !probe.indirect_sent && now >= probe.started + self.config.probe_timeout {
            if let Some(p) = self.probe.as_mut() {
                p.indirect_sent = true;
            }
            let Some(target_addr) = self.members.get(&probe.target).map(|e| e.update.addr) else {
                return;
            };
            let mut helpers: Vec<SocketAddr> = self
                .members
                .iter()
                .filter(|&(&id, e)| id != probe.target && e.update.state == State::Alive)
                .map(|(_, e)| e.update.addr)
                .collect();
            helpers.shuffle(&mut self.rng);
            helpers.truncate(self.config.indirect_probes);
            for helper in helpers {
                let packet = self.packet(vec![Message::PingReq {
                    seq: probe.seq,
                    target: probe.target,
                    addr: target_addr,
                }]);
                self.outputs.push(Output::Send { to: helper, packet });
            }
        }
    }

    /// Sends the news to a few random members: live ones, and those declared
    /// dead a short while ago, so that a member wrongly declared dead learns it
    /// and refutes.
    fn gossip(&mut self, now: Instant) {
        let recent = self.config.suspicion_timeout * 4;
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

    /// How long probes must keep failing before the member is suspected: the
    /// first failed probe may have started up to one interval before the member
    /// stopped, so that no member is suspected before `suspect_after` of silence.
    fn suspect_delay(&self) -> Duration {
        self.config
            .suspect_after
            .saturating_sub(self.config.probe_interval)
    }

    fn start_probe(&mut self, now: Instant) {
        // A member whose probe failed is probed again at once, to clear or confirm it.
        let failing = self
            .members
            .iter()
            .filter(|(_, e)| e.update.state == State::Alive && e.failing_since.is_some())
            .map(|(&id, _)| id)
            .next();
        if let Some(target) = failing.filter(|&id| Some(id) != self.last_target) {
            self.probe_order.retain(|&id| id != target);
            self.probe_order.push(target);
        }
        if self.probe_order.is_empty() {
            self.probe_order = self
                .members
                .iter()
                .filter(|(_, e)| matches!(e.update.state, State::Alive | State::Suspect))
                .map(|(&id, _)| id)
                .collect();
            self.probe_order.shuffle(&mut self.rng);
        }
        while let Some(target) = self.probe_order.pop() {
            let Some(addr) = self.address(target) else {
                continue;
            };
            let seq = self.next_seq();
            self.last_target = Some(target);
            self.probe = Some(Probe {
                target,
                seq,
                started: now,
                indirect_sent: false,
                acked: false,
            });
            let packet = self.packet(vec![Message::Ping { seq, target }]);
            self.outputs.push(Output::Send { to: addr, packet });
            return;
        }
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// A packet from this node with `messages` and as much news as fits.
    fn packet(&mut self, messages: Vec<Message>) -> Packet {
        let mut packet = Packet {
            from: self.id,
            run: self.run,
            messages,
            updates: Vec::new(),
        };
        let mut room = MAX_PACKET.saturating_sub(packet.encoded_len());
        // Freshest news (most sends left) first.
        self.news.sort_by_key(|(_, left)| std::cmp::Reverse(*left));
        for (update, left) in self.news.iter_mut() {
            let len = update.encoded_len();
            if len > room || packet.updates.len() >= u8::MAX as usize {
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
            self.apply(now, update);
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
                Message::PingReq { seq, target, addr } => {
                    let relay_seq = self.next_seq();
                    self.relays.insert(
                        relay_seq,
                        Relay {
                            requester: from_addr,
                            requester_seq: seq,
                            expires: now + self.config.probe_interval * 2,
                        },
                    );
                    let packet = self.packet(vec![Message::Ping {
                        seq: relay_seq,
                        target,
                    }]);
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
        if let Some(probe) = self.probe.as_mut()
            && probe.seq == seq
        {
            probe.acked = true;
            let target = probe.target;
            if let Some(entry) = self.members.get_mut(&target) {
                entry.failing_since = None;
                entry.last_heard = now;
            }
        }
    }

    /// Direct evidence that `id` (run `run`) is alive: a packet or an
    /// authenticated connection from it.
    fn heard_from(&mut self, now: Instant, id: NodeId, run: u64, addr: SocketAddr) {
        match self.members.get_mut(&id) {
            Some(entry) if entry.update.run == run => {
                entry.last_heard = now;
                entry.failing_since = None;
            }
            Some(entry) if entry.update.run > run => {}
            _ => {
                // Not known (or an older run): learn it from the sender itself.
                self.apply(
                    now,
                    Update {
                        id,
                        run,
                        version: 0,
                        state: State::Alive,
                        addr,
                    },
                );
            }
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
            self.apply(now, update);
        }
    }

    /// Applies one piece of news if it is newer than what is known, and
    /// spreads it further; refutes news of this node's own suspicion or death.
    fn apply(&mut self, now: Instant, update: Update) {
        if update.id == self.id {
            if update.run == self.run
                && update.state != State::Alive
                && update.version >= self.version
                && !self.left
            {
                self.version = update.version.saturating_add(1);
                let refutation = self.local_update();
                self.queue_news(refutation);
            }
            return;
        }
        let mut update = update;
        let current = self.members.get(&update.id);
        if update.state == State::Dead
            && let Some(entry) = current
            && entry.update.run == update.run
            && entry.update.state.is_live()
            && entry.failing_since.is_none()
            && now.saturating_duration_since(entry.last_heard) <= self.suspect_delay()
        {
            // A death verdict about a member this node hears from directly
            // comes from the far side of a (healed) partition: treat it as a
            // suspicion, which the member refutes, instead of a death.
            update.state = State::Suspect;
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
        let was_reported = current.is_some_and(|e| e.reported);
        let was_live = current.is_some_and(|e| e.update.state.is_live());
        let entry = self.members.entry(update.id).or_insert_with(|| Entry {
            update: update.clone(),
            last_heard: now,
            since: now,
            failing_since: None,
            reported: false,
        });
        if entry.update.run != update.run {
            entry.last_heard = now;
            entry.failing_since = None;
        }
        if state_changed {
            entry.since = now;
        }
        if update.state == State::Alive {
            entry.failing_since = None;
        }
        entry.update = update.clone();
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
        self.queue_news(update);
    }
}

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
