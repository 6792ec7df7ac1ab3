//! The cluster engine: turns a [`Transport`] into a [`Coordinator`].
//!
//! Everything that decides is in [`core::Core`], sans-IO. This module is the
//! driver around it: it takes the core (one lock, never held across an
//! await), feeds it what happens (a call, a frame, the outcome of a send, the
//! time), hands its results to the application's queues while it still holds
//! the core (so they come out in the order the core produced them), and
//! carries out its frames once it has let go.
//!
//! Two tasks per node: one keeps time (heartbeats, failure detection, gap,
//! request and send deadlines), one publishes queued broadcasts in batches.
//! What arrives is handled in the carrier's own task. Every send has a
//! deadline (`Settings::send_timeout`): a stalled carrier costs its frame,
//! never the node.

pub mod core;
mod lanes;
mod outbox;
mod outcomes;
mod settings;

pub(crate) use outcomes::Group;
pub use settings::Settings;

use self::core::{Broadcasting, Core, Opened, Output, Sending, Transmit};
use self::outcomes::Outcomes;
use crate::api::*;
use crate::envelope::Envelope;
use crate::error::{Error, TransportError};
use crate::stats::{Stats, StatsSnapshot};
use crate::testing::Faults;
use crate::transport::{Inbound, InboundHandler, Link, Transport};
use async_trait::async_trait;
use bytes::Bytes;
use foldhash::HashMap;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How long `leave` waits for queued broadcasts to go out.
const LEAVE_DRAIN: Duration = Duration::from_secs(2);
/// Membership and diagnostic events buffered per receiver.
const EVENT_BUFFER: usize = 4096;

/// A running node of the cluster over some carrier.
///
/// Dropping it stops it abruptly (like [`Node::abort`]); call
/// [`Coordinator::leave`] first for a graceful departure.
pub struct Node {
    inner: Arc<Inner>,
}

/// Builds a [`Node`] from settings and a connected carrier.
pub struct NodeBuilder {
    settings: Settings,
    carrier: &'static str,
    link: Link,
    faults: Option<Arc<Faults>>,
}

impl NodeBuilder {
    /// Applies injected faults to what this node receives (tests).
    pub fn faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Starts the node's tasks and announces it to the cluster. Needs a tokio runtime.
    pub fn start(self) -> Result<Node, Error> {
        let NodeBuilder {
            mut settings,
            carrier,
            link,
            faults,
        } = self;
        let Link { transport, inbound } = link;
        settings.authenticated_links = transport.authenticates_links();
        let incarnation = settings.incarnation.unwrap_or_else(new_incarnation);
        let core = Core::new(&settings, incarnation, transport.reports_membership())
            .replies_alone(transport.replies_alone());
        if core.failure_detection() == FailureDetection::Off {
            tracing::info!(
                node = settings.node_id,
                carrier,
                "heartbeats are off: members are the nodes heard from, and no failure is detected"
            );
        }
        let (inbox_sender, inbox_receiver) =
            queue(settings.queue_capacity, settings.max_queue_bytes);
        let span = tracing::info_span!("coordinator", node = settings.node_id, carrier);
        let inner = Arc::new(Inner {
            id: settings.node_id,
            incarnation,
            carrier,
            failure_detection: core.failure_detection(),
            codec: core.codec().clone(),
            stats: core.stats().clone(),
            transport,
            engine: Mutex::new(Engine {
                core,
                timer_at: None,
            }),
            delivery: Mutex::new(Delivery {
                subscriptions: HashMap::default(),
                inbox: inbox_sender,
                outcomes: Outcomes::default(),
                replies: HashMap::default(),
                refused: Vec::new(),
                outputs: VecDeque::new(),
            }),
            inbox_receiver: Mutex::new(Some(Inbox::new(inbox_receiver))),
            member_events: broadcast::channel(EVENT_BUFFER).0,
            events: broadcast::channel(EVENT_BUFFER).0,
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            own_wanted: AtomicBool::new(false),
            wake_timer: Notify::new(),
            flush: Notify::new(),
            room: Notify::new(),
            span: span.clone(),
            settings,
        });
        let mut tasks = Vec::new();
        let inbound = match faults {
            Some(faults) => {
                let (inbound, stage) = faults.wrap(inner.id, inbound);
                tasks.push(stage);
                inbound
            }
            None => inbound,
        };
        inner.with_core(|core, now| core.start(now));
        // What arrives is processed in the carrier's own task from now on.
        let handler: Arc<dyn InboundHandler> = inner.clone();
        inbound.attach(Arc::downgrade(&handler));
        drop(handler);
        tasks.push(tokio::spawn(
            inner.clone().timer_loop().instrument(span.clone()),
        ));
        tasks.push(tokio::spawn(
            inner.clone().flush_loop().instrument(span.clone()),
        ));
        inner.tasks.lock().extend(tasks);
        tracing::info!(parent: &span, incarnation, "node started");
        Ok(Node { inner })
    }
}

impl Node {
    /// Prepares a node over a connected carrier; `carrier` is its name in logs and [`Coordinator::carrier`].
    pub fn builder(settings: Settings, carrier: &'static str, link: Link) -> NodeBuilder {
        NodeBuilder {
            settings,
            carrier,
            link,
            faults: None,
        }
    }

    /// Starts a node over a connected carrier.
    pub fn start(settings: Settings, carrier: &'static str, link: Link) -> Result<Node, Error> {
        Self::builder(settings, carrier, link).start()
    }

    /// Starts a single node with nobody to talk to (the `Disabled` carrier).
    pub fn alone(settings: Settings) -> Result<Node, Error> {
        Self::start(settings, "Disabled", crate::transport::Alone::link())
    }

    /// This run's incarnation (higher at every start).
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Stops at once, without telling anyone (as if the process were killed):
    /// the others find out through failure detection.
    pub fn abort(&self) {
        self.inner.stop();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("incarnation", &self.inner.incarnation)
            .field("carrier", &self.inner.carrier)
            .finish()
    }
}

/// A new run's incarnation: microseconds since the epoch, so that a restarted
/// process gets a higher one, and never the same twice in one process.
pub fn new_incarnation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    // Two starts in the same process within one microsecond still differ.
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

pub(crate) struct Inner {
    id: NodeId,
    incarnation: u64,
    carrier: &'static str,
    failure_detection: FailureDetection,
    settings: Settings,
    codec: Arc<crate::envelope::Codec>,
    stats: Arc<Stats>,
    transport: Arc<dyn Transport>,
    /// The core. Taken first when both are taken.
    engine: Mutex<Engine>,
    /// The application's queues, and who waits for what. Taken while the
    /// core is, and kept while the core's results are handed out after the
    /// core is let go: results come out in the order the core produced
    /// them, and a task they wake finds the core free.
    delivery: Mutex<Delivery>,
    inbox_receiver: Mutex<Option<Inbox>>,
    member_events: broadcast::Sender<MemberEvent>,
    events: broadcast::Sender<Event>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// A subscription asked for this node's own broadcasts (never unset).
    own_wanted: AtomicBool,
    /// A deadline moved earlier: the timer looks again.
    wake_timer: Notify,
    /// Queued broadcasts can go out.
    flush: Notify,
    /// A frame is settled or a lane's messages expired: room in the outbox
    /// or in a lane, or the outbox drained.
    room: Notify,
    span: tracing::Span,
}

struct Engine {
    core: Core,
    /// When the timer task will next look at the core (`None`: not until woken).
    timer_at: Option<Instant>,
}

struct Delivery {
    subscriptions: HashMap<Arc<str>, Vec<Subscriber>>,
    inbox: QueueSender<Incoming>,
    /// Callers whose message waits its turn, by lane.
    outcomes: Outcomes,
    /// Callers waiting for a reply, by request id.
    replies: HashMap<u64, oneshot::Sender<Result<Bytes, Error>>>,
    /// Requests the inbox refused: dropped once the core is let go, since
    /// dropping one answers it through the core.
    refused: Vec<Incoming>,
    /// The core's results being handed out (kept for its allocation).
    outputs: VecDeque<Output>,
}

/// A caller's wait that is over: a reply.
struct Settled(oneshot::Sender<Result<Bytes, Error>>, Result<Bytes, Error>);

impl Settled {
    fn wake(self) {
        let _ = self.0.send(self.1);
    }
}

struct Subscriber {
    sender: QueueSender<BroadcastMessage>,
    receive_own: bool,
}

impl Inner {
    /// Runs `f` on the core (and the application's queues) at the current
    /// time, hands the core's results to the application, and returns what
    /// `f` returned with the frames to send.
    fn with_shared<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Engine, &mut Delivery, Instant) -> R,
    ) -> (R, Vec<Transmit>) {
        let mut engine = self.engine.lock();
        // Read under the lock, so that the core never sees time go back.
        let now = Instant::now();
        let mut delivery = self.delivery.lock();
        let result = f(&mut engine, &mut delivery, now);
        (result, self.hand_out(engine, Some(delivery)))
    }

    /// [`Inner::with_shared`] for the core alone; the frames it yields are
    /// sent. The queues are taken only if the core has results for them.
    fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut Core, Instant) -> R) -> R {
        let mut engine = self.engine.lock();
        let now = Instant::now();
        let result = f(&mut engine.core, now);
        let delivery = engine.core.has_outputs().then(|| self.delivery.lock());
        let transmits = self.hand_out(engine, delivery);
        self.send_all(transmits);
        result
    }

    /// After a call on the core: takes its frames, hands its results to the
    /// application (the queues are held from before the core is let go until
    /// all are handed out, so they come out in the order the core produced
    /// them, and a task they wake finds the core free), wakes the timer or
    /// the flush task if needed.
    fn hand_out(
        self: &Arc<Self>,
        mut engine: MutexGuard<'_, Engine>,
        delivery: Option<MutexGuard<'_, Delivery>>,
    ) -> Vec<Transmit> {
        let mut transmits = Vec::new();
        while let Some(transmit) = engine.core.poll_transmit() {
            transmits.push(transmit);
        }
        // The timer is woken only for a deadline earlier than its own.
        let wake = engine
            .core
            .take_wake()
            .is_some_and(|at| engine.timer_at.is_none_or(|timer| at < timer));
        let batch = engine.core.batch_ready();
        if let Some(mut delivery) = delivery {
            let mut outputs = std::mem::take(&mut delivery.outputs);
            engine.core.take_outputs(&mut outputs);
            drop(engine);
            // Callers waiting for a reply or a send are woken once the queues
            // are let go too, so that a woken caller's next call finds both
            // locks free.
            let mut settled = Vec::new();
            let mut sent = Vec::new();
            for output in outputs.drain(..) {
                if let Some(waiter) = self.dispatch(&mut delivery, output, &mut sent) {
                    settled.push(waiter);
                }
            }
            delivery.outputs = outputs;
            let refused = std::mem::take(&mut delivery.refused);
            drop(delivery);
            for waiter in settled {
                waiter.wake();
            }
            sent.into_iter().for_each(Waker::wake);
            // Each unanswered request answers with an error as it is dropped.
            drop(refused);
        } else {
            drop(engine);
        }
        if wake {
            self.wake_timer.notify_one();
        }
        if batch {
            self.flush.notify_one();
        }
        transmits
    }

    /// Sends frames in tasks of their own (their callers do not wait for them).
    fn send_all(self: &Arc<Self>, transmits: Vec<Transmit>) {
        if transmits.is_empty() {
            return;
        }
        // Outside a runtime (a future dropped on another thread) nothing can
        // be sent: the core counts them failed, so no lane stays busy.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let mut engine = self.engine.lock();
            let now = Instant::now();
            for transmit in transmits {
                engine.core.sent(
                    now,
                    transmit.token,
                    Err(TransportError::Closed(self.carrier)),
                );
            }
            return;
        };
        for transmit in transmits {
            let inner = self.clone();
            runtime.spawn(
                async move {
                    let _ = inner.perform(transmit).await;
                }
                .instrument(self.span.clone()),
            );
        }
    }

    /// Hands the carrier one frame, within the send deadline, and tells the
    /// core how it went (also when this future is dropped half-way).
    async fn perform(self: &Arc<Self>, transmit: Transmit) -> Result<(), TransportError> {
        let Transmit { token, to, frame } = transmit;
        let mut report = Report {
            inner: self,
            token,
            done: false,
        };
        let timeout = self.settings.send_timeout;
        let send = async {
            match to {
                None => self.transport.publish(frame).await,
                Some(node) => self.transport.send_to(node, frame).await,
            }
        };
        // Most sends finish on their first poll: only one that does not
        // costs a timer.
        let mut send = pin!(send);
        let result = match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
            Poll::Ready(result) => result,
            Poll::Pending => match tokio::time::timeout(timeout, send).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Stalled(timeout)),
            },
        };
        report.done = true;
        self.settle(token, result.clone());
        result
    }

    fn settle(self: &Arc<Self>, token: u64, result: Result<(), TransportError>) {
        self.with_core(|core, now| core.sent(now, token, result));
        // Room in the outbox, or in a lane: a broadcast or a post may wait for it.
        self.room.notify_waiters();
    }

    /// Hands one result of the core to the application (under the queues'
    /// lock); a caller waiting for it is returned (or added to `sent`), to
    /// be woken once that lock is let go.
    fn dispatch(
        self: &Arc<Self>,
        shared: &mut Delivery,
        output: Output,
        sent: &mut Vec<Waker>,
    ) -> Option<Settled> {
        match output {
            Output::Broadcast(envelope) => {
                let Envelope {
                    from,
                    seq,
                    topic,
                    payload,
                    ..
                } = envelope;
                let topic = std::str::from_utf8(&topic).unwrap_or_default();
                self.deliver_broadcast(shared, from, topic, seq, payload, false);
            }
            Output::Incoming {
                from,
                payload,
                request,
            } => {
                let reply = request.map(|request| Replier::new(self, from, request));
                let incoming = Incoming {
                    from,
                    payload,
                    reply,
                };
                match shared.inbox.try_send(incoming) {
                    Ok(()) => {}
                    Err(QueueRefused::Full(incoming)) => {
                        self.overflow("inbox");
                        shared.refused.push(incoming);
                    }
                    // Nobody reads the inbox any more: a request is answered with an error by its Replier.
                    Err(QueueRefused::Closed(incoming)) => shared.refused.push(incoming),
                }
            }
            Output::Replied { request, result } => {
                return shared
                    .replies
                    .remove(&request)
                    .map(|waiter| Settled(waiter, result));
            }
            Output::Sent {
                lane,
                first,
                last,
                result,
            } => shared.outcomes.settle(lane, first, last, result, sent),
            Output::Gap {
                from, stream, gap, ..
            } => {
                let _ = self.events.send(Event::Gap {
                    from,
                    stream,
                    first: gap.first,
                    count: gap.count,
                });
            }
            Output::Member(event) => {
                let _ = self.member_events.send(event);
            }
            Output::Event(event) => {
                let _ = self.events.send(event);
            }
        }
        None
    }

    fn overflow(&self, queue: &str) {
        Stats::inc(&self.stats.dropped_overflow);
        tracing::warn!(queue, "queue full, message dropped");
        let _ = self.events.send(Event::Overflow {
            queue: queue.to_string(),
            dropped: 1,
        });
    }

    /// Delivers a broadcast to the subscribers of its topic (only those that
    /// asked for their own messages, when `own`).
    fn deliver_broadcast(
        &self,
        shared: &mut Delivery,
        from: NodeId,
        topic: &str,
        seq: u64,
        payload: Bytes,
        own: bool,
    ) {
        let Some((topic, subscribers)) = shared.subscriptions.get_key_value(topic) else {
            return;
        };
        let message = BroadcastMessage {
            from,
            topic: topic.clone(),
            seq,
            payload,
        };
        // The last subscriber that takes it gets the message itself and the
        // ones before it get clones: one clone and one drop fewer per message
        // than cloning for each (no gain measurable at 128 B, BENCHMARKS.md).
        let takes = |subscriber: &&Subscriber| !own || subscriber.receive_own;
        let Some(last) = subscribers.iter().rposition(|s| takes(&s)) else {
            return;
        };
        let mut any_closed = false;
        let mut offer = |subscriber: &Subscriber, message| match subscriber.sender.try_send(message)
        {
            Ok(()) => {}
            Err(QueueRefused::Full(_)) => self.overflow(&format!("subscription {topic}")),
            Err(QueueRefused::Closed(_)) => any_closed = true,
        };
        for subscriber in subscribers[..last].iter().filter(takes) {
            offer(subscriber, message.clone());
        }
        offer(&subscribers[last], message);
        if any_closed {
            shared.subscriptions.retain(|_, subscribers| {
                subscribers.retain(|subscriber| !subscriber.sender.is_closed());
                !subscribers.is_empty()
            });
        }
    }

    fn stop(self: &Arc<Self>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let (_, transmits) = self.with_shared(|engine, delivery, _| {
            engine.core.close();
            delivery.subscriptions.clear();
        });
        drop(transmits);
        self.room.notify_waiters();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let transport = self.transport.clone();
            runtime.spawn(async move { transport.close().await });
        }
        tracing::info!(parent: &self.span, "node stopped");
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Relaxed) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Heartbeats, failure detection, gap, request and send deadlines.
    async fn timer_loop(self: Arc<Self>) {
        loop {
            let (deadline, transmits) = self.with_shared(|engine, _, now| {
                engine.core.handle_timeout(now);
                let next = engine.core.poll_timeout();
                engine.timer_at = next;
                next
            });
            self.send_all(transmits);
            // Messages that expired in a lane made room there.
            self.room.notify_waiters();
            let wake = pin!(self.wake_timer.notified());
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = wake => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    /// Publishes what waits in the outbox, batch after batch.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            loop {
                let Some(batch) = self.with_core(|core, _| core.poll_batch()) else {
                    break;
                };
                let _ = self.perform(batch).await;
            }
        }
    }

    async fn broadcast(self: &Arc<Self>, topic: &str, payload: Bytes) -> Result<(), Error> {
        // No `cooperate` here: a broadcast that waits its turn only queues,
        // and a full outbox makes the caller wait.
        let attempt = || {
            self.check_open()?;
            self.with_core(|core, now| core.broadcast(now, topic, &payload))
        };
        let full =
            |outcome: &Result<Broadcasting, Error>| matches!(outcome, Ok(Broadcasting::Full));
        let seq = match self.until_room(attempt, full, None).await? {
            Broadcasting::Alone { seq, transmit } => {
                // Boxed: a broadcast that only queues (the usual case under
                // load) then does not carry, and copy, the carrier's future.
                Box::pin(self.perform(transmit))
                    .await
                    .map_err(Error::Transport)?;
                seq
            }
            Broadcasting::Queued { seq } => seq,
            Broadcasting::Full => {
                unreachable!("`until_room` waits without a limit until there is room")
            }
        };
        // The queues are taken only if a subscriber wants this node's own messages.
        if self.own_wanted.load(Ordering::Acquire) {
            let mut delivery = self.delivery.lock();
            self.deliver_broadcast(&mut delivery, self.id, topic, seq, payload, true);
        }
        Ok(())
    }

    /// Waits for a message that waited its turn to be sent.
    async fn carry_out(self: &Arc<Self>, sending: Sending) -> Result<(), Error> {
        match sending {
            Sending::Now { transmit, .. } => self.perform(transmit).await.map_err(Error::Transport),
            Sending::Queued { .. } | Sending::Local => Ok(()),
        }
    }

    /// A message through the core, with a waiter registered for its outcome
    /// if it has to wait its turn.
    async fn send_with(
        self: &Arc<Self>,
        call: impl FnOnce(&mut Core, Instant) -> Result<Sending, Error>,
    ) -> Result<(), Error> {
        self.check_open()?;
        let (outcome, sending) = {
            let (result, transmits) = self.with_shared(|engine, delivery, now| {
                let sending = call(&mut engine.core, now)?;
                let outcome = match &sending {
                    Sending::Queued { seq, lane } => Some(SendOutcome::in_group(
                        delivery.outcomes.join(*lane, *seq),
                        *seq,
                    )),
                    _ => None,
                };
                Ok::<_, Error>((outcome, sending))
            });
            self.send_all(transmits);
            result?
        };
        match outcome {
            Some(outcome) => outcome.await,
            None => self.carry_out(sending).await,
        }
    }

    /// Makes `attempt` until it finds room (`full` says it did not), waiting
    /// for room between attempts, until `until` at most (then the last
    /// outcome is returned). Only a caller that found no room waits: it asks
    /// to be told before it looks again, so that room made in between is
    /// not missed.
    async fn until_room<T>(
        &self,
        mut attempt: impl FnMut() -> T,
        full: impl Fn(&T) -> bool,
        until: Option<tokio::time::Instant>,
    ) -> T {
        let mut outcome = attempt();
        while full(&outcome) {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            outcome = attempt();
            if !full(&outcome) {
                break;
            }
            match until {
                Some(until) => {
                    if tokio::time::timeout_at(until, room).await.is_err() {
                        break;
                    }
                }
                None => room.await,
            }
        }
        outcome
    }

    /// A message through the core that its caller does not wait for: a
    /// waiter for its outcome if it waits its turn, a task of its own if it
    /// goes now. When the lane to `to` is full, waits for room, up to the
    /// send time-out.
    async fn post(self: &Arc<Self>, to: NodeId, payload: Bytes) -> Result<SendOutcome, Error> {
        let attempt = || {
            self.check_open()?;
            let (result, transmits) = self.with_shared(|engine, delivery, now| {
                let sending = engine.core.send(now, to, payload.clone())?;
                Ok::<_, Error>(match sending {
                    Sending::Queued { seq, lane } => Posted::Queued(SendOutcome::in_group(
                        delivery.outcomes.join(lane, seq),
                        seq,
                    )),
                    Sending::Now { transmit, .. } => Posted::Now(transmit),
                    Sending::Local => Posted::Done,
                })
            });
            self.send_all(transmits);
            result
        };
        let full = |outcome: &Result<Posted, Error>| matches!(outcome, Err(Error::Backlog { .. }));
        // Room is made as frames to any node are settled or expire; the wait
        // is bounded all the same, should none ever be made.
        let until = tokio::time::Instant::now() + self.settings.send_timeout;
        Ok(match self.until_room(attempt, full, Some(until)).await? {
            Posted::Queued(outcome) => outcome,
            Posted::Done => SendOutcome::ready(Ok(())),
            Posted::Now(transmit) => {
                let (sender, receiver) = oneshot::channel();
                let inner = self.clone();
                tokio::spawn(
                    async move {
                        let result = inner.perform(transmit).await.map_err(Error::Transport);
                        let _ = sender.send(result);
                    }
                    .instrument(self.span.clone()),
                );
                SendOutcome::waiting(receiver)
            }
        })
    }

    async fn request(
        self: &Arc<Self>,
        to: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        cooperate().await;
        self.check_open()?;
        let (sender, mut receiver) = oneshot::channel();
        let (result, transmits) = self.with_shared(|engine, delivery, now| {
            let (id, sending) = engine.core.request(now, to, payload, timeout)?;
            delivery.replies.insert(id, sender);
            Ok::<_, Error>((id, sending))
        });
        self.send_all(transmits);
        let (id, sending) = result?;
        let mut forget = ForgetRequest {
            inner: self,
            id,
            settled: false,
        };
        if let Sending::Now { transmit, .. } = sending {
            let send = pin!(self.perform(transmit));
            tokio::select! {
                biased;
                // A failed send settles the request with its error.
                _ = send => {}
                result = &mut receiver => {
                    forget.settled = result.is_ok();
                    return result.unwrap_or(Err(Error::Closed));
                }
            }
        }
        let result = receiver.await;
        forget.settled = result.is_ok();
        result.unwrap_or(Err(Error::Closed))
    }

    async fn leave(self: &Arc<Self>) -> Result<(), Error> {
        self.check_open()?;
        // What is queued goes out before the departure, if the carrier takes it.
        let drained = async {
            loop {
                let mut room = pin!(self.room.notified());
                room.as_mut().enable();
                if self.engine.lock().core.outbox_drained() {
                    return;
                }
                room.await;
            }
        };
        let _ = tokio::time::timeout(LEAVE_DRAIN, drained).await;
        let transmit = self.with_core(|core, _| core.leave())?;
        let result = self.perform(transmit).await.map_err(Error::Transport);
        self.stop();
        result
    }
}

/// What became of a posted message, before it is handed to its caller.
enum Posted {
    Queued(SendOutcome),
    Now(Transmit),
    Done,
}

/// A call that the carrier finishes at once never waits, so a task sending
/// in a loop would never let the runtime run anything else on its thread
/// (among them the receiving side of an in-process carrier): each call takes
/// a unit of the task's budget, as tokio's own channels and sockets do, and
/// yields once it is spent.
async fn cooperate() {
    tokio::task::coop::consume_budget().await;
}

/// Reports a send whose future was dropped before the carrier answered: its
/// outcome is unknown, so the core counts it as failed (numbers stay spent).
struct Report<'a> {
    inner: &'a Arc<Inner>,
    token: u64,
    done: bool,
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.done {
            let cancelled = TransportError::Other {
                carrier: self.inner.carrier,
                detail: "the send was cancelled before the carrier answered".into(),
            };
            self.inner.settle(self.token, Err(cancelled));
        }
    }
}

/// Forgets a pending request when its caller stops waiting, for whatever reason.
struct ForgetRequest<'a> {
    inner: &'a Arc<Inner>,
    id: u64,
    settled: bool,
}

impl Drop for ForgetRequest<'_> {
    fn drop(&mut self) {
        if self.settled {
            // The core settled it and handed the result out: nothing to forget.
            return;
        }
        self.inner.engine.lock().core.cancel_request(self.id);
        self.inner.delivery.lock().replies.remove(&self.id);
    }
}

/// The carrier hands each item over in its own task.
impl InboundHandler for Inner {
    fn handle(self: Arc<Self>, item: Inbound) {
        let _span = self.span.enter();
        match item {
            Inbound::Frame(frame) => {
                // Decoding and checking the seal need no state: done before
                // taking the core.
                crate::stats::Stats::add(&self.stats.bytes_received, frame.len() as u64);
                let opened = Opened::open(&self.codec, frame);
                self.with_core(|core, now| core.handle_opened(now, opened));
            }
            Inbound::LinkDown(detail) => self.with_core(|core, _| core.handle_link(Some(detail))),
            Inbound::LinkUp => self.with_core(|core, _| core.handle_link(None)),
            Inbound::Member {
                id,
                incarnation,
                state,
            } => self.with_core(|core, now| core.handle_member_report(now, id, incarnation, state)),
            Inbound::Refused { reason, detail } => {
                self.with_core(|core, _| core.handle_refused(reason, detail))
            }
        }
    }
}

#[async_trait]
impl Coordinator for Node {
    fn node_id(&self) -> NodeId {
        self.inner.id
    }

    fn carrier(&self) -> &'static str {
        self.inner.carrier
    }

    fn failure_detection(&self) -> FailureDetection {
        self.inner.failure_detection
    }

    async fn broadcast(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        self.inner.broadcast(topic, payload).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        self.inner.check_open()?;
        self::core::check_topic(topic)?;
        let (sender, receiver) = queue(
            self.inner.settings.queue_capacity,
            self.inner.settings.max_queue_bytes,
        );
        let mut shared = self.inner.delivery.lock();
        let topic: Arc<str> = match shared.subscriptions.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Arc::from(topic),
        };
        shared
            .subscriptions
            .entry(topic.clone())
            .or_default()
            .push(Subscriber {
                sender,
                receive_own: options.receive_own,
            });
        if options.receive_own {
            self.inner.own_wanted.store(true, Ordering::Release);
        }
        Ok(Subscription::new(topic, receiver))
    }

    fn members(&self) -> Vec<Member> {
        let mut members = self.inner.engine.lock().core.members();
        for member in &mut members {
            member.address = self.inner.transport.address_of(member.id);
        }
        members
    }

    fn member_events(&self) -> EventStream<MemberEvent> {
        EventStream::new(self.inner.member_events.subscribe())
    }

    fn events(&self) -> EventStream<Event> {
        EventStream::new(self.inner.events.subscribe())
    }

    async fn send(&self, to: NodeId, payload: Bytes) -> Result<(), Error> {
        // Before anything is numbered: a send dropped here was never made.
        // (A reply does not yield first: once answered, it goes out.)
        cooperate().await;
        self.inner
            .send_with(|core, now| core.send(now, to, payload))
            .await
    }

    async fn post(&self, to: NodeId, payload: Bytes) -> Result<SendOutcome, Error> {
        // Unlike `send`, a post to another node never takes the task's
        // budget: it does not wait for the carrier, and a poster that outruns
        // it finds the lane full and waits for room, so it yields all the
        // same. Yielding every 128 posts instead let one thread do the
        // sending and the receiving in turns with the posting while the other
        // idled (posts at 0.6x the rate of broadcasts on Memory, see
        // BENCHMARKS.md). A post to this node itself is handled at once, as
        // a `send` is: that one takes its unit (before anything is done, so
        // that a post dropped there was never made).
        if to == self.inner.id {
            cooperate().await;
        }
        self.inner.post(to, payload).await
    }

    async fn request(&self, to: NodeId, payload: Bytes, timeout: Duration) -> Result<Bytes, Error> {
        self.inner.request(to, payload, timeout).await
    }

    fn inbox(&self) -> Result<Inbox, Error> {
        self.inner
            .inbox_receiver
            .lock()
            .take()
            .ok_or(Error::InboxTaken)
    }

    fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    async fn leave(&self) -> Result<(), Error> {
        self.inner.leave().await
    }
}

/// Answers one request. Dropping it unanswered sends an error reply, so the
/// requester fails at once instead of waiting for its time-out.
pub struct Replier {
    inner: Weak<Inner>,
    node: NodeId,
    to: NodeId,
    request: u64,
    answered: bool,
}

impl std::fmt::Debug for Replier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replier(to node {}, request {})", self.to, self.request)
    }
}

impl Replier {
    fn new(inner: &Arc<Inner>, to: NodeId, request: u64) -> Self {
        Self {
            inner: Arc::downgrade(inner),
            node: inner.id,
            to,
            request,
            answered: false,
        }
    }

    pub(crate) async fn reply(mut self, result: Result<Bytes, String>) -> Result<(), Error> {
        self.answered = true;
        let inner = self.inner.upgrade().ok_or(Error::Closed)?;
        let (to, request) = (self.to, self.request);
        inner
            .send_with(|core, now| core.reply(now, to, request, result))
            .await
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let message = format!("node {} dropped the request without replying", self.node);
        let (to, request) = (self.to, self.request);
        let sending = inner.with_core(|core, now| core.reply(now, to, request, Err(message)));
        if let Ok(Sending::Now { transmit, .. }) = sending {
            inner.send_all(vec![transmit]);
        }
    }
}
