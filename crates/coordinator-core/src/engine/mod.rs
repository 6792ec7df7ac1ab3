//! The cluster engine: turns a [`Transport`] into a [`Coordinator`].
//!
//! Two tasks per node: one reads what the carrier delivers (decode, verify,
//! de-duplicate, order, dispatch), one keeps time (heartbeats, failure
//! detection, gap time-outs). Decisions are made by the sans-IO pieces in
//! [`crate::membership`] and [`crate::sequence`]; this module only wires them
//! to the carrier and the application, and never holds a lock across an await.

mod inbound;
mod outbound;
mod outbox;
mod settings;

pub use outbound::Replier;
pub use settings::Settings;

use crate::api::*;
use crate::envelope::{Codec, Envelope, Kind, MAX_TOPIC_LEN};
use crate::error::Error;
use crate::faults::Faults;
use crate::membership::{Detection, Membership};
use crate::sequence::Stream;
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::{Link, Transport};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Out-of-order messages held per stream before the gap is declared at once.
const MAX_HELD: usize = 8192;
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
            settings,
            carrier,
            link,
            faults,
        } = self;
        let Link { transport, inbound } = link;
        let detection = Detection {
            suspect_after: settings.suspect_timeout,
            dead_after: settings.dead_timeout,
            forget_after: settings.forget_after,
        };
        let incarnation = settings.incarnation.unwrap_or_else(new_incarnation);
        let mut membership = Membership::new(settings.node_id, incarnation, detection);
        if transport.reports_membership() {
            membership = membership.reported_by_carrier();
        }
        let key = settings
            .cluster_key
            .as_ref()
            .map(|key| key.expose().as_bytes().to_vec());
        let codec = Codec::new(
            &settings.cluster,
            key.as_deref(),
            settings.encrypt,
            settings.max_message_size,
        );
        let (inbox_sender, inbox_receiver) = mpsc::channel(settings.queue_capacity);
        let span = tracing::info_span!("coordinator", node = settings.node_id, carrier);
        let outbox = outbox::Outbox::new(&codec, settings.node_id, incarnation);
        let inner = Arc::new(Inner {
            id: settings.node_id,
            incarnation,
            carrier,
            codec,
            transport,
            state: Mutex::new(State {
                membership,
                streams: HashMap::new(),
            }),
            outbox,
            direct_out: Mutex::new(HashMap::new()),
            heartbeat_counter: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            subscriptions: RwLock::new(HashMap::new()),
            inbox_sender,
            inbox_receiver: Mutex::new(Some(inbox_receiver)),
            member_events: broadcast::channel(EVENT_BUFFER).0,
            events: broadcast::channel(EVENT_BUFFER).0,
            stats: Stats::default(),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            id_conflict: AtomicU64::new(0),
            wake_timer: Notify::new(),
            dispatch_order: Mutex::new(()),
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
        // What arrives is processed in the carrier's own task from now on.
        let handler: Arc<dyn crate::transport::InboundHandler> = inner.clone();
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
    settings: Settings,
    codec: Codec,
    transport: Arc<dyn Transport>,
    state: Mutex<State>,
    /// Broadcasts numbered, waiting for the carrier or being published.
    outbox: outbox::Outbox,
    /// Per destination: the lock that keeps its direct stream in order.
    direct_out: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<DirectOut>>>>,
    heartbeat_counter: AtomicU64,
    pending: Mutex<HashMap<u64, PendingRequest>>,
    next_request: AtomicU64,
    subscriptions: RwLock<HashMap<Arc<str>, Vec<Subscriber>>>,
    inbox_sender: mpsc::Sender<Incoming>,
    inbox_receiver: Mutex<Option<mpsc::Receiver<Incoming>>>,
    member_events: broadcast::Sender<MemberEvent>,
    events: broadcast::Sender<Event>,
    stats: Stats,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Incarnation of the last other process seen using this node id.
    id_conflict: AtomicU64,
    wake_timer: Notify,
    /// Taken while the state lock is still held and kept while the results
    /// are handed out, so that they are handed out in the order the state
    /// produced them: a frame and a re-ordering time-out that release
    /// messages of one stream never overtake each other.
    dispatch_order: Mutex<()>,
    span: tracing::Span,
}

struct State {
    membership: Membership,
    streams: HashMap<StreamKey, Stream<Envelope>>,
}

/// A sender's stream: (sender, its incarnation, which stream).
type StreamKey = (NodeId, u64, StreamKind);

/// The direct stream to one destination incarnation.
#[derive(Default)]
struct DirectOut {
    incarnation: u64,
    last_seq: u64,
}

struct PendingRequest {
    node: NodeId,
    reply: oneshot::Sender<Result<Bytes, Error>>,
}

struct Subscriber {
    sender: mpsc::Sender<BroadcastMessage>,
    receive_own: bool,
}

impl Inner {
    fn stop(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.outbox.close();
        for (_, pending) in self.pending.lock().drain() {
            let _ = pending.reply.send(Err(Error::Closed));
        }
        self.subscriptions.write().clear();
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

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Heartbeats, failure detection and gap time-outs.
    async fn timer_loop(self: Arc<Self>) {
        if let Err(error) = self.send_heartbeat(Kind::Join, None).await {
            tracing::warn!(%error, "could not announce this node; heartbeats will retry");
        }
        let interval = self.settings.heartbeat_interval;
        let mut next_heartbeat = Instant::now() + interval;
        loop {
            let now = Instant::now();
            if now >= next_heartbeat {
                if let Err(error) = self.send_heartbeat(Kind::Heartbeat, None).await {
                    tracing::debug!(%error, "heartbeat not sent");
                }
                next_heartbeat = now + interval;
            }
            let deadline = self
                .on_time(Instant::now())
                .map_or(next_heartbeat, |d| d.min(next_heartbeat));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = self.wake_timer.notified() => {}
            }
        }
    }

    /// Runs what is due at `now`; returns when something is next due.
    fn on_time(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut work = inbound::Work::default();
        let reorder_timeout = self.settings.reorder_timeout;
        let (next, order) = {
            let mut state = self.state.lock();
            let state = &mut *state;
            state.membership.tick(now, &mut work.member_events);
            let mut next = state.membership.next_deadline();
            let mut found = Vec::new();
            for (&(from, _, kind), stream) in state.streams.iter_mut() {
                stream.expire(now, reorder_timeout, &mut work.deliveries, &mut found);
                work.gaps
                    .extend(found.drain(..).map(|gap| (from, kind, gap)));
                next = match (next, stream.deadline(reorder_timeout)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Self::forget_streams(state, &work.member_events);
            // Published under the lock: whoever sees the new state can no longer
            // receive the event that announced it (nor miss one that follows).
            self.announce(&work.member_events);
            (next, self.dispatch_order.lock())
        };
        self.dispatch(work);
        drop(order);
        next
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

    async fn broadcast(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        self.inner.broadcast(topic, payload).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        self.inner.check_open()?;
        check_topic(topic)?;
        let (sender, receiver) = mpsc::channel(self.inner.settings.queue_capacity);
        let mut subscriptions = self.inner.subscriptions.write();
        let topic: Arc<str> = match subscriptions.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Arc::from(topic),
        };
        subscriptions
            .entry(topic.clone())
            .or_default()
            .push(Subscriber {
                sender,
                receive_own: options.receive_own,
            });
        Ok(Subscription::new(topic, receiver))
    }

    fn members(&self) -> Vec<Member> {
        self.inner.state.lock().membership.members()
    }

    fn member_events(&self) -> EventStream<MemberEvent> {
        EventStream::new(self.inner.member_events.subscribe())
    }

    fn events(&self) -> EventStream<Event> {
        EventStream::new(self.inner.events.subscribe())
    }

    async fn send(&self, to: NodeId, payload: Bytes) -> Result<(), Error> {
        self.inner.send(to, payload).await
    }

    async fn request(&self, to: NodeId, payload: Bytes, timeout: Duration) -> Result<Bytes, Error> {
        self.inner.request(to, payload, timeout).await
    }

    fn inbox(&self) -> Result<Inbox, Error> {
        self.inner
            .inbox_receiver
            .lock()
            .take()
            .map(Inbox::new)
            .ok_or(Error::InboxTaken)
    }

    fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    async fn leave(&self) -> Result<(), Error> {
        self.inner.check_open()?;
        // What is queued goes out before the departure, if the carrier takes it.
        let _ = tokio::time::timeout(LEAVE_DRAIN, self.inner.outbox.drained()).await;
        let result = self.inner.send_heartbeat(Kind::Leave, None).await;
        self.inner.stop();
        result
    }
}

fn check_topic(topic: &str) -> Result<(), Error> {
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
