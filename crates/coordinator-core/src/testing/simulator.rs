//! The deterministic simulator: the engine cores of several nodes over a
//! simulated network, on a virtual clock, driven from one seed.
//!
//! A run draws a fault schedule and a workload from its seed. Some nodes are
//! *victims*: every fault touches a victim or a link to or from one (so that
//! the others can be held to "never declared dead"). The faults:
//!
//! * frames dropped, duplicated, delayed and reordered on a victim's links;
//! * one-way and two-way partitions, healed later;
//! * crashes, and restarts as a new incarnation (sometimes within 200 ms);
//! * pauses (a process stopped: nothing read, no timer run, then all at once);
//! * the partial failures real carriers produce on a victim's sends: a
//!   publish that reaches some receivers and then fails, a send that arrives
//!   but is reported failed, a send reported sent and lost, a stalled send
//!   that times out and may still arrive.
//!
//! Then faults stop and the workload stops, and the cluster is given a quiet
//! period to settle. The checks, during and after the run:
//!
//! * per receiver, sender run and stream: each message is delivered at most
//!   once, in the sender's order;
//! * every message a receiver did not get, in the range of numbers it has
//!   accounted for, is in a gap it reported (nothing lost silently); and
//!   after the quiet period every live receiver has accounted for every
//!   broadcast each live sender published;
//! * every request settles (reply, error or time-out) by its deadline, once;
//! * every message that waited its turn behind another to the same node is
//!   settled once (sent or failed, its caller told);
//! * no node declares dead a node that no fault touched, when no fault
//!   touched the link between them or itself;
//! * at the end of the quiet period every live node sees every live node
//!   alive in its current run, and no crashed one alive;
//! * memory stays within its byte bounds after every step.
//!
//! The same seed replays the same run exactly: a failure prints the seed and
//! the command that replays it (`coordinator simulate --seed S`).

use crate::api::*;
use crate::engine::Settings;
use crate::engine::core::{Broadcasting, Core, Output, Sending, Transmit};
use crate::error::{Error, TransportError};
use crate::sequence::Gap;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What a run is made of.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Nodes in the cluster (at least 2).
    pub nodes: usize,
    /// Virtual time with faults and workload.
    pub active: Duration,
    /// Virtual time after it, without either, for the cluster to settle.
    pub quiet: Duration,
    /// Whether faults are injected at all.
    pub faults: bool,
}

impl Options {
    /// A run of `nodes` nodes from `seed`, with faults, 6 s active and 3 s quiet.
    pub fn new(seed: u64, nodes: usize) -> Self {
        Self {
            seed,
            nodes: nodes.max(2),
            active: Duration::from_secs(6),
            quiet: Duration::from_secs(3),
            faults: true,
        }
    }
}

/// What a run did and what it found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    /// Broken promises, each with the virtual time it was seen.
    pub violations: Vec<String>,
    pub broadcasts: u64,
    pub messages: u64,
    pub requests: u64,
    pub delivered: u64,
    pub gaps: u64,
    pub lost: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub partial_sends: u64,
    /// Frames that carried several messages to one node.
    pub direct_batches: u64,
    pub deaths: u64,
    pub steps: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p coordinator-cli -- simulate --seed {} --nodes {}",
            self.seed, self.nodes
        )
    }

    /// A line per violation and a summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "seed {}: {} nodes, {} broadcasts, {} messages, {} requests, {} delivered, \
             {} gaps ({} lost), {} crashes, {} pauses, {} partitions, {} partial sends, \
             {} direct batches, {} deaths, {} steps",
            self.seed,
            self.nodes,
            self.broadcasts,
            self.messages,
            self.requests,
            self.delivered,
            self.gaps,
            self.lost,
            self.crashes,
            self.pauses,
            self.partitions,
            self.partial_sends,
            self.direct_batches,
            self.deaths,
            self.steps
        );
        for violation in &self.violations {
            let _ = write!(out, "\n  VIOLATION {violation}");
        }
        if !self.passed() {
            let _ = write!(out, "\n  replay: {}", self.replay_command());
        }
        out
    }
}

/// Runs one simulation.
pub fn run(options: &Options) -> Report {
    Simulation::new(options.clone()).run()
}

/// Runs `count` seeds from `first`, stopping at the first failure; returns
/// every report up to it.
pub fn search(first: u64, count: u64, nodes: usize) -> Vec<Report> {
    let mut reports = Vec::new();
    for seed in first..first.saturating_add(count) {
        let report = run(&Options::new(seed, nodes));
        let failed = !report.passed();
        reports.push(report);
        if failed {
            break;
        }
    }
    reports
}

/// Faults on a victim's links and sends, drawn once per run.
#[derive(Clone, Copy, Debug, Default)]
struct Weather {
    drop: f64,
    duplicate: f64,
    reorder: f64,
    /// A publish reaches some receivers, then fails.
    partial_publish: f64,
    /// A send arrives but is reported failed.
    arrived_but_failed: f64,
    /// A send is reported sent and lost.
    sent_but_lost: f64,
    /// A send stalls past the send deadline, and may still arrive.
    stall: f64,
}

/// The key of a sender's numbered stream at one receiver: (sender run, kind).
type Run = (NodeId, u64);

/// A message as its sender numbered it.
#[derive(Clone, Copy, Debug)]
struct Numbered {
    id: u64,
    kind: StreamKind,
    seq: u64,
    /// For a direct message: the receiver's run it was addressed to.
    to: Option<Run>,
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        frame: Bytes,
    },
    SendDone {
        node: usize,
        incarnation: u64,
        token: u64,
        result: Result<(), TransportError>,
    },
    Act {
        node: usize,
    },
    Reply {
        node: usize,
        incarnation: u64,
        to: NodeId,
        request: u64,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Pause {
        node: usize,
        length: Duration,
    },
    Resume {
        node: usize,
    },
    Cut {
        from: usize,
        to: usize,
        cut: bool,
    },
    Quiet,
}

struct SimNode {
    id: NodeId,
    core: Option<Core>,
    incarnation: u64,
    paused: bool,
    deferred: Vec<Event>,
    victim: bool,
    /// Crashed, restarted or paused at some point.
    touched: bool,
}

/// What one receiver run saw of one sender run's stream.
#[derive(Default)]
struct Seen {
    delivered: BTreeSet<u64>,
    last_seq: u64,
    gaps: Vec<Gap>,
    lo: u64,
    hi: u64,
}

impl Seen {
    fn account(&mut self, first: u64, last: u64) {
        if self.hi == 0 {
            self.lo = first;
        }
        self.lo = self.lo.min(first);
        self.hi = self.hi.max(last);
    }

    fn gapped(&self, seq: u64) -> bool {
        self.gaps
            .iter()
            .any(|gap| seq >= gap.first && seq - gap.first < gap.count)
    }
}

struct Request {
    deadline: Duration,
    settled: bool,
}

struct Simulation {
    options: Options,
    rng: StdRng,
    t0: Instant,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Event>,
    next_event: u64,
    nodes: Vec<SimNode>,
    settings: Settings,
    weather: Weather,
    faulty: bool,
    cuts: BTreeSet<(usize, usize)>,
    /// Links a fault touched at some point (drops, partitions).
    touched_links: BTreeSet<(usize, usize)>,
    /// Per link, the time the last frame arrives (links keep order unless reordering).
    link_clock: BTreeMap<(usize, usize), Duration>,
    next_message: u64,
    /// Per sender run, every message it numbered.
    numbered: BTreeMap<Run, Vec<Numbered>>,
    /// Per sender run, the broadcasts it published up to the quiet period.
    published: BTreeMap<Run, u64>,
    /// Per (receiver run, sender run, kind).
    seen: BTreeMap<(Run, Run, StreamKind), Seen>,
    /// Message id to (sender run, kind, seq).
    ids: BTreeMap<u64, (Run, StreamKind, u64)>,
    /// Per (requester run, request id).
    requests: BTreeMap<(Run, u64), Request>,
    /// Per (sender run, lane, number), the messages that waited their turn
    /// and whose outcome ([`Output::Sent`]) has not come yet.
    waiting: BTreeSet<(Run, u64, u64)>,
    report: Report,
}

impl Simulation {
    fn new(options: Options) -> Self {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let n = options.nodes.max(2);
        let settings = Settings::new(0)
            .cluster_key("simulated cluster key")
            .send_timeout(Duration::from_millis(rng.random_range(200..=1000)))
            .memory(256 << 10, 64 << 10, 1 << 20)
            .max_members(64);
        // Victims: at most all but two, so that an untouched pair remains.
        let victims = if options.faults && n > 2 {
            rng.random_range(1..=n - 2)
        } else if options.faults {
            1
        } else {
            0
        };
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let victim_set: BTreeSet<usize> = order.into_iter().take(victims).collect();
        let nodes = (0..n)
            .map(|i| SimNode {
                id: i as NodeId + 1,
                core: None,
                incarnation: 0,
                paused: false,
                deferred: Vec::new(),
                victim: victim_set.contains(&i),
                touched: false,
            })
            .collect();
        let mut chance = |max: f64| {
            if rng.random_bool(0.5) {
                rng.random_range(0.0..max)
            } else {
                0.0
            }
        };
        let weather = Weather {
            drop: chance(0.3),
            duplicate: chance(0.1),
            reorder: chance(0.2),
            partial_publish: chance(0.2),
            arrived_but_failed: chance(0.1),
            sent_but_lost: chance(0.1),
            stall: chance(0.05),
        };
        Self {
            report: Report {
                seed: options.seed,
                nodes: n,
                ..Report::default()
            },
            options,
            rng,
            t0: Instant::now(),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            next_event: 0,
            nodes,
            settings,
            weather,
            faulty: false,
            cuts: BTreeSet::new(),
            touched_links: BTreeSet::new(),
            link_clock: BTreeMap::new(),
            next_message: 1,
            numbered: BTreeMap::new(),
            published: BTreeMap::new(),
            seen: BTreeMap::new(),
            ids: BTreeMap::new(),
            requests: BTreeMap::new(),
            waiting: BTreeSet::new(),
        }
    }

    fn at(&mut self, when: Duration, event: Event) {
        self.next_event += 1;
        self.queue.insert((when, self.next_event), event);
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn violation(&mut self, what: String) {
        let line = format!("at {:?}: {what}", self.now);
        if self.report.violations.len() < 20 {
            self.report.violations.push(line);
        }
    }

    fn run(mut self) -> Report {
        let n = self.nodes.len();
        // Nodes start within the first 200 ms.
        for node in 0..n {
            let at = Duration::from_micros(self.rng.random_range(0..200_000));
            self.at(at, Event::Restart { node });
        }
        for node in 0..n {
            let at = Duration::from_millis(self.rng.random_range(300..500));
            self.at(at, Event::Act { node });
        }
        if self.options.faults {
            self.schedule_faults();
        }
        let active = self.options.active;
        self.at(active, Event::Quiet);
        let end = active + self.options.quiet;
        loop {
            let next_event = self.queue.first_key_value().map(|(&(at, _), _)| at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| !node.paused)
                .filter_map(|(i, node)| {
                    let at = node.core.as_ref()?.poll_timeout()?;
                    Some((at.saturating_duration_since(self.t0), i))
                })
                .min();
            let timer_first = match (next_timer, next_event) {
                (Some((timer, _)), Some(event)) => timer <= event,
                (Some(_), None) => true,
                _ => false,
            };
            if timer_first {
                let (at, node) = next_timer.expect("checked");
                if at > end {
                    break;
                }
                self.now = self.now.max(at);
                let now = self.instant();
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_timeout(now);
                }
                self.drive(node);
            } else {
                let Some(((at, _), event)) = self.queue.pop_first() else {
                    break;
                };
                if at > end {
                    break;
                }
                self.now = self.now.max(at);
                self.handle(event);
            }
            self.report.steps += 1;
            if self.report.steps > 5_000_000 {
                self.violation("the run did not end within 5,000,000 steps".into());
                break;
            }
        }
        self.now = end;
        self.final_checks();
        self.report
    }

    fn schedule_faults(&mut self) {
        let active = self.options.active;
        let victims: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].victim)
            .collect();
        self.faulty = true;
        for &victim in &victims {
            let episodes = self.rng.random_range(0..=3);
            for _ in 0..episodes {
                let start =
                    Duration::from_millis(self.rng.random_range(500..active.as_millis() as u64));
                match self.rng.random_range(0..4) {
                    0 => {
                        self.at(start, Event::Crash { node: victim });
                        let down = if self.rng.random_bool(0.3) {
                            Duration::from_millis(self.rng.random_range(1..200))
                        } else {
                            Duration::from_millis(self.rng.random_range(200..3000))
                        };
                        self.at(start + down, Event::Restart { node: victim });
                    }
                    1 => {
                        let length = Duration::from_millis(self.rng.random_range(50..2500));
                        self.at(
                            start,
                            Event::Pause {
                                node: victim,
                                length,
                            },
                        );
                    }
                    _ => {
                        // A partition: the victim from some others, one way or both.
                        let length = Duration::from_millis(self.rng.random_range(100..3000));
                        let both = self.rng.random_bool(0.5);
                        let outgoing = self.rng.random_bool(0.5);
                        for other in 0..self.nodes.len() {
                            if other == victim || self.rng.random_bool(0.3) {
                                continue;
                            }
                            let mut links = Vec::new();
                            if both || outgoing {
                                links.push((victim, other));
                            }
                            if both || !outgoing {
                                links.push((other, victim));
                            }
                            for (from, to) in links {
                                self.at(
                                    start,
                                    Event::Cut {
                                        from,
                                        to,
                                        cut: true,
                                    },
                                );
                                self.at(
                                    start + length,
                                    Event::Cut {
                                        from,
                                        to,
                                        cut: false,
                                    },
                                );
                            }
                        }
                        self.report.partitions += 1;
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        // A paused node takes nothing until it resumes.
        let target = match &event {
            Event::Deliver { to, .. } => Some(*to),
            Event::SendDone { node, .. } | Event::Act { node } | Event::Reply { node, .. } => {
                Some(*node)
            }
            _ => None,
        };
        if let Some(node) = target
            && self.nodes[node].paused
        {
            self.nodes[node].deferred.push(event);
            return;
        }
        match event {
            Event::Deliver { to, frame, .. } => {
                let now = self.instant();
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.handle_frame(now, frame);
                    self.drive(to);
                }
            }
            Event::SendDone {
                node,
                incarnation,
                token,
                result,
            } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let now = self.instant();
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.sent(now, token, result);
                    self.drive(node);
                }
            }
            Event::Act { node } => {
                self.act(node);
                if self.now < self.options.active {
                    let next = Duration::from_micros(self.rng.random_range(1_000..60_000));
                    self.at(self.now + next, Event::Act { node });
                }
            }
            Event::Reply {
                node,
                incarnation,
                to,
                request,
            } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let now = self.instant();
                let id = self.message_id();
                let Some(core) = self.nodes[node].core.as_mut() else {
                    return;
                };
                let payload = Bytes::copy_from_slice(&id.to_le_bytes());
                if let Ok(sending) = core.reply(now, to, request, Ok(payload)) {
                    self.record_direct(node, to, Kind::Reply, id, &sending);
                    self.carry(node, sending);
                }
                self.drive(node);
            }
            Event::Crash { node } => {
                if self.nodes[node].core.take().is_some() {
                    self.nodes[node].touched = true;
                    self.nodes[node].paused = false;
                    self.nodes[node].deferred.clear();
                    self.report.crashes += 1;
                }
            }
            Event::Restart { node } => {
                if self.nodes[node].core.is_some() {
                    return;
                }
                if self.nodes[node].incarnation > 0 {
                    self.nodes[node].touched = true;
                }
                let incarnation = self.nodes[node].incarnation + 1;
                self.nodes[node].incarnation = incarnation;
                let mut settings = self.settings.clone();
                settings.node_id = self.nodes[node].id;
                // Half the seeds drive a carrier that takes each reply alone
                // (Zenoh's): its batches are cut around replies.
                let mut core = Core::new(&settings, incarnation, false)
                    .replies_alone(self.options.seed % 2 == 1);
                core.start(self.instant());
                self.nodes[node].core = Some(core);
                self.nodes[node].paused = false;
                self.drive(node);
            }
            Event::Pause { node, length } => {
                if self.nodes[node].core.is_some() && !self.nodes[node].paused {
                    self.nodes[node].paused = true;
                    self.nodes[node].touched = true;
                    self.report.pauses += 1;
                    self.at(self.now + length, Event::Resume { node });
                }
            }
            Event::Resume { node } => {
                if !self.nodes[node].paused {
                    return;
                }
                self.nodes[node].paused = false;
                for event in std::mem::take(&mut self.nodes[node].deferred) {
                    self.at(self.now, event);
                }
            }
            Event::Cut { from, to, cut } => {
                if cut && self.faulty {
                    self.cuts.insert((from, to));
                    self.touched_links.insert((from, to));
                } else {
                    self.cuts.remove(&(from, to));
                }
            }
            Event::Quiet => {
                self.faulty = false;
                self.cuts.clear();
                for node in 0..self.nodes.len() {
                    if self.nodes[node].paused {
                        self.handle(Event::Resume { node });
                    }
                    if self.nodes[node].core.is_none() {
                        self.handle(Event::Restart { node });
                    }
                }
                let published: Vec<(Run, u64)> = self
                    .nodes
                    .iter()
                    .filter_map(|node| {
                        let core = node.core.as_ref()?;
                        Some(((node.id, node.incarnation), core.broadcasts_settled()))
                    })
                    .collect();
                self.published.extend(published);
            }
        }
    }

    fn message_id(&mut self) -> u64 {
        let id = self.next_message;
        self.next_message += 1;
        id
    }

    fn payload(&mut self, id: u64) -> Bytes {
        let extra = if self.rng.random_bool(0.05) {
            self.rng.random_range(1_000..20_000)
        } else {
            self.rng.random_range(0..200)
        };
        let mut bytes = vec![0u8; 8 + extra];
        bytes[..8].copy_from_slice(&id.to_le_bytes());
        Bytes::from(bytes)
    }

    /// A workload step of `node`: a broadcast, a message or a request.
    fn act(&mut self, node: usize) {
        if self.now >= self.options.active {
            return;
        }
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let others: Vec<NodeId> = core
            .members()
            .into_iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.id)
            .collect();
        let run = (self.nodes[node].id, self.nodes[node].incarnation);
        let choice = self.rng.random_range(0..10);
        let to = others[self.rng.random_range(0..others.len())];
        // Now and then a burst to one node: what waits behind the frame with
        // the carrier goes out as one batch, and the carrier's faults hit
        // the batch as a whole.
        let burst = if choice >= 5 && self.rng.random_bool(0.2) {
            self.rng.random_range(2..=6)
        } else {
            1
        };
        for _ in 0..burst {
            let id = self.message_id();
            let payload = self.payload(id);
            let now = self.instant();
            let request = choice >= 8 || (burst > 1 && self.rng.random_bool(0.5));
            let timeout = Duration::from_millis(self.rng.random_range(100..2_000));
            let Some(core) = self.nodes[node].core.as_mut() else {
                return;
            };
            match choice {
                0..=4 => match core.broadcast(now, "sim", &payload) {
                    Ok(Broadcasting::Alone { seq, transmit }) => {
                        self.number(run, id, StreamKind::Broadcast, seq, None);
                        self.report.broadcasts += 1;
                        self.route(node, transmit);
                    }
                    Ok(Broadcasting::Queued { seq }) => {
                        self.number(run, id, StreamKind::Broadcast, seq, None);
                        self.report.broadcasts += 1;
                    }
                    Ok(Broadcasting::Full) => {}
                    Err(error) => {
                        self.violation(format!("node {} broadcast refused: {error}", run.0))
                    }
                },
                _ if !request => {
                    if let Ok(sending) = core.send(now, to, payload) {
                        self.report.messages += 1;
                        self.record_direct(node, to, Kind::Direct, id, &sending);
                        self.carry(node, sending);
                    }
                }
                _ => {
                    if let Ok((request, sending)) = core.request(now, to, payload, timeout) {
                        self.report.requests += 1;
                        self.requests.insert(
                            (run, request),
                            Request {
                                deadline: self.now + timeout,
                                settled: false,
                            },
                        );
                        self.record_direct(node, to, Kind::Request, id, &sending);
                        self.carry(node, sending);
                    }
                }
            }
        }
        self.drive(node);
    }

    fn record_direct(&mut self, node: usize, to: NodeId, kind: Kind, id: u64, sending: &Sending) {
        let seq = match sending {
            Sending::Now { seq, .. } => *seq,
            Sending::Queued { seq, lane } => {
                let run = (self.nodes[node].id, self.nodes[node].incarnation);
                self.waiting.insert((run, *lane, *seq));
                *seq
            }
            Sending::Local => return,
        };
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let Some(member) = core.member(to) else {
            return;
        };
        let run = (self.nodes[node].id, self.nodes[node].incarnation);
        // Replies are exempt from the loss check: a late one is dropped on
        // purpose once its request is settled.
        if kind != Kind::Reply {
            self.number(
                run,
                id,
                StreamKind::Direct,
                seq,
                Some((to, member.incarnation)),
            );
        }
    }

    fn number(&mut self, run: Run, id: u64, kind: StreamKind, seq: u64, to: Option<Run>) {
        self.ids.insert(id, (run, kind, seq));
        self.numbered
            .entry(run)
            .or_default()
            .push(Numbered { id, kind, seq, to });
    }

    fn carry(&mut self, node: usize, sending: Sending) {
        if let Sending::Now { transmit, .. } = sending {
            self.route(node, transmit);
        }
    }

    /// Carries out what a node's core produced: frames and results.
    fn drive(&mut self, node: usize) {
        loop {
            let Some(core) = self.nodes[node].core.as_mut() else {
                return;
            };
            let transmit = match core.poll_transmit() {
                Some(transmit) => Some(transmit),
                None => core.poll_batch(),
            };
            let output = if transmit.is_none() {
                core.poll_output()
            } else {
                None
            };
            let memory = core.memory();
            if let Some(transmit) = transmit {
                self.route(node, transmit);
            } else if let Some(output) = output {
                self.output(node, output);
            } else {
                self.check_memory(node, memory);
                return;
            }
        }
    }

    fn check_memory(&mut self, node: usize, memory: crate::engine::core::Memory) {
        let s = self.settings.clone();
        let id = self.nodes[node].id;
        if memory.held_bytes > s.max_held_bytes {
            self.violation(format!(
                "node {id} holds {} bytes out of order (bound {})",
                memory.held_bytes, s.max_held_bytes
            ));
        }
        let one_message = s.max_message_size;
        if memory.outbox_bytes > s.max_outgoing_bytes + one_message
            || memory.lane_bytes > s.max_outgoing_bytes
        {
            self.violation(format!(
                "node {id} has {} bytes of broadcasts and {} bytes for one node waiting (bound {})",
                memory.outbox_bytes, memory.lane_bytes, s.max_outgoing_bytes
            ));
        }
        if memory.members > s.max_members {
            self.violation(format!("node {id} knows {} nodes", memory.members));
        }
    }

    /// The simulated carrier: where a frame goes, and what the sender is told.
    fn route(&mut self, from: usize, transmit: Transmit) {
        let Transmit { token, to, frame } = transmit;
        if crate::envelope::peek_kind(&frame) == Some(Kind::DirectBatch) {
            self.report.direct_batches += 1;
        }
        let incarnation = self.nodes[from].incarnation;
        let targets: Vec<usize> = match to {
            None => (0..self.nodes.len()).filter(|&i| i != from).collect(),
            Some(id) => (0..self.nodes.len())
                .filter(|&i| self.nodes[i].id == id)
                .collect(),
        };
        let weather = if self.faulty && self.nodes[from].victim {
            self.weather
        } else {
            Weather::default()
        };
        let roll = self.rng.random_range(0.0..1.0);
        let mut mode = 0u8;
        let mut threshold = 0.0;
        for (i, chance) in [
            weather.partial_publish,
            weather.arrived_but_failed,
            weather.sent_but_lost,
            weather.stall,
        ]
        .into_iter()
        .enumerate()
        {
            threshold += chance;
            if mode == 0 && roll < threshold {
                mode = i as u8 + 1;
            }
        }
        if mode == 1 && to.is_some() {
            mode = 2;
        }
        if mode != 0 {
            self.report.partial_sends += 1;
        }
        let mut reached_any = false;
        for target in targets {
            let deliver = match mode {
                1 => self.rng.random_bool(0.5),
                3 => false,
                4 => self.rng.random_bool(0.5),
                _ => true,
            };
            if deliver && self.link(from, target, &frame, mode == 4) {
                reached_any = true;
            }
        }
        let carrier_time = Duration::from_micros(self.rng.random_range(5..300));
        let (after, result) = match mode {
            1 => (
                carrier_time,
                Err(TransportError::Other {
                    carrier: "sim",
                    detail: "publish failed after reaching some peers".into(),
                }),
            ),
            2 => (
                carrier_time,
                Err(TransportError::LinkDown {
                    carrier: "sim",
                    detail: "connection reset after the write".into(),
                }),
            ),
            4 => (
                self.settings.send_timeout,
                Err(TransportError::Stalled(self.settings.send_timeout)),
            ),
            _ => match to {
                Some(id) if !reached_any && self.down(id) => {
                    (carrier_time, Err(TransportError::NoRoute(id)))
                }
                _ => (carrier_time, Ok(())),
            },
        };
        self.at(
            self.now + after,
            Event::SendDone {
                node: from,
                incarnation,
                token,
                result,
            },
        );
    }

    fn down(&self, id: NodeId) -> bool {
        self.nodes
            .iter()
            .any(|node| node.id == id && node.core.is_none())
    }

    /// One frame on the link `from` → `to`; whether it was sent on its way.
    fn link(&mut self, from: usize, to: usize, frame: &Bytes, stalled: bool) -> bool {
        let faulty_link = self.faulty && (self.nodes[from].victim || self.nodes[to].victim);
        if self.cuts.contains(&(from, to)) {
            return false;
        }
        let weather = if faulty_link {
            self.weather
        } else {
            Weather::default()
        };
        if weather.drop > 0.0 && self.rng.random_bool(weather.drop) {
            self.touched_links.insert((from, to));
            return false;
        }
        let copies = if weather.duplicate > 0.0 && self.rng.random_bool(weather.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = Duration::from_micros(self.rng.random_range(50..2_000));
            let mut when = self.now + latency;
            if stalled {
                when += self
                    .settings
                    .send_timeout
                    .mul_f64(self.rng.random_range(0.5..2.0));
                self.touched_links.insert((from, to));
            }
            let reordered = weather.reorder > 0.0 && self.rng.random_bool(weather.reorder);
            if reordered {
                when += Duration::from_micros(self.rng.random_range(0..30_000));
                self.touched_links.insert((from, to));
            } else {
                // Links keep order.
                let last = self.link_clock.entry((from, to)).or_default();
                when = when.max(*last);
                *last = when;
            }
            self.at(
                when,
                Event::Deliver {
                    to,
                    frame: frame.clone(),
                },
            );
        }
        true
    }

    fn receiver(&self, node: usize) -> Run {
        (self.nodes[node].id, self.nodes[node].incarnation)
    }

    fn output(&mut self, node: usize, output: Output) {
        let me = self.receiver(node);
        match output {
            Output::Broadcast(envelope) => {
                self.delivered(me, &envelope.payload, StreamKind::Broadcast);
            }
            Output::Incoming {
                from,
                payload,
                request,
            } => {
                if from != me.0 {
                    self.delivered(me, &payload, StreamKind::Direct);
                }
                if let Some(request) = request {
                    let delay = Duration::from_micros(self.rng.random_range(0..20_000));
                    self.at(
                        self.now + delay,
                        Event::Reply {
                            node,
                            incarnation: me.1,
                            to: from,
                            request,
                        },
                    );
                }
            }
            Output::Replied { request, result } => {
                let now = self.now;
                match self.requests.get_mut(&(me, request)) {
                    None => self.violation(format!(
                        "node {} settled request {request} it never made",
                        me.0
                    )),
                    Some(pending) if pending.settled => {
                        self.violation(format!("node {} settled request {request} twice", me.0))
                    }
                    Some(pending) => {
                        pending.settled = true;
                        let deadline = pending.deadline;
                        // A paused node runs its timers late, as a real one would.
                        if now > deadline && !self.nodes[node].touched {
                            self.violation(format!(
                                "node {} request {request} settled {:?} after its deadline",
                                me.0,
                                now - deadline
                            ));
                        }
                        if let Err(Error::Timeout { .. }) = result
                            && now < deadline
                        {
                            self.violation(format!(
                                "node {} request {request} timed out early",
                                me.0
                            ));
                        }
                    }
                }
            }
            Output::Sent {
                lane, first, last, ..
            } => {
                if first > last {
                    self.violation(format!(
                        "node {} was told of the empty range {first}..={last} of lane {lane}",
                        me.0
                    ));
                }
                for seq in first..=last {
                    if !self.waiting.remove(&(me, lane, seq)) {
                        self.violation(format!(
                            "node {} heard twice of the send of message {seq} of lane {lane}, or of one it never queued",
                            me.0
                        ));
                    }
                }
            }
            Output::Gap {
                from,
                incarnation,
                stream,
                gap,
            } => {
                self.report.gaps += 1;
                self.report.lost += gap.count;
                let seen = self
                    .seen
                    .entry((me, (from, incarnation), stream))
                    .or_default();
                seen.gaps.push(gap);
                seen.account(gap.first, gap.first + gap.count - 1);
            }
            Output::Member(event) => {
                if event.change == MemberChange::Died {
                    self.report.deaths += 1;
                    self.check_death(node, event.member.id);
                }
            }
            Output::Event(_) => {}
        }
    }

    fn delivered(&mut self, me: Run, payload: &Bytes, kind: StreamKind) {
        self.report.delivered += 1;
        let Some(id) = payload
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        else {
            return self.violation(format!("node {} got a payload of no message", me.0));
        };
        let Some(&(sender, numbered_kind, seq)) = self.ids.get(&id) else {
            return self.violation(format!("node {} got message {id}, never sent", me.0));
        };
        if numbered_kind != kind {
            return self.violation(format!(
                "node {} got message {id} on the wrong stream",
                me.0
            ));
        }
        let seen = self.seen.entry((me, sender, kind)).or_default();
        if !seen.delivered.insert(id) {
            return self.violation(format!(
                "node {} got message {id} (node {} seq {seq}) twice",
                me.0, sender.0
            ));
        }
        if seq <= seen.last_seq {
            let last = seen.last_seq;
            return self.violation(format!(
                "node {} got {kind:?} seq {seq} of node {} after seq {last}: out of order",
                me.0, sender.0
            ));
        }
        seen.last_seq = seq;
        seen.account(seq, seq);
    }

    fn check_death(&mut self, observer: usize, dead: NodeId) {
        let Some(subject) = self.nodes.iter().position(|n| n.id == dead) else {
            return;
        };
        let untouched = |sim: &Self, i: usize| !sim.nodes[i].victim && !sim.nodes[i].touched;
        if untouched(self, observer)
            && untouched(self, subject)
            && !self.touched_links.contains(&(subject, observer))
        {
            self.violation(format!(
                "node {} declared node {dead} dead, though no fault touched either or the link",
                self.nodes[observer].id
            ));
        }
    }

    fn final_checks(&mut self) {
        // Nothing lost silently: every numbered message a receiver run has
        // passed is delivered or in a gap it reported.
        let mut problems = Vec::new();
        for (&(receiver, sender, kind), seen) in &self.seen {
            let Some(messages) = self.numbered.get(&sender) else {
                continue;
            };
            for m in messages.iter().filter(|m| m.kind == kind) {
                if m.to.is_some_and(|to| to != receiver) {
                    continue;
                }
                if m.seq < seen.lo || m.seq > seen.hi {
                    continue;
                }
                let (got, gapped) = (seen.delivered.contains(&m.id), seen.gapped(m.seq));
                if !got && !gapped {
                    problems.push(format!(
                        "node {} (run {}) neither got nor reported lost message {} ({kind:?} seq {} of node {} run {})",
                        receiver.0, receiver.1, m.id, m.seq, sender.0, sender.1
                    ));
                }
                if got && gapped {
                    problems.push(format!(
                        "node {} (run {}) got message {} ({kind:?} seq {} of node {} run {}) and reported it lost",
                        receiver.0, receiver.1, m.id, m.seq, sender.0, sender.1
                    ));
                }
            }
        }
        // Live pairs: every broadcast published before the quiet period is accounted for.
        let live: Vec<(usize, Run)> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.is_some())
            .map(|i| (i, self.receiver(i)))
            .collect();
        for &(_, receiver) in &live {
            for &(_, sender) in &live {
                if receiver == sender {
                    continue;
                }
                let published = self.published.get(&sender).copied().unwrap_or(0);
                let Some(seen) = self.seen.get(&(receiver, sender, StreamKind::Broadcast)) else {
                    continue;
                };
                if seen.hi < published && seen.hi >= 1 {
                    problems.push(format!(
                        "node {} accounted for node {}'s broadcasts up to {} of {published}",
                        receiver.0, sender.0, seen.hi
                    ));
                }
            }
        }
        // Requests settle by their deadline.
        for (&(run, request), pending) in &self.requests {
            let alive = live.iter().any(|&(_, r)| r == run);
            if alive && !pending.settled && pending.deadline < self.now {
                problems.push(format!(
                    "node {} request {request} never settled (deadline {:?})",
                    run.0, pending.deadline
                ));
            }
        }
        // Every message that waited its turn was settled: sent, or failed
        // (its caller told either way).
        for &(run, lane, seq) in &self.waiting {
            if live.iter().any(|&(_, r)| r == run) {
                problems.push(format!(
                    "node {} never told the caller of queued message {seq} of lane {lane} what became of it",
                    run.0
                ));
            }
        }
        // The membership agrees once the faults are over.
        for &(i, observer) in &live {
            let core = self.nodes[i].core.as_ref().expect("live");
            for (j, node) in self.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let seen = core.member(node.id);
                match (&node.core, seen) {
                    (Some(_), Some(m))
                        if m.state == MemberState::Alive && m.incarnation == node.incarnation => {}
                    (Some(_), seen) => problems.push(format!(
                        "node {} sees node {} as {:?}, though it is alive in run {}",
                        observer.0,
                        node.id,
                        seen.map(|m| (m.state, m.incarnation)),
                        node.incarnation
                    )),
                    (None, Some(m)) if matches!(m.state, MemberState::Alive) => problems.push(
                        format!("node {} sees crashed node {} alive", observer.0, node.id),
                    ),
                    _ => {}
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }
}

use crate::envelope::Kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_faults_delivers_everything() {
        let report = run(&Options {
            faults: false,
            ..Options::new(1, 4)
        });
        assert!(report.passed(), "{}", report.summary());
        assert!(
            report.broadcasts > 50 && report.delivered > 100,
            "{}",
            report.summary()
        );
        assert_eq!(report.gaps, 0, "{}", report.summary());
        assert_eq!(report.deaths, 0, "{}", report.summary());
    }

    #[test]
    fn a_seed_replays_exactly() {
        let a = run(&Options::new(7, 5));
        let b = run(&Options::new(7, 5));
        assert_eq!(a.summary(), b.summary());
        assert_eq!(a.steps, b.steps);
    }

    /// Seeds to search, from `COORDINATOR_SIM_SEEDS` (1,000 by default).
    fn seeds() -> u64 {
        std::env::var("COORDINATOR_SIM_SEEDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000)
    }

    fn search_all(first: u64, count: u64, nodes: usize) {
        let started = std::time::Instant::now();
        let reports = search(first, count, nodes);
        let last = reports.last().expect("at least one run");
        assert!(
            last.passed(),
            "{} (found after {} seeds, {:?})",
            last.summary(),
            reports.len(),
            started.elapsed()
        );
        let gaps: u64 = reports.iter().map(|r| r.gaps).sum();
        let deaths: u64 = reports.iter().map(|r| r.deaths).sum();
        assert!(
            gaps > 0 && deaths > 0,
            "the faults must bite: {gaps} gaps, {deaths} deaths"
        );
        // Messages to one node went out together while the carrier was busy,
        // so the promises above held for batches too.
        let batches: u64 = reports.iter().map(|r| r.direct_batches).sum();
        assert!(batches > 0, "no batch of messages to one node was sent");
    }

    #[test]
    fn seeds_of_five_nodes_keep_every_promise() {
        search_all(0, seeds() / 2, 5);
    }

    #[test]
    fn seeds_of_three_and_seven_nodes_keep_every_promise() {
        let half = seeds() / 4;
        search_all(1_000_000, half, 3);
        search_all(2_000_000, half, 7);
    }

    /// The simulator has teeth: with the defect put back (a number given
    /// back after a failed send, as the engine did before it was sans-IO),
    /// it finds a message lost silently.
    #[test]
    fn a_number_given_back_after_a_failed_send_is_found() {
        crate::engine::core::GIVE_BACK_FAILED_NUMBERS.with(|on| on.set(true));
        let started = std::time::Instant::now();
        let reports = search(0, 200, 5);
        crate::engine::core::GIVE_BACK_FAILED_NUMBERS.with(|on| on.set(false));
        let last = reports.last().expect("a run");
        assert!(!last.passed(), "200 seeds found nothing");
        assert!(
            last.violations
                .iter()
                .any(|v| v.contains("neither got nor reported lost")),
            "{}",
            last.summary()
        );
        eprintln!(
            "found after {} seeds in {:?}:\n{}",
            reports.len(),
            started.elapsed(),
            last.summary()
        );
    }
}
