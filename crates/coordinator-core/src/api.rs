//! The interface the application sees, whatever the carrier.

use crate::error::Error;
use crate::stats::StatsSnapshot;
use async_trait::async_trait;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Identifies a node in the cluster (configured, or derived from the host name).
pub type NodeId = u64;

/// Where a member stands, as seen by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MemberState {
    /// Heard from within the suspect timeout.
    Alive,
    /// Silent for longer than the suspect timeout; may still be alive.
    Suspect,
    /// Silent for longer than the dead timeout. Messages to it fail fast.
    Dead,
    /// Left gracefully. Not listed by [`Coordinator::members`].
    Left,
}

/// One node of the cluster as seen by this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub id: NodeId,
    /// Changes every time the node starts: a restarted node is the same id with a
    /// higher incarnation, never a second entry.
    pub incarnation: u64,
    pub state: MemberState,
    /// This is the local node.
    pub local: bool,
    /// Since when it is in `state` (the local node: since it started).
    #[serde(skip)]
    pub since: std::time::Instant,
    /// Where the carrier reaches it, where the carrier knows (Native: its
    /// advertised address); brokers do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// What changed about a member.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberChange {
    /// A node seen for the first time.
    Joined,
    /// A known node came back with a new incarnation (it restarted).
    Restarted { previous_incarnation: u64 },
    /// Silent for longer than the suspect timeout.
    Suspected,
    /// A suspect or dead node was heard from again.
    Recovered,
    /// Silent for longer than the dead timeout.
    Died,
    /// Left gracefully.
    Left,
    /// A dead or departed node was forgotten.
    Removed,
}

/// A change of membership, in the order this node saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEvent {
    pub member: Member,
    pub change: MemberChange,
}

/// A broadcast message delivered to a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastMessage {
    pub from: NodeId,
    pub topic: Arc<str>,
    /// Position in the sender's broadcast stream (starts at 1 every incarnation).
    pub seq: u64,
    pub payload: Bytes,
}

/// Options of a subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Also receive this node's own broadcasts (off by default).
    pub receive_own: bool,
}

/// Why the engine dropped an incoming frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a frame of this protocol, truncated, or of an unknown version.
    Malformed,
    /// No valid authentication tag although a cluster key is set, or a tag
    /// this node cannot check because it has no key.
    Unauthenticated,
    /// Larger than `maxMessageSize`.
    TooLarge,
    /// Already delivered, or arrived after it was reported lost.
    Duplicate,
    /// Addressed to another incarnation of this node, or from a forgotten one.
    Stale,
}

/// Which stream of a sender a gap was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum StreamKind {
    Broadcast,
    Direct,
}

/// Something the application should know about, besides messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Messages `first..first+count` of a sender's stream never arrived (an
    /// at-most-once carrier lost them, e.g. while a link was down).
    Gap {
        from: NodeId,
        stream: StreamKind,
        first: u64,
        count: u64,
    },
    /// An incoming frame was dropped.
    Dropped { reason: DropReason, detail: String },
    /// A subscriber or the inbox did not keep up and messages were dropped for it.
    Overflow { queue: String, dropped: u64 },
    /// The carrier lost its link (to the broker, or to a peer).
    LinkDown { detail: String },
    /// The carrier has its link back.
    LinkUp,
    /// Another process uses this node's id.
    DuplicateNodeId { incarnation: u64 },
    /// Broadcasts queued behind others (a burst) could not be handed to the
    /// carrier after `broadcast` had returned; the receivers report them as
    /// a gap.
    SendFailed { messages: u64, detail: String },
}

/// Where a node's member states come from ([`Coordinator::failure_detection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum FailureDetection {
    /// Heartbeats through the carrier: a silent member is suspected after
    /// `suspectTimeout` and declared dead after `deadTimeout`.
    Heartbeats,
    /// The carrier's own failure detector (Native's gossip, Zenoh's
    /// liveliness tokens).
    Carrier,
    /// None: `heartbeats` is off on a carrier without a detector of its own.
    /// Members are the nodes heard from (their join, their answer to this
    /// node's join, any message) until they leave or restart; a crashed
    /// node stays listed, and what is sent to it goes unanswered.
    Off,
}

/// The one interface every carrier offers. Object safe: use `Arc<dyn Coordinator>`.
#[async_trait]
pub trait Coordinator: Send + Sync {
    /// This node's id.
    fn node_id(&self) -> NodeId;

    /// The carrier's `@type` name (or `Memory`).
    fn carrier(&self) -> &'static str;

    /// Sends `payload` on `topic` to every other member, in order, once each.
    async fn broadcast(&self, topic: &str, payload: Bytes) -> Result<(), Error>;

    /// Receives the broadcasts on `topic` from now on.
    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error>;

    /// The members this node knows, itself included, ordered by id.
    fn members(&self) -> Vec<Member>;

    /// Where the states of [`Coordinator::members`] come from.
    fn failure_detection(&self) -> FailureDetection {
        FailureDetection::Heartbeats
    }

    /// Membership changes from now on.
    fn member_events(&self) -> EventStream<MemberEvent>;

    /// Gaps, dropped frames, overflows and link changes from now on.
    fn events(&self) -> EventStream<Event>;

    /// Sends `payload` to one node. Fails fast if it is unknown, dead or gone.
    async fn send(&self, to: NodeId, payload: Bytes) -> Result<(), Error>;

    /// Sends `payload` to one node without waiting for it to go out: returns
    /// once the message has its place in this pair's order, with its
    /// outcome to await later (what [`Coordinator::send`] would have
    /// returned for it). One task can so keep many messages under way, and
    /// those that wait behind a busy link go out together.
    ///
    /// Fails at once, as `send` does, for a node unknown, dead or gone, a
    /// payload too large or a stopped node. When too many bytes already
    /// wait for `to`, it waits for room instead of failing, up to the send
    /// time-out, then fails with [`Error::Backlog`]. Dropping the outcome
    /// does not withdraw the message.
    async fn post(&self, to: NodeId, payload: Bytes) -> Result<SendOutcome, Error> {
        self.send(to, payload).await?;
        Ok(SendOutcome::ready(Ok(())))
    }

    /// Sends `payload` to one node and waits up to `timeout` for its reply.
    async fn request(&self, to: NodeId, payload: Bytes, timeout: Duration) -> Result<Bytes, Error>;

    /// The point-to-point messages and requests sent to this node. Can be taken once.
    fn inbox(&self) -> Result<Inbox, Error>;

    /// Counters of what was sent, received, dropped and retried.
    fn stats(&self) -> StatsSnapshot;

    /// Tells the others this node is leaving (they drop it at once), then stops.
    async fn leave(&self) -> Result<(), Error>;
}

/// Waits until `node` sees every node of `ids` alive (a cluster formed, a
/// node back). Returns `false` if `node` stops first. Wrap it in a time-out.
pub async fn wait_for_members(node: &dyn Coordinator, ids: &[NodeId]) -> bool {
    let mut events = node.member_events();
    loop {
        let members = node.members();
        let all_alive = ids.iter().all(|id| {
            members
                .iter()
                .any(|m| m.id == *id && m.state == MemberState::Alive)
        });
        if all_alive {
            return true;
        }
        if events.recv().await.is_none() {
            return false;
        }
    }
}

/// Something a queue to the application holds, counted in bytes.
pub(crate) trait QueueItem {
    fn bytes(&self) -> usize;
}

impl QueueItem for BroadcastMessage {
    fn bytes(&self) -> usize {
        self.payload.len() + 64
    }
}

impl QueueItem for Incoming {
    fn bytes(&self) -> usize {
        self.payload.len() + 64
    }
}

/// The engine's end of a queue to the application, bounded in messages and bytes.
///
/// The bounds are kept with two counters rather than a bounded channel's
/// semaphore, whose release takes a lock for every message taken.
#[derive(Debug)]
pub(crate) struct QueueSender<T> {
    sender: mpsc::UnboundedSender<T>,
    held: Arc<Held>,
    capacity: usize,
    max_bytes: usize,
}

/// What waits in a queue.
#[derive(Debug, Default)]
struct Held {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl Held {
    /// Frees the room of `messages` messages of `bytes` bytes in all.
    fn release(&self, messages: usize, bytes: usize) {
        self.messages.fetch_sub(messages, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a queue to the application did not take a message (handed back, so
/// that the caller chooses where it is dropped).
pub(crate) enum QueueRefused<T> {
    Full(T),
    Closed(T),
}

/// A queue to the application: at most `capacity` messages and `max_bytes`
/// bytes wait in it (one message may always wait, whatever its size).
pub(crate) fn queue<T>(capacity: usize, max_bytes: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let held = Arc::new(Held::default());
    (
        QueueSender {
            sender,
            held: held.clone(),
            capacity: capacity.max(1),
            max_bytes,
        },
        QueueReceiver { receiver, held },
    )
}

impl<T: QueueItem> QueueSender<T> {
    pub fn try_send(&self, item: T) -> Result<(), QueueRefused<T>> {
        let size = item.bytes();
        let messages = self.held.messages.fetch_add(1, Ordering::AcqRel);
        let bytes = self.held.bytes.fetch_add(size, Ordering::AcqRel);
        if messages >= self.capacity || (bytes > 0 && bytes + size > self.max_bytes) {
            self.held.release(1, size);
            return Err(QueueRefused::Full(item));
        }
        self.sender.send(item).map_err(|refused| {
            self.held.release(1, size);
            QueueRefused::Closed(refused.0)
        })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// The application's end of a queue.
#[derive(Debug)]
pub(crate) struct QueueReceiver<T> {
    receiver: mpsc::UnboundedReceiver<T>,
    held: Arc<Held>,
}

impl<T: QueueItem> QueueReceiver<T> {
    fn took(&self, item: Option<T>) -> Option<T> {
        if let Some(item) = &item {
            self.held.release(1, item.bytes());
        }
        item
    }

    async fn recv(&mut self) -> Option<T> {
        let item = self.receiver.recv().await;
        self.took(item)
    }

    fn try_recv(&mut self) -> Option<T> {
        let item = self.receiver.try_recv().ok();
        self.took(item)
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let item = ready!(self.receiver.poll_recv(cx));
        Poll::Ready(self.took(item))
    }

    /// Appends up to `limit` waiting items to `buffer` (waiting for one if
    /// none is), and frees their room with one update of each counter.
    async fn recv_many(&mut self, buffer: &mut Vec<T>, limit: usize) -> usize {
        let start = buffer.len();
        let taken = self.receiver.recv_many(buffer, limit).await;
        let bytes = buffer[start..].iter().map(QueueItem::bytes).sum();
        self.held.release(taken, bytes);
        taken
    }
}

/// The broadcasts of one topic. Also a [`futures_core::Stream`].
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    receiver: QueueReceiver<BroadcastMessage>,
}

impl Subscription {
    pub(crate) fn new(topic: Arc<str>, receiver: QueueReceiver<BroadcastMessage>) -> Self {
        Self { topic, receiver }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message, or `None` once the coordinator has stopped.
    pub async fn recv(&mut self) -> Option<BroadcastMessage> {
        self.receiver.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<BroadcastMessage> {
        self.receiver.try_recv()
    }

    /// Appends up to `limit` messages to `buffer`: all that wait, up to
    /// `limit`, or else the next one when it comes. Returns how many it
    /// appended, 0 once the coordinator has stopped (or if `limit` is 0).
    ///
    /// One wake-up and one queue operation for a whole burst: an
    /// application that handles many small messages spends less per message
    /// than with [`Subscription::recv`]. Order is the same.
    pub async fn recv_many(&mut self, buffer: &mut Vec<BroadcastMessage>, limit: usize) -> usize {
        self.receiver.recv_many(buffer, limit).await
    }
}

impl futures_core::Stream for Subscription {
    type Item = BroadcastMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// A stream of events; a receiver that falls behind is told how many it missed.
#[derive(Debug)]
pub struct EventStream<T> {
    receiver: broadcast::Receiver<T>,
}

/// What [`EventStream::recv`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<T> {
    Event(T),
    /// This receiver fell behind and missed this many events.
    Missed(u64),
}

impl<T: Clone> EventStream<T> {
    pub(crate) fn new(receiver: broadcast::Receiver<T>) -> Self {
        Self { receiver }
    }

    /// The next event, `Missed(n)` if this receiver fell behind, `None` once stopped.
    pub async fn recv(&mut self) -> Option<Received<T>> {
        match self.receiver.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Received::Missed(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event, skipping over any `Missed` notice.
    pub async fn next_event(&mut self) -> Option<T> {
        loop {
            match self.recv().await? {
                Received::Event(event) => return Some(event),
                Received::Missed(_) => continue,
            }
        }
    }
}

/// Point-to-point messages and requests addressed to this node.
#[derive(Debug)]
pub struct Inbox {
    receiver: QueueReceiver<Incoming>,
}

impl Inbox {
    pub(crate) fn new(receiver: QueueReceiver<Incoming>) -> Self {
        Self { receiver }
    }

    /// The next message, or `None` once the coordinator has stopped.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.receiver.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.receiver.try_recv()
    }

    /// Appends up to `limit` messages to `buffer`: all that wait, up to
    /// `limit`, or else the next one when it comes. Returns how many it
    /// appended, 0 once the coordinator has stopped (or if `limit` is 0).
    /// See [`Subscription::recv_many`].
    pub async fn recv_many(&mut self, buffer: &mut Vec<Incoming>, limit: usize) -> usize {
        self.receiver.recv_many(buffer, limit).await
    }
}

impl futures_core::Stream for Inbox {
    type Item = Incoming;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// The outcome of a message given to [`Coordinator::post`]: `Ok` once the
/// carrier took it, or the error `send` would have returned for it.
#[derive(Debug)]
pub struct SendOutcome(Outcome);

#[derive(Debug)]
enum Outcome {
    Ready(Option<Result<(), Error>>),
    Waiting(oneshot::Receiver<Result<(), Error>>),
    /// Message `seq` of a group that waited its turn together.
    Group {
        group: Arc<crate::engine::Group>,
        seq: u64,
    },
}

impl SendOutcome {
    /// An outcome already known.
    pub fn ready(result: Result<(), Error>) -> Self {
        Self(Outcome::Ready(Some(result)))
    }

    /// An outcome told through `receiver` (its sender dropped: the node stopped).
    pub(crate) fn waiting(receiver: oneshot::Receiver<Result<(), Error>>) -> Self {
        Self(Outcome::Waiting(receiver))
    }

    /// The outcome of message `seq` of `group`.
    pub(crate) fn in_group(group: Arc<crate::engine::Group>, seq: u64) -> Self {
        Self(Outcome::Group { group, seq })
    }
}

impl std::future::Future for SendOutcome {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            // Polled again after it was ready: the outcome was taken.
            Outcome::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            Outcome::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|told| told.unwrap_or(Err(Error::Closed))),
            Outcome::Group { group, seq } => group.poll(*seq, cx),
        }
    }
}

/// A point-to-point message. If it is a request, answer it with [`Incoming::reply`];
/// a request dropped unanswered fails at the requester at once instead of timing out.
#[derive(Debug)]
pub struct Incoming {
    pub from: NodeId,
    pub payload: Bytes,
    pub(crate) reply: Option<crate::engine::Replier>,
}

impl Incoming {
    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.reply.is_some()
    }

    /// Answers a request. Fails with [`Error::NotARequest`] for a one-way message.
    pub async fn reply(mut self, payload: Bytes) -> Result<(), Error> {
        match self.reply.take() {
            Some(replier) => replier.reply(Ok(payload)).await,
            None => Err(Error::NotARequest),
        }
    }

    /// Answers a request with an error the requester receives as [`Error::Remote`].
    pub async fn reply_error(mut self, message: impl Into<String>) -> Result<(), Error> {
        match self.reply.take() {
            Some(replier) => replier.reply(Err(message.into())).await,
            None => Err(Error::NotARequest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> BroadcastMessage {
        BroadcastMessage {
            from: 1,
            topic: Arc::from("t"),
            seq,
            payload: Bytes::from_static(&[7; 36]),
        }
    }

    #[tokio::test]
    async fn recv_many_takes_a_burst_in_order_and_frees_its_room() {
        // Room for 3 messages, or 300 bytes (each counts 36 + 64).
        let (sender, receiver) = queue(3, 300);
        let mut subscription = Subscription::new(Arc::from("t"), receiver);
        for seq in 1..=3 {
            assert!(sender.try_send(message(seq)).is_ok());
        }
        assert!(matches!(
            sender.try_send(message(4)),
            Err(QueueRefused::Full(_))
        ));

        let mut taken = Vec::new();
        assert_eq!(subscription.recv_many(&mut taken, 2).await, 2);
        assert_eq!(subscription.recv_many(&mut taken, 10).await, 1);
        let order: Vec<u64> = taken.iter().map(|message| message.seq).collect();
        assert_eq!(order, [1, 2, 3]);

        // All of the room is free again, by count and by bytes.
        for seq in 4..=6 {
            assert!(sender.try_send(message(seq)).is_ok(), "{seq} refused");
        }
        taken.clear();
        assert_eq!(subscription.recv_many(&mut taken, 10).await, 3);

        drop(sender);
        assert_eq!(subscription.recv_many(&mut taken, 10).await, 0);
    }
}
