//! The gossip on a simulated network, from a seed: a virtual clock, datagram
//! latency with jitter, random loss, one-way UDP cuts, two-way cuts (UDP and
//! TCP), crashes, restarts as a new run and pauses. TCP (probes over the
//! stream, state exchanges) is reliable but a lost segment costs a
//! retransmission timeout, as on a real network.
//!
//! Used by the protocol's tests and by `swim-scale`, which measures detection
//! time, false positives and bytes per member for 10 to 1,000 members.

use super::{Output, Packet, State, Swim, SwimConfig, Update};
use coordinator_core::{MemberState, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes a datagram adds around a packet's body (header, nonce, counter, tag).
pub const DATAGRAM_OVERHEAD: usize = 3 + 24 + 8 + 16;
/// The first retransmission timeout of a lost TCP segment (Linux's minimum).
const TCP_RTO: Duration = Duration::from_millis(200);

/// Where node `id` listens in the simulation.
pub fn addr(id: NodeId) -> SocketAddr {
    let id = id as u32;
    SocketAddr::from(([10, (id >> 16) as u8, (id >> 8) as u8, id as u8], 7911))
}

fn id_at(addr: SocketAddr) -> NodeId {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let [_, a, b, c] = ip.octets();
            (u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c)) as NodeId
        }
        std::net::IpAddr::V6(_) => 0,
    }
}

/// One simulated node.
pub struct SimNode {
    pub swim: Swim,
    pub run: u64,
    /// Every member state this node reported: (time since start, id, run, state).
    pub history: Vec<(Duration, NodeId, u64, MemberState)>,
    /// Datagram bytes sent.
    pub bytes_sent: u64,
    deadline: Instant,
    paused_until: Option<Instant>,
}

enum Event {
    Datagram {
        from: NodeId,
        to: NodeId,
        packet: Packet,
    },
    Probe {
        from: NodeId,
        run: u64,
        to: NodeId,
        seq: u32,
        update: Update,
    },
    ProbeAck {
        from: NodeId,
        to: NodeId,
        seq: u32,
        update: Update,
    },
}

struct Queued {
    due: Instant,
    order: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// Nodes on a simulated network.
pub struct Sim {
    pub config: SwimConfig,
    pub start: Instant,
    pub now: Instant,
    /// One-way delay of a datagram or a TCP segment…
    pub latency: Duration,
    /// …plus up to this much at random (datagrams may overtake each other).
    pub jitter: Duration,
    /// Probability that a datagram (or a TCP segment, which is then resent)
    /// between two nodes is lost…
    pub loss: f64,
    /// …when one of them is in this set (all nodes when empty).
    pub lossy: HashSet<NodeId>,
    /// (from, to) pairs whose datagrams and TCP connections are lost.
    pub cut: HashSet<(NodeId, NodeId)>,
    /// (from, to) pairs whose datagrams only are lost.
    pub udp_cut: HashSet<(NodeId, NodeId)>,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub largest_datagram: usize,
    /// Datagrams sent in all.
    pub datagrams: u64,
    rng: StdRng,
    queue: BinaryHeap<Reverse<Queued>>,
    order: u64,
    touched: Vec<NodeId>,
}

impl Sim {
    pub fn new(config: SwimConfig, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            config,
            start: now,
            now,
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(500),
            loss: 0.0,
            lossy: HashSet::new(),
            cut: HashSet::new(),
            udp_cut: HashSet::new(),
            nodes: BTreeMap::new(),
            largest_datagram: 0,
            datagrams: 0,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            order: 0,
            touched: Vec::new(),
        }
    }

    /// Time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Starts node `id` in run `run`, joining through `seeds`.
    pub fn start_node(&mut self, id: NodeId, run: u64, seeds: &[NodeId]) {
        let seeds = seeds.iter().map(|&s| addr(s)).collect();
        let seed = self.rng.random();
        let swim = Swim::new(self.config, id, run, addr(id), seeds, self.now, seed);
        self.nodes.insert(
            id,
            SimNode {
                swim,
                run,
                history: Vec::new(),
                bytes_sent: 0,
                deadline: self.now,
                paused_until: None,
            },
        );
        self.touched.push(id);
        self.pump();
    }

    /// Starts `n` nodes (1..=n) joining through node 1, and lets them settle.
    pub fn cluster(config: SwimConfig, n: NodeId, seed: u64) -> Self {
        let mut sim = Sim::new(config, seed);
        for id in 1..=n {
            sim.start_node(id, 1, &[1]);
        }
        sim.run(Duration::from_secs(3));
        sim
    }

    pub fn kill(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    /// Stops `id` from running for `duration` (what reaches it waits).
    pub fn pause(&mut self, id: NodeId, duration: Duration) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused_until = Some(self.now + duration);
        }
    }

    /// Cuts UDP and TCP both ways between the groups.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Drops every datagram that `id` sends (its TCP still works).
    pub fn cut_udp_from(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for other in others {
            self.udp_cut.insert((id, other));
        }
    }

    /// Ends every fault.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.udp_cut.clear();
        self.loss = 0.0;
        self.lossy.clear();
    }

    fn lost(&mut self, from: NodeId, to: NodeId) -> bool {
        self.loss > 0.0
            && (self.lossy.is_empty() || self.lossy.contains(&from) || self.lossy.contains(&to))
            && self.rng.random_bool(self.loss)
    }

    fn push(&mut self, due: Instant, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            due,
            order: self.order,
            event,
        }));
    }

    fn datagram_delay(&mut self) -> Duration {
        let jitter = self.jitter.as_nanos() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.random_range(0..jitter)
        };
        self.latency + Duration::from_nanos(extra)
    }

    /// A TCP segment's delay: lost segments are resent after a timeout that doubles.
    fn stream_delay(&mut self, from: NodeId, to: NodeId) -> Duration {
        let mut delay = self.latency;
        let mut rto = TCP_RTO;
        for _ in 0..8 {
            if !self.lost(from, to) {
                break;
            }
            delay += rto;
            rto *= 2;
        }
        delay
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Runs the outputs of the nodes touched since the last pump.
    fn pump(&mut self) {
        while let Some(id) = self.touched.pop() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let outputs: Vec<Output> = node.swim.drain_outputs().collect();
            node.deadline = if node.swim.has_left() {
                // Its timers stop.
                self.now + Duration::from_secs(3600)
            } else {
                node.swim.next_deadline().max(self.now)
            };
            for output in outputs {
                self.output(id, output);
            }
        }
    }

    fn output(&mut self, id: NodeId, output: Output) {
        match output {
            Output::Send { to, packet } => {
                let size = packet.encoded_len() + DATAGRAM_OVERHEAD;
                self.largest_datagram = self.largest_datagram.max(size);
                self.datagrams += 1;
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.bytes_sent += size as u64;
                }
                let to = id_at(to);
                if self.blocked(id, to) || self.udp_cut.contains(&(id, to)) || self.lost(id, to) {
                    return;
                }
                let due = self.now + self.datagram_delay();
                self.push(
                    due,
                    Event::Datagram {
                        from: id,
                        to,
                        packet,
                    },
                );
            }
            Output::StreamProbe {
                target,
                seq,
                update,
            } => {
                if self.blocked(id, target) || self.blocked(target, id) {
                    return;
                }
                let run = self.nodes.get(&id).map_or(0, |n| n.run);
                let due = self.now + self.stream_delay(id, target);
                self.push(
                    due,
                    Event::Probe {
                        from: id,
                        run,
                        to: target,
                        seq,
                        update,
                    },
                );
            }
            Output::Sync { addr: to } => {
                let peer = id_at(to);
                if self.blocked(id, peer) || self.blocked(peer, id) {
                    return;
                }
                let now = self.now;
                let Some(mine) = self.nodes.get(&id).map(|n| n.swim.full_state()) else {
                    return;
                };
                let Some(peer_node) = self.nodes.get_mut(&peer) else {
                    return;
                };
                if peer_node.paused_until.is_some() {
                    return;
                }
                peer_node.swim.contact(now, id, mine[0].run, addr(id));
                peer_node.swim.merge_state(now, mine);
                let theirs = peer_node.swim.full_state();
                let node = self.nodes.get_mut(&id).expect("the node syncing exists");
                node.swim.contact(now, peer, theirs[0].run, theirs[0].addr);
                node.swim.merge_state(now, theirs);
                self.touched.push(peer);
                self.touched.push(id);
            }
            Output::Report {
                id: member,
                run,
                state,
            } => {
                let elapsed = self.elapsed();
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.history.push((elapsed, member, run, state));
                }
            }
        }
    }

    fn deliver(&mut self, event: Event) {
        let now = self.now;
        let to = match &event {
            Event::Datagram { to, .. } | Event::Probe { to, .. } | Event::ProbeAck { to, .. } => {
                *to
            }
        };
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if let Some(until) = node.paused_until.filter(|&until| until > now) {
            // A paused process reads it when it wakes up.
            self.push(until, event);
            return;
        }
        node.paused_until = None;
        match event {
            Event::Datagram { from, packet, .. } => {
                node.swim.handle_packet(now, addr(from), packet);
            }
            Event::Probe {
                from,
                run,
                seq,
                update,
                ..
            } => {
                let answer = node.swim.stream_probe(now, from, run, addr(from), update);
                self.touched.push(to);
                if self.blocked(to, from) {
                    return;
                }
                let due = now + self.stream_delay(to, from);
                self.push(
                    due,
                    Event::ProbeAck {
                        from: to,
                        to: from,
                        seq,
                        update: answer,
                    },
                );
            }
            Event::ProbeAck {
                from, seq, update, ..
            } => {
                node.swim.stream_ack(now, from, seq, update);
            }
        }
        self.touched.push(to);
    }

    /// Advances the virtual clock by `duration`, running every event and timer.
    pub fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            let next_event = self.queue.peek().map(|Reverse(q)| q.due);
            let next_timer = self
                .nodes
                .values()
                .map(|n| n.paused_until.unwrap_or(n.deadline))
                .min();
            let next = match (next_event, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(next) => next,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            while self
                .queue
                .peek()
                .is_some_and(|Reverse(q)| q.due <= self.now)
            {
                let Reverse(queued) = self.queue.pop().expect("peeked");
                self.deliver(queued.event);
            }
            let now = self.now;
            for (&id, node) in self.nodes.iter_mut() {
                if node.paused_until.is_some_and(|until| until <= now) {
                    node.paused_until = None;
                }
                if node.paused_until.is_none() && node.deadline <= now && !node.swim.has_left() {
                    node.swim.tick(now);
                    // A timer with nothing to do yet must not spin the clock.
                    node.deadline = node
                        .swim
                        .next_deadline()
                        .max(now + Duration::from_micros(100));
                    self.touched.push(id);
                }
            }
            self.pump();
        }
        self.now = end;
    }

    /// Runs until `done` holds (checked every `step`) or `limit` has passed;
    /// the time it took, if it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let started = self.now;
        while self.now < started + limit {
            if done(self) {
                return Some(self.now - started);
            }
            self.run(step);
        }
        done(self).then(|| self.now - started)
    }

    /// `of`'s view of `member`.
    pub fn view(&self, of: NodeId, member: NodeId) -> Option<State> {
        self.nodes[&of]
            .swim
            .state_of(member)
            .map(|(_, state)| state)
    }

    /// Whether every other node sees `member` in `state`.
    pub fn all_see(&self, member: NodeId, state: State) -> bool {
        self.nodes
            .keys()
            .filter(|&&id| id != member)
            .all(|&id| self.view(id, member) == Some(state))
    }

    /// Whether every node sees every other one alive (in its current run).
    pub fn all_alive(&self) -> bool {
        self.nodes.iter().all(|(&of, _)| {
            self.nodes.iter().all(|(&member, m)| {
                member == of || self.nodes[&of].swim.state_of(member) == Some((m.run, State::Alive))
            })
        })
    }

    /// When `of` first reported `member` in `state` (since the start).
    pub fn first_report(&self, of: NodeId, member: NodeId, state: MemberState) -> Option<Duration> {
        self.nodes[&of]
            .history
            .iter()
            .find(|(_, id, _, s)| *id == member && *s == state)
            .map(|(at, ..)| *at)
    }

    /// Reports of `state` about members that are running, made by running
    /// nodes, after `since` (false suspicions or deaths).
    pub fn false_reports(&self, state: MemberState, since: Duration) -> usize {
        self.nodes
            .values()
            .map(|node| {
                node.history
                    .iter()
                    .filter(|(at, id, run, s)| {
                        *at >= since
                            && *s == state
                            && self.nodes.get(id).is_some_and(|m| m.run == *run)
                    })
                    .count()
            })
            .sum()
    }
}
