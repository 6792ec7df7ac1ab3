//! The engine core: everything a node decides, sans-IO.
//!
//! One struct owns the membership, the senders' streams (de-duplication,
//! order, gaps), this node's numbering (the broadcast outbox and one direct
//! lane per destination), batching, pending requests and every deadline. It
//! takes inputs (a frame, an API call, the outcome of a send, the time) and
//! yields outputs: frames to transmit ([`Core::poll_transmit`],
//! [`Core::poll_batch`]), results for the application ([`Core::poll_output`]),
//! and when it next needs the time ([`Core::poll_timeout`]). It holds no lock,
//! starts no task, reads no clock and knows nothing of tokio, so the same
//! code runs under the driver ([`super::Node`]) and under the deterministic
//! simulator ([`crate::testing::simulator`]), which searches fault schedules
//! for broken promises.
//!
//! The rules a driver keeps:
//! * every [`Transmit`] handed out is performed once and its outcome reported
//!   with [`Core::sent`] (an unknown outcome, such as a cancelled or stalled
//!   send, is reported as a failure: the core never assumes it did not arrive);
//! * `now` never goes backwards from one call to the next;
//! * [`Core::handle_timeout`] is called at or after [`Core::poll_timeout`].

use super::lanes::{Lanes, Numbered, Refused, Waiting};
use super::outbox::{Outbox, Pushed};
use super::settings::Settings;
use crate::api::*;
use crate::envelope::{Codec, DecodeError, DirectRecord, Envelope, Header, Kind, MAX_TOPIC_LEN};
use crate::error::{Error, TransportError};
use crate::membership::{Detection, Heard, Membership};
use crate::sequence::{Gap, HeldLimits, Outcome, Stream};
use crate::stats::Stats;
use bytes::Bytes;
use foldhash::HashMap;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Out-of-order messages held per stream, at most, before the gap is declared.
const MAX_HELD: usize = 8192;
/// What holding a message costs besides its payload and topic.
const HELD_OVERHEAD: usize = 128;
/// Room for deliveries kept from one message to the next.
const KEPT_DELIVERIES: usize = 64;

/// A frame for the carrier.
#[derive(Debug)]
pub struct Transmit {
    /// Report the outcome with this token ([`Core::sent`]).
    pub token: u64,
    /// `None`: to every other node (publish); `Some(id)`: to one node.
    pub to: Option<NodeId>,
    pub frame: Bytes,
}

/// A result for the application.
#[derive(Debug)]
pub enum Output {
    /// A broadcast for the subscribers of its topic (`kind` Broadcast).
    Broadcast(Envelope),
    /// A point-to-point message or a request for the inbox.
    Incoming {
        from: NodeId,
        payload: Bytes,
        /// The request id to answer, for a request.
        request: Option<u64>,
    },
    /// A request of this node is settled: its reply, an error, or its time-out.
    Replied {
        request: u64,
        result: Result<Bytes, Error>,
    },
    /// Messages `first..=last` of `lane` that waited their turn
    /// ([`Sending::Queued`]) were sent, or failed, together. Every queued
    /// message is in exactly one such range; the ranges of a lane need not
    /// come in order (messages that expire while the frame before them is
    /// with the carrier are told of first).
    Sent {
        lane: u64,
        first: u64,
        last: u64,
        result: Result<(), Error>,
    },
    /// Numbers `gap.first..gap.first + gap.count` of a sender's stream are
    /// lost (given to the application as [`Event::Gap`]).
    Gap {
        from: NodeId,
        incarnation: u64,
        stream: StreamKind,
        gap: Gap,
    },
    Member(MemberEvent),
    Event(Event),
}

/// What became of a broadcast.
#[derive(Debug)]
pub enum Broadcasting {
    /// The carrier is idle: publish this now and report its outcome.
    Alone { seq: u64, transmit: Transmit },
    /// Queued behind a publish under way: [`Core::poll_batch`] hands it out.
    Queued { seq: u64 },
    /// Too many bytes wait already; try again once a publish is over.
    Full,
}

/// What became of a point-to-point message, a request or a reply.
#[derive(Debug)]
pub enum Sending {
    /// The carrier is free for this destination: send this now and report its outcome.
    Now { seq: u64, transmit: Transmit },
    /// Waits behind the frame the carrier has for this destination; its
    /// outcome comes as the [`Output::Sent`] of `lane` whose range holds
    /// `seq` (for a request, also as [`Output::Replied`] if it fails).
    Queued { seq: u64, lane: u64 },
    /// For this node itself: handled at once.
    Local,
}

/// Memory the core holds, in bytes, against its bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Out-of-order messages held, over all streams.
    pub held_bytes: usize,
    /// Broadcasts waiting for the carrier.
    pub outbox_bytes: usize,
    /// The most bytes waiting for one destination.
    pub lane_bytes: usize,
    /// Other nodes known.
    pub members: usize,
    /// Senders' streams.
    pub streams: usize,
    /// Destinations with a direct lane.
    pub lanes: usize,
    /// Requests waiting for a reply.
    pub pending: usize,
}

/// A frame opened outside the core: decoding and checking the seal need no
/// state, so a driver can do it before it takes the core.
#[derive(Debug)]
pub enum Opened {
    /// A frame of one envelope.
    One(Envelope),
    /// The envelopes of a batch, all from `from` (run `incarnation`).
    Batch {
        from: NodeId,
        incarnation: u64,
        envelopes: Vec<Envelope>,
    },
    /// Not a valid frame; `from` when the batch's sender is known.
    Bad {
        error: DecodeError,
        from: Option<NodeId>,
    },
}

impl Opened {
    /// Decodes, verifies and unbatches a frame. Never panics.
    pub fn open(codec: &Codec, frame: Bytes) -> Self {
        let envelope = match codec.decode(frame) {
            Ok(envelope) => envelope,
            Err(error) => return Opened::Bad { error, from: None },
        };
        let (from, incarnation) = (envelope.from, envelope.from_incarnation);
        if !matches!(envelope.kind, Kind::Batch | Kind::DirectBatch) {
            return Opened::One(envelope);
        }
        match codec.unbatch(&envelope) {
            Ok(envelopes) => Opened::Batch {
                from,
                incarnation,
                envelopes,
            },
            Err(error) => Opened::Bad {
                error,
                from: Some(from),
            },
        }
    }
}

/// What a transmit under way was for.
#[derive(Debug)]
enum InFlight {
    /// Broadcasts up to `last`, `count` of them; `alone`: its caller waits for the outcome.
    Broadcast { last: u64, count: u64, alone: bool },
    /// Messages `first..=last` of the direct `lane` to `to`, alone or
    /// together; `requests`: the ids of this node's requests among them;
    /// `queued` when they waited their turn, and their outcome goes out as
    /// [`Output::Sent`].
    Direct {
        to: NodeId,
        lane: u64,
        first: u64,
        last: u64,
        requests: Vec<u64>,
        queued: bool,
    },
    /// Heartbeats, joins, announcements, departures.
    Control,
}

#[derive(Debug)]
struct Pending {
    node: NodeId,
    deadline: Instant,
    timeout: Duration,
}

/// Whether a warning is logged.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log it, saying how many of its kind were not logged before it.
    Log {
        suppressed: u64,
    },
    Quiet,
}

/// At most [`DropWarnings::PER_WINDOW`] warnings per kind of dropped frame
/// in each [`DropWarnings::WINDOW`]; the first one logged after a quiet spell
/// says how many were not. Logging only: every drop is still counted and
/// raised as an event.
#[derive(Debug, Default)]
struct DropWarnings {
    /// Per reason: the window's start, warnings logged in it, and how many
    /// were not logged since the last one that was.
    windows: Vec<(DropReason, Instant, u32, u64)>,
}

impl DropWarnings {
    const PER_WINDOW: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(10);

    fn admit(&mut self, reason: DropReason, now: Instant) -> Admit {
        let index = match self.windows.iter().position(|w| w.0 == reason) {
            Some(index) => index,
            None => {
                self.windows.push((reason, now, 0, 0));
                self.windows.len() - 1
            }
        };
        let (_, start, logged, suppressed) = &mut self.windows[index];
        if now.saturating_duration_since(*start) >= Self::WINDOW {
            *start = now;
            *logged = 0;
        }
        if *logged < Self::PER_WINDOW {
            *logged += 1;
            Admit::Log {
                suppressed: std::mem::take(suppressed),
            }
        } else {
            *suppressed += 1;
            Admit::Quiet
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Puts back the defect the simulator must find (numbers given back after
    /// a failed send), for the cores made on this thread.
    pub(crate) static GIVE_BACK_FAILED_NUMBERS: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// A sender's stream: (sender, its incarnation, which stream).
type StreamKey = (NodeId, u64, StreamKind);

/// The engine of one node.
pub struct Core {
    id: NodeId,
    incarnation: u64,
    codec: Arc<Codec>,
    heartbeat_interval: Duration,
    /// Whether heartbeats are sent (`heartbeats` of the configuration).
    heartbeats: bool,
    detection: FailureDetection,
    /// The carrier reported its link down, and not up since.
    link_down: bool,
    /// Limits the warnings an outsider's junk can cause.
    drop_warnings: DropWarnings,
    /// When the frame being handled arrived (replies are timed with it).
    last_frame_at: Instant,
    reorder_timeout: Duration,
    send_timeout: Duration,
    max_held_bytes: usize,
    max_payload: usize,
    membership: Membership,
    streams: HashMap<StreamKey, Stream<Envelope>>,
    held_bytes: usize,
    outbox: Outbox,
    lanes: Lanes,
    /// The largest batch of messages to one node, unsealed.
    direct_batch_bytes: usize,
    /// The carrier must see each reply alone ([`Core::replies_alone`]).
    replies_alone: bool,
    inflight: HashMap<u64, InFlight>,
    next_token: u64,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    next_request: u64,
    heartbeat_counter: u64,
    next_heartbeat: Option<Instant>,
    outputs: VecDeque<Output>,
    transmits: VecDeque<Transmit>,
    /// Kept empty between calls, for its allocation: what one message
    /// releases (at most [`KEPT_DELIVERIES`] of room is kept).
    delivering: Vec<Envelope>,
    /// Incarnation of the last other process seen using this node id.
    id_conflict: u64,
    /// The earliest deadline set since [`Core::take_wake`].
    wake_at: Option<Instant>,
    stats: Arc<Stats>,
    closed: bool,
    #[cfg(test)]
    give_back: bool,
    /// Per transmit under way, the number it carries (to give it back).
    #[cfg(test)]
    numbers: HashMap<u64, u64>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A node's engine. `carrier_reports`: the carrier reports members'
    /// states ([`crate::transport::Transport::reports_membership`]).
    pub fn new(settings: &Settings, incarnation: u64, carrier_reports: bool) -> Self {
        let key = settings
            .cluster_key
            .as_ref()
            .map(|key| key.expose().as_bytes().to_vec());
        let mut codec = Codec::new(
            &settings.cluster,
            key.as_deref(),
            settings.encrypt,
            settings.max_message_size,
        );
        if settings.authenticated_links {
            codec = codec.on_authenticated_links();
        }
        let codec = Arc::new(codec);
        let detection = Detection {
            suspect_after: settings.suspect_timeout,
            dead_after: settings.dead_timeout,
            forget_after: settings.forget_after,
        };
        let mut membership = Membership::new(settings.node_id, incarnation, detection)
            .with_max_peers(settings.max_members);
        let detection = if carrier_reports {
            membership = membership.reported_by_carrier();
            FailureDetection::Carrier
        } else if settings.heartbeats {
            FailureDetection::Heartbeats
        } else {
            membership = membership.undetected();
            FailureDetection::Off
        };
        let outbox = Outbox::new(
            (settings.node_id, incarnation),
            codec.batch_limit(),
            settings.max_outgoing_bytes,
            codec.pool().clone(),
        );
        let direct_batch_bytes = codec.batch_limit().min(super::outbox::BATCH_BYTES);
        Self {
            id: settings.node_id,
            incarnation,
            max_payload: codec.max_payload(0),
            codec,
            heartbeat_interval: settings.heartbeat_interval,
            heartbeats: settings.heartbeats,
            detection,
            link_down: false,
            drop_warnings: DropWarnings::default(),
            last_frame_at: Instant::now(),
            reorder_timeout: settings.reorder_timeout,
            send_timeout: settings.send_timeout,
            max_held_bytes: settings.max_held_bytes,
            membership,
            streams: HashMap::default(),
            held_bytes: 0,
            outbox,
            lanes: Lanes::new(settings.max_outgoing_bytes, settings.max_members),
            direct_batch_bytes,
            replies_alone: false,
            inflight: HashMap::default(),
            next_token: 1,
            pending: HashMap::default(),
            deadlines: BTreeSet::new(),
            next_request: 1,
            heartbeat_counter: 0,
            next_heartbeat: None,
            outputs: VecDeque::new(),
            transmits: VecDeque::new(),
            delivering: Vec::new(),
            id_conflict: 0,
            wake_at: None,
            stats: Arc::new(Stats::default()),
            closed: false,
            #[cfg(test)]
            give_back: GIVE_BACK_FAILED_NUMBERS.with(|on| on.get()),
            #[cfg(test)]
            numbers: HashMap::default(),
        }
    }

    /// Replies go in frames of their own, never in a batch: for a carrier
    /// that answers a request on its own channel
    /// ([`crate::transport::Transport::replies_alone`]).
    pub fn replies_alone(mut self, alone: bool) -> Self {
        self.replies_alone = alone;
        self
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The codec, to open frames outside the core ([`Opened::open`]).
    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    /// The counters, readable without the core.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The members this node knows, itself included.
    pub fn members(&self) -> Vec<Member> {
        self.membership.members()
    }

    /// One member as known here.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.membership.get(id)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Memory held now, to check against the bounds.
    pub fn memory(&self) -> Memory {
        Memory {
            held_bytes: self.held_bytes,
            outbox_bytes: self.outbox.queued_bytes(),
            lane_bytes: self.lanes.max_waiting_bytes(),
            members: self.membership.known(),
            streams: self.streams.len(),
            lanes: self.lanes.len(),
            pending: self.pending.len(),
        }
    }

    /// The highest broadcast number whose publish is over (what heartbeats announce).
    pub fn broadcasts_settled(&self) -> u64 {
        self.outbox.settled()
    }

    /// Nothing of this node's broadcasts waits or is being published.
    pub fn outbox_drained(&self) -> bool {
        self.outbox.is_drained()
    }

    /// Where member states come from.
    pub fn failure_detection(&self) -> FailureDetection {
        self.detection
    }

    /// Starts the node: announces it (a `Join`) and starts its heartbeats
    /// (unless they are off).
    pub fn start(&mut self, now: Instant) {
        if self.heartbeats {
            self.next_heartbeat = Some(now + self.heartbeat_interval);
        }
        self.control(Kind::Join, None);
        self.wake_by(now);
    }

    // ----- outputs -----

    /// The next frame to transmit (point-to-point, control), if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.transmits.pop_front()?;
        Stats::add(&self.stats.bytes_sent, transmit.frame.len() as u64);
        Some(transmit)
    }

    /// The next batch of queued broadcasts, sealed, once the carrier is free
    /// for it. A driver may wait a moment before asking, so that a burst
    /// shares one frame.
    pub fn poll_batch(&mut self) -> Option<Transmit> {
        let (batch, last) = self.outbox.take()?;
        let count = batch.len() as u64;
        if count > 1 {
            Stats::inc(&self.stats.batches_sent);
        }
        let frame = self.codec.seal_batch(batch);
        Stats::add(&self.stats.bytes_sent, frame.len() as u64);
        Some(self.transmit(
            None,
            frame,
            InFlight::Broadcast {
                last,
                count,
                alone: false,
            },
        ))
    }

    /// Whether [`Core::poll_batch`] has something.
    pub fn batch_ready(&self) -> bool {
        self.outbox.ready()
    }

    /// The next result for the application.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether results wait to be taken ([`Core::poll_output`]).
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Every result for the application, appended to `into` (when `into`
    /// is empty the two queues are swapped: no copy, and the allocation of
    /// `into` is kept for the next results).
    pub fn take_outputs(&mut self, into: &mut VecDeque<Output>) {
        if into.is_empty() {
            std::mem::swap(&mut self.outputs, into);
        } else {
            into.append(&mut self.outputs);
        }
    }

    /// When [`Core::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reorder = self.reorder_timeout;
        [
            self.next_heartbeat,
            self.membership.next_deadline(),
            self.deadlines.first().map(|(at, _)| *at),
            self.lanes.deadline(self.send_timeout),
        ]
        .into_iter()
        .chain(self.streams.values().map(|s| s.deadline(reorder)))
        .flatten()
        .min()
    }

    /// The earliest deadline set since the last call, if any: a driver whose
    /// timer sleeps until later wakes it to look at [`Core::poll_timeout`]
    /// again. (Cheaper than [`Core::poll_timeout`], which looks at every stream.)
    pub fn take_wake(&mut self) -> Option<Instant> {
        self.wake_at.take()
    }

    fn wake_by(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |earlier| earlier.min(at)));
    }

    // ----- the application's calls -----

    fn check_open(&self) -> Result<(), Error> {
        if self.closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_size(&self, topic_len: usize, payload_len: usize) -> Result<(), Error> {
        let max = self.codec.max_payload(topic_len);
        if payload_len > max {
            Err(Error::TooLarge {
                size: payload_len,
                max,
            })
        } else {
            Ok(())
        }
    }

    /// Numbers a broadcast and queues it, or hands it back to publish now.
    pub fn broadcast(
        &mut self,
        now: Instant,
        topic: &str,
        payload: &Bytes,
    ) -> Result<Broadcasting, Error> {
        self.check_open()?;
        check_topic(topic)?;
        self.check_size(topic.len(), payload.len())?;
        let plain = self
            .codec
            .check(topic.len(), payload.len())
            .map_err(|_| Error::TooLarge {
                size: payload.len(),
                max: self.codec.max_payload(topic.len()),
            })?;
        match self.outbox.push(now, plain, topic.as_bytes(), payload) {
            Pushed::Full => Ok(Broadcasting::Full),
            Pushed::Queued { seq } => {
                Stats::inc(&self.stats.broadcasts_sent);
                Ok(Broadcasting::Queued { seq })
            }
            Pushed::Alone { seq } => {
                let header = Header {
                    kind: Kind::Broadcast,
                    from: self.id,
                    from_incarnation: self.incarnation,
                    to: 0,
                    to_incarnation: 0,
                    seq,
                    aux: 0,
                };
                let frame = self.codec.encode_parts(&header, topic.as_bytes(), payload);
                let transmit = self.transmit(
                    None,
                    frame,
                    InFlight::Broadcast {
                        last: seq,
                        count: 1,
                        alone: true,
                    },
                );
                #[cfg(test)]
                self.numbers.insert(transmit.token, seq);
                Ok(Broadcasting::Alone { seq, transmit })
            }
        }
    }

    /// A one-way message to `to` (to this node itself: straight to its inbox).
    pub fn send(&mut self, now: Instant, to: NodeId, payload: Bytes) -> Result<Sending, Error> {
        self.check_open()?;
        self.check_size(0, payload.len())?;
        if to == self.id {
            self.outputs.push_back(Output::Incoming {
                from: self.id,
                payload,
                request: None,
            });
            return Ok(Sending::Local);
        }
        self.send_direct(now, Kind::Direct, to, 0, payload)
    }

    /// A request to `to`, settled by `now + timeout` at the latest
    /// ([`Output::Replied`]). Returns its id and what became of it.
    pub fn request(
        &mut self,
        now: Instant,
        to: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(u64, Sending), Error> {
        self.check_open()?;
        self.check_size(0, payload.len())?;
        let id = self.next_request;
        if to != self.id {
            // Fails fast, before an id is taken, for an unknown or dead node.
            self.reachable(to)?;
        }
        self.next_request += 1;
        let deadline = now + timeout;
        self.pending.insert(
            id,
            Pending {
                node: to,
                deadline,
                timeout,
            },
        );
        self.deadlines.insert((deadline, id));
        self.wake_by(deadline);
        if to == self.id {
            self.outputs.push_back(Output::Incoming {
                from: self.id,
                payload,
                request: Some(id),
            });
            return Ok((id, Sending::Local));
        }
        match self.send_direct(now, Kind::Request, to, id, payload) {
            Ok(sending) => Ok((id, sending)),
            Err(error) => {
                self.forget_request(id);
                Err(error)
            }
        }
    }

    /// The requester stopped waiting for request `id`.
    pub fn cancel_request(&mut self, id: u64) {
        self.forget_request(id);
    }

    fn forget_request(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.deadlines.remove(&(pending.deadline, id));
        Some(pending)
    }

    /// Answers request `request` of node `to`.
    pub fn reply(
        &mut self,
        now: Instant,
        to: NodeId,
        request: u64,
        result: Result<Bytes, String>,
    ) -> Result<Sending, Error> {
        self.check_open()?;
        let (kind, payload) = match result {
            Ok(payload) => (Kind::Reply, payload),
            Err(message) => (Kind::ReplyError, Bytes::from(message)),
        };
        if to == self.id {
            if let Some(pending) = self.forget_request(request) {
                let result = match kind {
                    Kind::Reply => Ok(payload),
                    _ => Err(Error::Remote {
                        node: pending.node,
                        message: String::from_utf8_lossy(&payload).into_owned(),
                    }),
                };
                self.outputs.push_back(Output::Replied { request, result });
            }
            return Ok(Sending::Local);
        }
        let payload = if payload.len() > self.max_payload && kind == Kind::ReplyError {
            // An error message too long to send is cut, not lost.
            payload.slice(..self.max_payload)
        } else {
            self.check_size(0, payload.len())?;
            payload
        };
        self.send_direct(now, kind, to, request, payload)
    }

    /// Whether `to` can be sent to; its incarnation if so.
    fn reachable(&self, to: NodeId) -> Result<u64, Error> {
        match self.membership.get(to) {
            None => Err(Error::UnknownNode(to)),
            Some(member) => match member.state {
                MemberState::Dead => Err(Error::NodeDead(to)),
                MemberState::Left => Err(Error::NodeLeft(to)),
                MemberState::Alive | MemberState::Suspect => Ok(member.incarnation),
            },
        }
    }

    fn send_direct(
        &mut self,
        now: Instant,
        kind: Kind,
        to: NodeId,
        aux: u64,
        payload: Bytes,
    ) -> Result<Sending, Error> {
        let incarnation = self.reachable(to)?;
        let mut stale = Vec::new();
        let numbered = self
            .lanes
            .number(to, incarnation, payload.len(), &mut stale);
        self.fail_waiting(stale, || Error::Remote {
            node: to,
            message: "the node restarted before the message could be sent".into(),
        });
        let Numbered { seq, free, lane } = match numbered {
            Ok(numbered) => numbered,
            Err(Refused::Full { waiting_bytes }) => {
                return Err(Error::Backlog {
                    destination: format!("node {to}"),
                    waiting_bytes,
                });
            }
            Err(Refused::Exhausted) => {
                return Err(Error::Transport(TransportError::Other {
                    carrier: "engine",
                    detail: format!("the stream to node {to} has used every number"),
                }));
            }
        };
        if free {
            let frame = self.codec.encode_parts(
                &Header {
                    kind,
                    from: self.id,
                    from_incarnation: self.incarnation,
                    to,
                    to_incarnation: incarnation,
                    seq,
                    aux,
                },
                &[],
                &payload,
            );
            let transmit = self.transmit(
                Some(to),
                frame,
                InFlight::Direct {
                    to,
                    lane,
                    first: seq,
                    last: seq,
                    requests: if kind == Kind::Request {
                        vec![aux]
                    } else {
                        Vec::new()
                    },
                    queued: false,
                },
            );
            self.lanes.start(to, transmit.token);
            #[cfg(test)]
            self.numbers.insert(transmit.token, seq);
            return Ok(Sending::Now { seq, transmit });
        }
        let was_empty = !self.lanes.any_waiting();
        // Sealed when it goes out, alone or in a batch with the others
        // waiting then.
        self.lanes.wait(
            to,
            Waiting {
                lane,
                kind,
                aux,
                seq,
                payload,
                since: now,
            },
        );
        if was_empty {
            self.wake_by(now + self.send_timeout);
        }
        Ok(Sending::Queued { seq, lane })
    }

    /// Messages that will never be sent (lane by lane, in the order they
    /// were numbered): their senders are told, one range at a time.
    fn fail_waiting(&mut self, waiting: Vec<Waiting>, error: impl Fn() -> Error) {
        for waiting in waiting
            .iter()
            .filter(|waiting| waiting.kind == Kind::Request)
        {
            self.fail_request(waiting.aux, &error());
        }
        for range in waiting.chunk_by(|a, b| a.lane == b.lane && a.seq + 1 == b.seq) {
            let (first, last) = (&range[0], &range[range.len() - 1]);
            self.settle_direct(first.lane, first.seq, last.seq, Err(error()));
        }
    }

    /// This node's request `id` failed before it was sent.
    fn fail_request(&mut self, id: u64, error: &Error) {
        if self.forget_request(id).is_some() {
            self.outputs.push_back(Output::Replied {
                request: id,
                result: Err(clone_error(error)),
            });
        }
    }

    /// The node leaves: the `Leave` to publish (its outcome reported like any
    /// other), after which the core is closed.
    pub fn leave(&mut self) -> Result<Transmit, Error> {
        self.check_open()?;
        self.control(Kind::Leave, None);
        let transmit = self.transmits.pop_back().expect("a leave was just queued");
        self.close();
        Ok(transmit)
    }

    /// Stops the node: every pending request and waiting message fails with
    /// [`Error::Closed`], and nothing is accepted any more.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let waiting = self.lanes.drain();
        self.fail_waiting(waiting, || Error::Closed);
        let dropped = self.outbox.clear();
        if dropped > 0 {
            Stats::add(&self.stats.broadcasts_failed, dropped);
        }
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.forget_request(id);
            self.outputs.push_back(Output::Replied {
                request: id,
                result: Err(Error::Closed),
            });
        }
        self.transmits.retain(|t| {
            // A departure still goes out; nothing else does.
            crate::envelope::peek_kind(&t.frame) == Some(Kind::Leave)
        });
        self.next_heartbeat = None;
    }

    // ----- the carrier's news -----

    /// The carrier is done with transmit `token`: sent, or failed. An unknown
    /// outcome (a cancelled or stalled send) is a failure: the numbers it
    /// carried stay spent, and receivers that missed them report a gap.
    pub fn sent(&mut self, now: Instant, token: u64, result: Result<(), TransportError>) {
        let Some(inflight) = self.inflight.remove(&token) else {
            return;
        };
        #[cfg(test)]
        if let (Some(seq), true) = (
            self.numbers.remove(&token),
            self.give_back && result.is_err(),
        ) {
            match &inflight {
                InFlight::Broadcast { .. } => self.outbox.give_back(seq),
                InFlight::Direct { to, .. } => self.lanes.give_back(*to, seq),
                InFlight::Control => {}
            }
        }
        match inflight {
            InFlight::Broadcast { last, count, alone } => {
                self.outbox.published(now, last);
                match (&result, alone) {
                    (Ok(()), true) => Stats::inc(&self.stats.broadcasts_sent),
                    (Ok(()), false) => {}
                    (Err(_), true) => Stats::inc(&self.stats.send_failures),
                    (Err(error), false) => {
                        Stats::inc(&self.stats.send_failures);
                        Stats::add(&self.stats.broadcasts_failed, count);
                        tracing::warn!(%error, messages = count, last, "queued broadcasts not sent");
                        self.outputs.push_back(Output::Event(Event::SendFailed {
                            messages: count,
                            detail: error.to_string(),
                        }));
                    }
                }
            }
            InFlight::Direct {
                to,
                lane,
                first,
                last,
                requests,
                queued,
            } => {
                self.next_in_lane(to, token);
                // Each message of the frame settles with the frame's
                // outcome: its caller, or its request, hears of it.
                let result = result.map_err(Error::Transport);
                match &result {
                    Ok(()) => Stats::add(&self.stats.direct_sent, last - first + 1),
                    Err(error) => {
                        for id in requests {
                            self.fail_request(id, error);
                        }
                    }
                }
                if queued {
                    self.settle_direct(lane, first, last, result);
                } else if result.is_err() {
                    Stats::inc(&self.stats.send_failures);
                }
            }
            InFlight::Control => match result {
                Ok(()) => Stats::inc(&self.stats.heartbeats_sent),
                Err(error) => {
                    Stats::inc(&self.stats.send_failures);
                    tracing::debug!(%error, "heartbeat not sent");
                }
            },
        }
    }

    /// The carrier is done with frame `token` for `to`: what waited behind
    /// it goes out, together, as the lane's next frame.
    fn next_in_lane(&mut self, to: NodeId, token: u64) {
        let mut next = Vec::new();
        self.lanes.finished(
            to,
            token,
            self.direct_batch_bytes,
            self.replies_alone,
            &mut next,
        );
        if next.is_empty() {
            return;
        }
        let header = Header {
            kind: Kind::DirectBatch,
            from: self.id,
            from_incarnation: self.incarnation,
            to,
            to_incarnation: self.lanes.incarnation(to).unwrap_or_default(),
            seq: next[0].seq,
            aux: 0,
        };
        let records: Vec<DirectRecord<'_>> = next.iter().map(Waiting::record).collect();
        let frame = self.codec.seal_direct(&header, &records);
        drop(records);
        if next.len() > 1 {
            Stats::inc(&self.stats.batches_sent);
        }
        let requests = next
            .iter()
            .filter(|waiting| waiting.kind == Kind::Request)
            .map(|waiting| waiting.aux)
            .collect();
        let (first, last) = (next[0].seq, next[next.len() - 1].seq);
        let transmit = self.transmit(
            Some(to),
            frame,
            InFlight::Direct {
                to,
                lane: next[0].lane,
                first,
                last,
                requests,
                queued: true,
            },
        );
        self.lanes.start(to, transmit.token);
        self.transmits.push_back(transmit);
    }

    /// Direct messages `first..=last` of `lane` that waited their turn are
    /// settled (sent, failed, or will not be sent): their senders are told.
    /// (Requests among them that failed are told by the caller.)
    fn settle_direct(&mut self, lane: u64, first: u64, last: u64, result: Result<(), Error>) {
        if result.is_err() {
            Stats::add(&self.stats.send_failures, last - first + 1);
        }
        self.outputs.push_back(Output::Sent {
            lane,
            first,
            last,
            result,
        });
    }

    /// The carrier's link went down (`Some(detail)`) or came back (`None`).
    pub fn handle_link(&mut self, down: Option<String>) {
        match down {
            Some(detail) => {
                Stats::inc(&self.stats.link_downs);
                self.link_down = true;
                tracing::warn!(%detail, "carrier link down");
                self.outputs
                    .push_back(Output::Event(Event::LinkDown { detail }));
            }
            None => {
                Stats::inc(&self.stats.link_ups);
                tracing::info!("carrier link up");
                self.outputs.push_back(Output::Event(Event::LinkUp));
                if self.detection == FailureDetection::Off && std::mem::take(&mut self.link_down) {
                    // Without heartbeats, a join is how nodes that came or
                    // restarted while the link was down learn of this one,
                    // and it of them (they answer it).
                    self.control(Kind::Join, None);
                }
            }
        }
    }

    /// The carrier refused something before it became a frame.
    pub fn handle_refused(&mut self, reason: DropReason, detail: String) {
        self.count_drop(reason, || detail);
    }

    /// The carrier's failure detector's verdict on a member.
    pub fn handle_member_report(
        &mut self,
        now: Instant,
        id: NodeId,
        incarnation: u64,
        state: MemberState,
    ) {
        let mut events = Vec::new();
        let heard = self
            .membership
            .reported(now, id, incarnation, state, &mut events);
        if heard == Heard::Full {
            self.overflow("members");
        }
        self.member_events(events);
        self.wake_by(now);
    }

    /// A frame from the carrier.
    pub fn handle_frame(&mut self, now: Instant, frame: Bytes) {
        Stats::add(&self.stats.bytes_received, frame.len() as u64);
        let opened = Opened::open(&self.codec, frame);
        self.handle_opened(now, opened);
    }

    /// A frame opened with [`Opened::open`].
    pub fn handle_opened(&mut self, now: Instant, opened: Opened) {
        self.last_frame_at = now;
        Stats::inc(&self.stats.frames_received);
        match opened {
            Opened::Bad { error, from: None } => {
                self.count_drop(error.reason(), || error.to_string())
            }
            Opened::Bad {
                error,
                from: Some(from),
            } => self.count_drop(error.reason(), || format!("from node {from}: {error}")),
            Opened::One(envelope) => {
                let (from, incarnation) = (envelope.from, envelope.from_incarnation);
                if !self.own(from, incarnation) {
                    self.on_envelope(now, from, envelope);
                }
            }
            Opened::Batch {
                from,
                incarnation,
                envelopes,
            } => {
                if !self.own(from, incarnation) {
                    Stats::inc(&self.stats.batches_received);
                    for envelope in envelopes {
                        self.on_envelope(now, from, envelope);
                    }
                }
            }
        }
    }

    /// Whether a frame claims to come from this node: its own echo, or
    /// another process using this node's id (reported once per process).
    fn own(&mut self, from: NodeId, incarnation: u64) -> bool {
        if from != self.id {
            return false;
        }
        if incarnation != self.incarnation && self.id_conflict != incarnation {
            self.id_conflict = incarnation;
            tracing::error!(
                other_incarnation = incarnation,
                "another process uses this node id"
            );
            self.outputs
                .push_back(Output::Event(Event::DuplicateNodeId { incarnation }));
        }
        true
    }

    fn on_envelope(&mut self, now: Instant, from: NodeId, envelope: Envelope) {
        if self.closed {
            return;
        }
        let incarnation = envelope.from_incarnation;
        // The last number is never used, so that nothing after it can overflow.
        if envelope.seq == u64::MAX {
            return self.count_drop(DropReason::Malformed, || {
                format!("from node {from}: number {} is out of range", envelope.seq)
            });
        }
        let mut events = Vec::new();
        let dropped = match envelope.kind {
            Kind::Heartbeat | Kind::Join | Kind::Announce => {
                let heard =
                    self.membership
                        .heard(now, from, incarnation, envelope.aux, &mut events);
                match heard {
                    Heard::New | Heard::Known => {
                        let limits = self.held_limits();
                        let stream = self
                            .streams
                            .entry((from, incarnation, StreamKind::Broadcast))
                            .or_insert_with(|| Stream::after_announced(envelope.seq, limits));
                        stream.announce(envelope.seq, now);
                        let waiting = stream.deadline(self.reorder_timeout);
                        if heard == Heard::New {
                            self.wake_by(now);
                        } else if let Some(at) = waiting {
                            self.wake_by(at);
                        }
                        if envelope.kind == Kind::Join {
                            self.control(Kind::Announce, Some((from, incarnation)));
                        }
                        None
                    }
                    Heard::Full => {
                        self.overflow("members");
                        None
                    }
                    Heard::Stale | Heard::Conflict => Some(DropReason::Stale),
                }
            }
            Kind::Leave => {
                if self.membership.left(now, from, incarnation, &mut events) == Heard::Full {
                    self.overflow("members");
                }
                None
            }
            Kind::Broadcast => self.sequence(now, envelope, StreamKind::Broadcast, &mut events),
            Kind::Direct | Kind::Request | Kind::Reply | Kind::ReplyError => {
                if envelope.to != self.id || envelope.to_incarnation != self.incarnation {
                    Some(DropReason::Stale)
                } else {
                    self.sequence(now, envelope, StreamKind::Direct, &mut events)
                }
            }
            // Refused by the codec inside a batch; never on its own here.
            Kind::Batch | Kind::DirectBatch => Some(DropReason::Malformed),
        };
        self.member_events(events);
        if let Some(reason) = dropped {
            self.count_drop(reason, || format!("from node {from}"));
        }
    }

    fn held_limits(&self) -> HeldLimits {
        HeldLimits {
            count: MAX_HELD,
            bytes: self.max_held_bytes,
        }
    }

    /// Puts a numbered message through its sender's stream.
    fn sequence(
        &mut self,
        now: Instant,
        envelope: Envelope,
        kind: StreamKind,
        events: &mut Vec<MemberEvent>,
    ) -> Option<DropReason> {
        let (from, incarnation, seq) = (envelope.from, envelope.from_incarnation, envelope.seq);
        match self.membership.touched(now, from, incarnation, events) {
            Heard::Stale => {
                self.member_events(std::mem::take(events));
                return Some(DropReason::Stale);
            }
            Heard::Full => {
                self.overflow("members");
                return None;
            }
            Heard::New => self.wake_by(now),
            Heard::Known | Heard::Conflict => {}
        }
        // Streams of incarnations gone by now go before this one is looked up.
        self.member_events(std::mem::take(events));
        let first = match kind {
            StreamKind::Broadcast => seq,
            StreamKind::Direct => 1,
        };
        let limits = self.held_limits();
        let size = envelope.payload.len() + envelope.topic.len() + HELD_OVERHEAD;
        let key = (from, incarnation, kind);
        let stream = self
            .streams
            .entry(key)
            .or_insert_with(|| Stream::starting_at(first, limits));
        let before = stream.held_bytes();
        // The deliveries' vector is kept from one message to the next.
        let (mut deliveries, mut gaps) = (std::mem::take(&mut self.delivering), Vec::new());
        let outcome = stream.receive(seq, envelope, size, now, &mut deliveries, &mut gaps);
        let after = stream.held_bytes();
        if outcome == Outcome::Held && before == 0 {
            self.wake_by(now + self.reorder_timeout);
        }
        self.held_bytes = self.held_bytes + after - before;
        self.results(key, gaps, &mut deliveries);
        // Kept unless a release of many held messages made it large.
        if deliveries.capacity() <= KEPT_DELIVERIES {
            self.delivering = deliveries;
        }
        self.bound_held();
        match outcome {
            Outcome::Delivered | Outcome::Held => None,
            Outcome::Duplicate => Some(DropReason::Duplicate),
        }
    }

    /// Keeps the messages held out of order within their byte bound: the
    /// streams holding the most give up waiting first.
    fn bound_held(&mut self) {
        while self.held_bytes > self.max_held_bytes {
            let Some((&key, _)) = self
                .streams
                .iter()
                .max_by_key(|(key, stream)| (stream.held_bytes(), **key))
            else {
                return;
            };
            let stream = self.streams.get_mut(&key).expect("just found");
            let before = stream.held_bytes();
            let (mut deliveries, mut gaps) = (Vec::new(), Vec::new());
            stream.release(&mut deliveries, &mut gaps);
            self.held_bytes -= before;
            tracing::warn!(
                from = key.0,
                held = before,
                "out-of-order messages over their memory bound: missing ones declared lost"
            );
            self.results(key, gaps, &mut deliveries);
        }
    }

    /// Gaps, then deliveries, of one stream, for the application.
    fn results(&mut self, key: StreamKey, gaps: Vec<Gap>, deliveries: &mut Vec<Envelope>) {
        let (from, incarnation, stream) = key;
        for gap in gaps {
            Stats::inc(&self.stats.gaps);
            Stats::add(&self.stats.messages_lost, gap.count);
            tracing::warn!(
                from,
                ?stream,
                first = gap.first,
                count = gap.count,
                "messages lost"
            );
            self.outputs.push_back(Output::Gap {
                from,
                incarnation,
                stream,
                gap,
            });
        }
        for envelope in deliveries.drain(..) {
            match envelope.kind {
                Kind::Broadcast => {
                    Stats::inc(&self.stats.broadcasts_delivered);
                    self.outputs.push_back(Output::Broadcast(envelope));
                }
                Kind::Direct | Kind::Request => {
                    Stats::inc(&self.stats.direct_delivered);
                    let request = (envelope.kind == Kind::Request).then_some(envelope.aux);
                    self.outputs.push_back(Output::Incoming {
                        from: envelope.from,
                        payload: envelope.payload,
                        request,
                    });
                }
                Kind::Reply | Kind::ReplyError => self.complete_request(envelope),
                _ => {}
            }
        }
    }

    fn complete_request(&mut self, envelope: Envelope) {
        // A reply must come from the node the request went to.
        match self.pending.get(&envelope.aux) {
            Some(pending) if pending.node == envelope.from => {
                let sent = pending.deadline - pending.timeout;
                self.stats
                    .request_latency
                    .record(self.last_frame_at.saturating_duration_since(sent));
            }
            _ => return,
        }
        self.forget_request(envelope.aux);
        let result = match envelope.kind {
            Kind::Reply => Ok(envelope.payload),
            _ => Err(Error::Remote {
                node: envelope.from,
                message: String::from_utf8_lossy(&envelope.payload).into_owned(),
            }),
        };
        self.outputs.push_back(Output::Replied {
            request: envelope.aux,
            result,
        });
    }

    /// Membership changes: told to the application, and acted on (pending
    /// requests fail, streams and lanes of runs gone are dropped).
    fn member_events(&mut self, events: Vec<MemberEvent>) {
        for event in events {
            let Member {
                id, incarnation, ..
            } = event.member;
            let gone = match event.change {
                MemberChange::Died => {
                    tracing::warn!(member = id, "member dead");
                    self.fail_pending(id, || Error::NodeDead(id));
                    None
                }
                MemberChange::Left => {
                    tracing::info!(member = id, "member left");
                    self.fail_pending(id, || Error::NodeLeft(id));
                    Some(incarnation)
                }
                MemberChange::Restarted {
                    previous_incarnation,
                } => {
                    tracing::info!(member = id, incarnation, "member restarted");
                    self.fail_pending(id, || Error::Remote {
                        node: id,
                        message: "the node restarted before it replied".into(),
                    });
                    Some(previous_incarnation)
                }
                MemberChange::Removed => Some(incarnation),
                ref change => {
                    tracing::info!(member = id, ?change, "membership changed");
                    None
                }
            };
            let event_change = event.change.clone();
            self.outputs.push_back(Output::Member(event));
            if let Some(gone) = gone {
                // What that run sent and this node missed is reported, and
                // what waited behind it is delivered, before its streams go.
                for kind in [StreamKind::Broadcast, StreamKind::Direct] {
                    let key = (id, gone, kind);
                    if let Some(mut stream) = self.streams.remove(&key) {
                        self.held_bytes -= stream.held_bytes();
                        let (mut deliveries, mut gaps) = (Vec::new(), Vec::new());
                        stream.release(&mut deliveries, &mut gaps);
                        self.results(key, gaps, &mut deliveries);
                    }
                }
                let mut stale = Vec::new();
                self.lanes.forget(id, gone, &mut stale);
                let restarted = matches!(event_change, MemberChange::Restarted { .. });
                self.fail_waiting(stale, || {
                    if restarted {
                        Error::Remote {
                            node: id,
                            message: "the node restarted before the message could be sent".into(),
                        }
                    } else {
                        Error::NodeLeft(id)
                    }
                });
            }
        }
    }

    fn fail_pending(&mut self, node: NodeId, error: impl Fn() -> Error) {
        let mut ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.node == node)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.forget_request(id);
            self.outputs.push_back(Output::Replied {
                request: id,
                result: Err(error()),
            });
        }
    }

    // ----- time -----

    /// Does what is due at `now`: heartbeats, failure detection, gap
    /// time-outs, request and send deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.next_heartbeat.is_some_and(|at| now >= at) {
            self.control(Kind::Heartbeat, None);
            self.next_heartbeat = Some(now + self.heartbeat_interval);
        }
        let mut events = Vec::new();
        self.membership.tick(now, &mut events);
        self.member_events(events);
        let reorder = self.reorder_timeout;
        let mut expired: Vec<(StreamKey, Vec<Gap>, Vec<Envelope>)> = Vec::new();
        for (key, stream) in self.streams.iter_mut() {
            if stream.deadline(reorder).is_some_and(|at| now >= at) {
                let before = stream.held_bytes();
                let (mut deliveries, mut gaps) = (Vec::new(), Vec::new());
                stream.expire(now, reorder, &mut deliveries, &mut gaps);
                self.held_bytes = self.held_bytes + stream.held_bytes() - before;
                expired.push((*key, gaps, deliveries));
            }
        }
        // In a stable order, whatever the map's.
        expired.sort_by_key(|(key, ..)| *key);
        for (key, gaps, mut deliveries) in expired {
            self.results(key, gaps, &mut deliveries);
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let pending = self.forget_request(id).expect("a deadline has its request");
            Stats::inc(&self.stats.requests_timed_out);
            self.outputs.push_back(Output::Replied {
                request: id,
                result: Err(Error::Timeout {
                    node: pending.node,
                    timeout: pending.timeout,
                }),
            });
        }
        let mut late = Vec::new();
        self.lanes.expire(now, self.send_timeout, &mut late);
        let timeout = self.send_timeout;
        self.fail_waiting(late, || Error::Transport(TransportError::Stalled(timeout)));
    }

    // ----- helpers -----

    fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn transmit(&mut self, to: Option<NodeId>, frame: Bytes, what: InFlight) -> Transmit {
        let token = self.token();
        self.inflight.insert(token, what);
        Transmit { token, to, frame }
    }

    /// Queues a heartbeat-like message: to everyone, or to one node's run.
    /// It announces the last broadcast whose publish is over, so it never
    /// announces one still queued.
    fn control(&mut self, kind: Kind, to: Option<(NodeId, u64)>) {
        self.heartbeat_counter += 1;
        let (node, incarnation) = to.unwrap_or((0, 0));
        let frame = self.codec.encode_parts(
            &Header {
                kind,
                from: self.id,
                from_incarnation: self.incarnation,
                to: node,
                to_incarnation: incarnation,
                seq: self.outbox.settled(),
                aux: self.heartbeat_counter,
            },
            &[],
            &[],
        );
        let transmit = self.transmit(to.map(|(node, _)| node), frame, InFlight::Control);
        self.transmits.push_back(transmit);
    }

    fn count_drop(&mut self, reason: DropReason, detail: impl FnOnce() -> String) {
        let counter = match reason {
            DropReason::Malformed => &self.stats.dropped_malformed,
            DropReason::Unauthenticated => &self.stats.dropped_unauthenticated,
            DropReason::TooLarge => &self.stats.dropped_too_large,
            DropReason::Duplicate => &self.stats.dropped_duplicate,
            DropReason::Stale => &self.stats.dropped_stale,
        };
        Stats::inc(counter);
        if matches!(
            reason,
            DropReason::Malformed | DropReason::Unauthenticated | DropReason::TooLarge
        ) {
            let detail = detail();
            // Anyone who can reach the carrier can send junk: the log says
            // so a few times per window, then how much it did not say.
            match self.drop_warnings.admit(reason, Instant::now()) {
                Admit::Log { suppressed: 0 } => {
                    tracing::warn!(?reason, %detail, "frame dropped")
                }
                Admit::Log { suppressed } => tracing::warn!(
                    ?reason,
                    %detail,
                    suppressed,
                    "frame dropped ({suppressed} more of this kind were not logged)"
                ),
                Admit::Quiet => {}
            }
            self.outputs
                .push_back(Output::Event(Event::Dropped { reason, detail }));
        }
    }

    fn overflow(&mut self, queue: &str) {
        Stats::inc(&self.stats.dropped_overflow);
        tracing::warn!(queue, "full: message ignored");
        self.outputs.push_back(Output::Event(Event::Overflow {
            queue: queue.to_string(),
            dropped: 1,
        }));
    }
}

/// The same outcome again, for a second party that must hear of it.
pub(crate) fn clone_result(result: &Result<(), Error>) -> Result<(), Error> {
    match result {
        Ok(()) => Ok(()),
        Err(error) => Err(clone_error(error)),
    }
}

/// The same error again, for a second party that must hear of it.
pub(crate) fn clone_error(error: &Error) -> Error {
    match error {
        Error::Transport(error) => Error::Transport(error.clone()),
        Error::Remote { node, message } => Error::Remote {
            node: *node,
            message: message.clone(),
        },
        Error::NodeDead(node) => Error::NodeDead(*node),
        Error::NodeLeft(node) => Error::NodeLeft(*node),
        Error::Closed => Error::Closed,
        other => Error::Transport(TransportError::Other {
            carrier: "engine",
            detail: other.to_string(),
        }),
    }
}

/// Checks a topic name the application gave.
pub(crate) fn check_topic(topic: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidTopic {
            topic: topic.into(),
            reason,
        })
    };
    if topic.is_empty() {
        return invalid("must not be empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return invalid("longer than 255 bytes");
    }
    if topic.chars().any(char::is_control) {
        return invalid("contains control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
