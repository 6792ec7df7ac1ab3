//! One outbound connection per peer: frames to that node go through it in
//! order. When the connection is idle, the sending task writes its frame
//! itself (no hop to another task); otherwise frames queue for the peer's
//! worker, which batches them. Control frames (heartbeats, joins, departures)
//! overtake queued bulk frames; a heartbeat that does announces only the
//! broadcasts written before it. A broken connection is dialed again with
//! truncated exponential backoff and jitter, counted from the start of the
//! failed dial (a dial that timed out has waited already); after `retriesMax` failures what
//! is queued for the peer is dropped, and it is dialed again when the gossip
//! says it is alive again, or after `backoffMax`.
//!
//! The peer answers on the same connection: a `Pong` to each keep-alive
//! `Ping` (with the count of messages it has read), and a `ProbeAck` to each
//! gossip probe sent over TCP. While messages are unconfirmed, a `Ping` goes
//! out every heartbeat interval, and after every [`PING_BYTES`] written; a
//! connection on which nothing is confirmed for `deadTimeout` is stalled: it
//! is dropped and dialed again, and the messages it held unconfirmed are
//! written again (the receiver drops those it already has).
//!
//! At most [`WINDOW_BYTES`] (and [`WINDOW_FRAMES`]) of messages are written
//! and unconfirmed at once; the next waits in the queue for a `Pong`. Without
//! that bound the kernel's socket buffers (megabytes on loopback) held so
//! much ahead of a `Ping` that a slow but live reader answered later than
//! `deadTimeout`, and its connection was taken for a stalled one again and
//! again. With it, a `Pong` is at most a window's reading behind, and every
//! unconfirmed message fits the buffer that is written again on a new
//! connection.

use crate::frame::{FrameError, FrameType, read_frame, write_frame, write_frame_vectored};
use crate::swim::{Update, decode_probe, encode_probe};
use crate::transport::NativeTransport;
use bytes::Bytes;
use coordinator_core::envelope::{cap_announced, peek_broadcast_high};
use coordinator_core::routes::backoff;
use coordinator_core::{NodeId, TransportError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufWriter, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Bytes gathered before a flush.
const BATCH_BYTES: usize = 64 * 1024;
/// The write buffer: a batch plus room for one more frame header and body start.
const BUFFER_BYTES: usize = BATCH_BYTES + 16 * 1024;
/// Frame header: length and type.
const HEADER_BYTES: usize = 5;
/// A link written less than this long ago is busy: frames go through the
/// worker, which batches them into few writes. An idle link is written by the
/// sending task itself, for latency.
const BUSY_WITHIN: Duration = Duration::from_micros(10);

type Writer = BufWriter<WriteHalf<tokio_rustls::TlsStream<TcpStream>>>;

/// What the sending tasks and the worker share.
struct Shared {
    /// The open connection's writer, while connected.
    writer: tokio::sync::Mutex<Option<Writer>>,
    /// Frames put in the queues and not yet written. A frame may skip the
    /// queues only when this is 0, so frames never overtake each other.
    queued: AtomicUsize,
    /// A sending task was interrupted before its bytes were flushed.
    flush: Notify,
    /// Microseconds since `epoch` of the last write.
    last_write: AtomicU64,
    epoch: Instant,
    /// Messages written on the current connection.
    written: AtomicU64,
    /// Messages the peer said it had read (its last `Pong`).
    confirmed: AtomicU64,
    /// Microseconds since `epoch` since when messages have waited for
    /// confirmation without progress (0: none waiting).
    unconfirmed_since: AtomicU64,
    /// `written` when the last `Ping` was written.
    pinged: AtomicU64,
    /// Message bytes written since the last `Ping`.
    since_ping: AtomicUsize,
    /// Told when the peer confirms messages (the window opens).
    opened: Notify,
    /// Messages written and not yet confirmed, with their number on the
    /// connection: written again on the next connection to the same run of
    /// the peer if this one fails (the receiver drops what it already has).
    resend: parking_lot::Mutex<Resend>,
    /// The last broadcast (by number) written to the peer, on any connection.
    broadcasts_written: AtomicU64,
}

#[derive(Default)]
struct Resend {
    frames: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Shared {
    fn new() -> Self {
        Self {
            writer: tokio::sync::Mutex::new(None),
            queued: AtomicUsize::new(0),
            flush: Notify::new(),
            last_write: AtomicU64::new(0),
            epoch: Instant::now(),
            written: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            unconfirmed_since: AtomicU64::new(0),
            pinged: AtomicU64::new(0),
            since_ping: AtomicUsize::new(0),
            opened: Notify::new(),
            resend: parking_lot::Mutex::new(Resend::default()),
            broadcasts_written: AtomicU64::new(0),
        }
    }

    /// Notes the broadcasts a message about to be written carries. Called
    /// under the writer's lock, which orders the writes: no read-modify-write
    /// is needed.
    fn writing(&self, frame: &[u8]) {
        if let Some(high) = peek_broadcast_high(frame)
            && high > self.broadcasts_written.load(Ordering::Relaxed)
        {
            self.broadcasts_written.store(high, Ordering::Relaxed);
        }
    }

    /// A message that goes ahead of frames still queued: a heartbeat
    /// announces only the broadcasts written before it. The peer waits
    /// `reorderTimeout` for each one announced, and a slow link (a loaded
    /// reader, a lossy network) can take longer than that to bring the
    /// queued ones: they were reported lost, then dropped when they came.
    /// Once nothing is queued, every broadcast announced was written or
    /// dropped, and a heartbeat goes as it is (the peer reports those dropped).
    fn overtaking(&self, frame: Bytes) -> Bytes {
        cap_announced(&frame, self.broadcasts_written.load(Ordering::Relaxed)).unwrap_or(frame)
    }

    fn micros(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    fn touch(&self) {
        self.last_write.store(self.micros(), Ordering::Relaxed);
    }

    /// A message was written on the connection; `true` when a `Ping` is due
    /// after it ([`PING_BYTES`] written since the last).
    fn wrote(&self, frame: &Bytes) -> bool {
        let before = self.written.fetch_add(1, Ordering::AcqRel);
        {
            let mut resend = self.resend.lock();
            resend.frames.push_back((before + 1, frame.clone()));
            resend.bytes += frame.len();
            while resend.frames.len() > RESEND_FRAMES || resend.bytes > RESEND_BYTES {
                let Some((_, old)) = resend.frames.pop_front() else {
                    break;
                };
                resend.bytes -= old.len();
            }
        }
        if before == self.confirmed.load(Ordering::Acquire) {
            let _ = self.unconfirmed_since.compare_exchange(
                0,
                self.micros(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        let size = frame.len() + HEADER_BYTES;
        self.since_ping.fetch_add(size, Ordering::AcqRel) + size >= PING_BYTES
    }

    /// Whether a message of `len` bytes may be written now: the window holds
    /// what is written and unconfirmed (the resend buffer, which it fits).
    fn window_open(&self, len: usize) -> bool {
        let resend = self.resend.lock();
        resend.frames.is_empty()
            || (resend.frames.len() < WINDOW_FRAMES && resend.bytes + len <= WINDOW_BYTES)
    }

    /// Whether messages were written since the last `Ping`.
    fn ping_owed(&self) -> bool {
        self.pinged.load(Ordering::Acquire) < self.written.load(Ordering::Acquire)
    }

    /// Puts a `Ping` in the writer's buffer (the caller flushes).
    async fn ping(&self, writer: &mut Writer) -> std::io::Result<()> {
        write_frame(writer, FrameType::Ping, &[]).await?;
        self.pinged
            .store(self.written.load(Ordering::Acquire), Ordering::Release);
        self.since_ping.store(0, Ordering::Release);
        Ok(())
    }

    /// The peer has read `count` messages of this connection.
    fn confirm(&self, count: u64) {
        self.confirmed.store(count, Ordering::Release);
        {
            let mut resend = self.resend.lock();
            while resend.frames.front().is_some_and(|(n, _)| *n <= count) {
                let (_, frame) = resend.frames.pop_front().expect("checked");
                resend.bytes -= frame.len();
            }
        }
        let waiting = if count >= self.written.load(Ordering::Acquire) {
            0
        } else {
            self.micros()
        };
        self.unconfirmed_since.store(waiting, Ordering::Release);
        self.opened.notify_one();
    }

    /// The messages the last connection left unconfirmed, and how many
    /// more it left unconfirmed that the buffer could not keep (the receiver
    /// reports those it missed as a gap); the buffer is empty afterwards.
    fn take_unconfirmed(&self) -> (Vec<Bytes>, u64) {
        let mut resend = self.resend.lock();
        let confirmed = self.confirmed.load(Ordering::Acquire);
        let first_kept = resend
            .frames
            .front()
            .map_or(self.written.load(Ordering::Acquire) + 1, |(n, _)| *n);
        let given_up = first_kept.saturating_sub(confirmed + 1);
        let frames = resend.frames.drain(..).map(|(_, frame)| frame).collect();
        resend.bytes = 0;
        (frames, given_up)
    }

    /// A new connection starts counting from zero.
    fn reset_counts(&self) {
        self.written.store(0, Ordering::Release);
        self.confirmed.store(0, Ordering::Release);
        self.unconfirmed_since.store(0, Ordering::Release);
        self.pinged.store(0, Ordering::Release);
        self.since_ping.store(0, Ordering::Release);
    }

    /// How long messages have waited for confirmation without progress.
    fn unconfirmed_for(&self) -> Option<Duration> {
        match self.unconfirmed_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_micros(self.micros().saturating_sub(since))),
        }
    }

    fn unconfirmed(&self) -> u64 {
        self.written
            .load(Ordering::Acquire)
            .saturating_sub(self.confirmed.load(Ordering::Acquire))
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_write.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Polls a future once, without a task to wake (the caller hands the work
/// to the worker when it is not done).
fn poll_once<F: std::future::Future>(future: F) -> std::task::Poll<F::Output> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::pin!(future).poll(&mut context)
}

/// A frame at least this large is not copied into the write buffer: what
/// the buffer holds goes first, then the frame goes to the TLS stream from
/// where it is (rustls copies it once, into the records it encrypts). Below
/// it, gathering frames into one write is worth the copy.
const DIRECT_BYTES: usize = 8 * 1024;

/// Writes a frame in order after what the buffer holds: a small one into
/// the buffer, a large one past it.
async fn put_frame(writer: &mut Writer, kind: FrameType, body: &[u8]) -> std::io::Result<()> {
    if body.len() < DIRECT_BYTES {
        return write_frame(writer, kind, body).await;
    }
    if !writer.buffer().is_empty() {
        writer.flush().await?;
    }
    write_frame_vectored(writer.get_mut(), kind, body).await
}

/// Copies a frame into the writer's buffer, which has room for it.
fn buffer_frame(writer: &mut Writer, kind: FrameType, body: &[u8]) -> std::io::Result<()> {
    match poll_once(write_frame(writer, kind, body)) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => unreachable!("a frame that fits the buffer is copied at once"),
    }
}

/// What may wait in a peer's bulk queue before publishing waits (or drops,
/// if the peer is unreachable), in units of [`QUEUE_UNIT`] bytes: a frame
/// takes one unit per started KiB, so at most 16,384 small frames or 16 MiB
/// of batches wait for one stuck peer.
const QUEUE_UNITS: usize = 16_384;
const QUEUE_UNIT: usize = 1024;
/// Unconfirmed messages kept to be written again on a new connection.
const RESEND_FRAMES: usize = QUEUE_UNITS;
const RESEND_BYTES: usize = 16 * 1024 * 1024;
/// Messages written and not yet confirmed, at most (a larger one is written
/// alone, once everything before it is confirmed). Within the resend
/// buffer's bounds, so that a replaced connection loses nothing it wrote.
pub(crate) const WINDOW_BYTES: usize = 8 * 1024 * 1024;
pub(crate) const WINDOW_FRAMES: usize = RESEND_FRAMES;
/// A `Ping` follows every this many bytes of messages written, so that
/// confirmations come back before the window is full.
const PING_BYTES: usize = WINDOW_BYTES / 8;
const _: () = assert!(WINDOW_BYTES <= RESEND_BYTES && WINDOW_FRAMES <= RESEND_FRAMES);
/// First backoff step.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// The longest wait between dials of a peer the gossip holds live (at most
/// `backoffMax`): it is dialed until it is reached or declared dead.
const LIVE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Whether a frame was handed to the link at once.
pub(crate) enum Offer {
    Taken,
    /// The link's queue is full: wait with [`PeerLink::send`], or give up.
    Full(Bytes),
    /// The queue stayed full past a send deadline and has not drained to half
    /// since: the peer is not waited for again until it has (the frame is
    /// dropped; the peer reports the gap).
    Overflowing,
}

pub(crate) struct PeerLink {
    id: NodeId,
    control: mpsc::Sender<(FrameType, Bytes)>,
    bulk: mpsc::UnboundedSender<Queued>,
    /// The bulk queue's room, in units; each queued frame holds its units.
    room: Arc<Semaphore>,
    shared: Arc<Shared>,
    /// A connection is up (publishing waits for room); otherwise frames that
    /// do not fit are dropped (the receiver reports the gap).
    connected: Arc<AtomicBool>,
    /// Set when a sender gave up waiting for room (see [`Offer::Overflowing`]).
    overflowing: AtomicBool,
    /// Frames refused while overflowing, since it began.
    refused: AtomicU64,
    revive: Arc<Notify>,
    task: JoinHandle<()>,
}

impl PeerLink {
    pub fn start(transport: Arc<NativeTransport>, id: NodeId) -> Arc<Self> {
        let (control, control_queue) = mpsc::channel(1024);
        let (bulk, bulk_queue) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUE_UNITS));
        let connected = Arc::new(AtomicBool::new(false));
        let revive = Arc::new(Notify::new());
        let shared = Arc::new(Shared::new());
        let worker = Worker {
            transport,
            id,
            control: control_queue,
            bulk: bulk_queue,
            connected: connected.clone(),
            revive: revive.clone(),
            shared: shared.clone(),
        };
        let span = tracing::debug_span!("peer", peer = id);
        let task = tokio::spawn(tracing::Instrument::instrument(worker.run(), span));
        Arc::new(Self {
            id,
            control,
            bulk,
            room,
            shared,
            connected,
            overflowing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            revive,
            task,
        })
    }

    /// A sender waited a whole send deadline for room: until the queue has
    /// drained to half, bulk frames are refused at once rather than waited
    /// for, so that one stuck peer costs the others one deadline, not one
    /// per message. Logged when the overflow begins.
    pub fn overflowed(&self, waited: Duration) {
        if !self.overflowing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                peer = self.id,
                "the peer's queue stayed full for {waited:?}: messages to it are dropped until \
                 it drains to half (it reports the gap)"
            );
        }
    }

    /// While overflowing: whether the queue is still more than half full
    /// (and the frame is refused); the overflow ends otherwise.
    fn still_overflowing(&self) -> bool {
        if !self.overflowing.load(Ordering::Acquire) {
            return false;
        }
        if self.room.available_permits() < QUEUE_UNITS / 2 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if self.overflowing.swap(false, Ordering::AcqRel) {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::info!(
                peer = self.id,
                refused,
                "the peer's queue drained: messages to it flow again (it reports what it missed)"
            );
        }
        false
    }

    /// Hands a frame to the link without waiting: written at once when the
    /// connection is idle, else queued; `Full` when the queue has no room.
    pub fn offer(&self, frame: Bytes, control: bool) -> Result<Offer, TransportError> {
        if !control && self.still_overflowing() {
            return Ok(Offer::Overflowing);
        }
        if self.connected.load(Ordering::Relaxed) && self.write_now(&frame) {
            return Ok(Offer::Taken);
        }
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let result = if control {
            self.control
                .try_send((FrameType::Message, frame))
                .map_err(|error| match error {
                    mpsc::error::TrySendError::Full((_, frame)) => Some(frame),
                    mpsc::error::TrySendError::Closed(_) => None,
                })
        } else {
            match self.room.clone().try_acquire_many_owned(units(&frame)) {
                Ok(permit) => self.bulk.send((frame, permit)).map_err(|_| None),
                Err(_) => Err(Some(frame)),
            }
        };
        match result {
            Ok(()) => Ok(Offer::Taken),
            Err(full) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                match full {
                    Some(frame) if self.connected.load(Ordering::Relaxed) => Ok(Offer::Full(frame)),
                    Some(_) => Err(TransportError::LinkDown {
                        carrier: "Native",
                        detail: "the peer is unreachable and its queue is full".into(),
                    }),
                    None => Err(TransportError::Closed("Native")),
                }
            }
        }
    }

    /// Hands a frame to the link, waiting for room in its queue while the
    /// peer is connected (the caller bounds the wait).
    pub async fn send(&self, frame: Bytes, control: bool) -> Result<(), TransportError> {
        let frame = match self.offer(frame, control)? {
            Offer::Taken => return Ok(()),
            Offer::Full(frame) => frame,
            // Already waited for a whole deadline, and still full.
            Offer::Overflowing => return Err(TransportError::Stalled(Duration::ZERO)),
        };
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let result = if control {
            self.control
                .send((FrameType::Message, frame))
                .await
                .map_err(|_| TransportError::Closed("Native"))
        } else {
            match self.room.clone().acquire_many_owned(units(&frame)).await {
                Ok(permit) => self
                    .bulk
                    .send((frame, permit))
                    .map_err(|_| TransportError::Closed("Native")),
                Err(_) => Err(TransportError::Closed("Native")),
            }
        };
        if result.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    /// Probes the peer over this connection (dialing it if needed) on behalf
    /// of the gossip; the answer goes to the gossip. A probe that finds no
    /// room is not sent (the probe fails, as a lost datagram would).
    pub fn probe(&self, seq: u32, update: &Update) {
        let body = Bytes::from(encode_probe(seq, update));
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.control.try_send((FrameType::Probe, body)).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Writes the frame from this task when the connection is free and
    /// nothing is queued; `false` when it must queue instead. Never waits:
    /// a flush that cannot finish at once is left to the worker.
    fn write_now(&self, frame: &Bytes) -> bool {
        if self.shared.queued.load(Ordering::Acquire) != 0 || self.shared.idle_for() < BUSY_WITHIN {
            return false;
        }
        let Ok(mut guard) = self.shared.writer.try_lock() else {
            return false;
        };
        let Some(writer) = guard.as_mut() else {
            return false;
        };
        // Checked under the lock: the worker writes queued frames under it too.
        // Room for the frame and a `Ping` after it.
        if self.shared.queued.load(Ordering::Acquire) != 0
            || writer.buffer().len() + 2 * HEADER_BYTES + frame.len() > BUFFER_BYTES
            || !self.shared.window_open(frame.len())
        {
            return false;
        }
        // Nothing is queued: a heartbeat goes as it is.
        self.shared.writing(frame);
        // The frame fits in the buffer, so it is copied whole without waiting.
        let result = buffer_frame(writer, FrameType::Message, frame).and_then(|()| {
            if self.shared.wrote(frame) {
                // Room for it was checked above.
                match poll_once(self.shared.ping(writer)) {
                    std::task::Poll::Ready(result) => result?,
                    std::task::Poll::Pending => {
                        unreachable!("a Ping that fits the buffer is copied at once")
                    }
                }
            }
            self.shared.touch();
            // One attempt to flush; what the socket does not take now, the
            // worker flushes (with the stall watchdog over it).
            match poll_once(writer.flush()) {
                std::task::Poll::Ready(result) => result,
                std::task::Poll::Pending => {
                    self.shared.flush.notify_one();
                    Ok(())
                }
            }
        });
        if let Err(error) = result {
            // The worker sees the connection close and dials again; this frame
            // went with the connection, like the others in flight.
            tracing::debug!(%error, "write to peer failed");
            *guard = None;
            self.shared.flush.notify_one();
        }
        true
    }

    /// The gossip says the peer is alive again: dial it even after `retriesMax` failures.
    pub fn revive(&self) {
        self.revive.notify_one();
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// A queued frame: its type (messages, gossip probes) and body.
type Item = (FrameType, Bytes);
/// A bulk frame and the room it holds in its queue until it is written.
type Queued = (Bytes, OwnedSemaphorePermit);

/// The queue units a frame holds (every frame at least one; none more than
/// the whole queue, so that any frame can wait for room).
fn units(frame: &Bytes) -> u32 {
    (frame.len() / QUEUE_UNIT + 1).min(QUEUE_UNITS) as u32
}

/// Largest frame a peer sends back on a connection we dialed (answers only).
const MAX_ANSWER: usize = 1024;

/// Why a connection ended.
enum End {
    /// Nothing was confirmed for `after` while `unconfirmed` messages waited.
    Stalled {
        unconfirmed: u64,
        after: Duration,
    },
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(error: std::io::Error) -> Self {
        End::Io(error)
    }
}

struct Worker {
    transport: Arc<NativeTransport>,
    id: NodeId,
    control: mpsc::Receiver<Item>,
    bulk: mpsc::UnboundedReceiver<Queued>,
    connected: Arc<AtomicBool>,
    revive: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Worker {
    async fn next_frame(&mut self) -> Option<Item> {
        tokio::select! {
            biased;
            frame = self.control.recv() => frame,
            frame = self.bulk.recv() => frame.map(|(body, _room)| (FrameType::Message, body)),
        }
    }

    fn try_next(&mut self) -> Option<Item> {
        self.control.try_recv().ok().or_else(|| {
            self.bulk
                .try_recv()
                .ok()
                .map(|(body, _room)| (FrameType::Message, body))
        })
    }

    /// A frame taken from the queues, as it is to be written: a heartbeat
    /// ahead of others still queued announces only what went before it
    /// (see [`Shared::overtaking`]).
    fn outgoing(&self, kind: FrameType, body: Bytes) -> Bytes {
        if kind != FrameType::Message {
            return body;
        }
        self.shared.writing(&body);
        // This frame is counted as queued until it is written.
        if self.shared.queued.load(Ordering::Acquire) > 1 {
            self.shared.overtaking(body)
        } else {
            body
        }
    }

    /// A queued frame was written (or dropped).
    fn dequeued(&self) {
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Drops what is queued (the peer cannot be reached).
    fn discard(&mut self) -> usize {
        let mut dropped = 0;
        while self.try_next().is_some() {
            self.dequeued();
            dropped += 1;
        }
        dropped
    }

    async fn run(mut self) {
        let config = self.transport.config.clone();
        let mut failures: u64 = 0;
        let mut pending: Option<Item> = None;
        // A stalled connection was reported as a link down: its replacement is
        // reported as a link up.
        let mut reported_down = false;
        // The run of the peer at the other end of the last connection.
        let mut last_run: Option<u64> = None;
        loop {
            // Connect lazily, when there is something to send.
            if pending.is_none() {
                match self.next_frame().await {
                    Some(frame) => pending = Some(frame),
                    None => return,
                }
            }
            let addr = self.transport.swim.lock().address(self.id);
            let Some(addr) = addr else {
                // No longer a live member: what was queued for it is lost.
                pending = None;
                self.dequeued();
                let dropped = self.discard() + 1;
                tracing::debug!(dropped, "frames for a member that is gone dropped");
                continue;
            };
            let dialed_at = Instant::now();
            match self.transport.dial(addr).await {
                Ok((stream, hello)) if hello.id == self.id => {
                    failures = 0;
                    if std::mem::take(&mut reported_down) {
                        self.transport.link_event(None);
                    }
                    let same_run = last_run == Some(hello.run);
                    last_run = Some(hello.run);
                    let result = self
                        .write_loop(stream, &mut pending, config.inactivity_timeout, same_run)
                        .await;
                    match result {
                        Ok(()) => {}
                        Err(End::Io(error)) => {
                            tracing::info!(%addr, %error, "connection to peer lost");
                            // A crashed process closes its sockets: the gossip
                            // probes it now instead of when its turn comes.
                            let id = self.id;
                            self.transport
                                .with_swim(|swim| swim.connection_lost(Instant::now(), id));
                        }
                        Err(End::Stalled { unconfirmed, after }) => {
                            let detail = format!(
                                "connection to node {} ({addr}) stalled: nothing confirmed for {} ms; \
                                 reconnecting, to write again the {unconfirmed} messages it left \
                                 unconfirmed (the node drops any it already has; if it restarted \
                                 meanwhile, they are dropped and it reports the gap)",
                                self.id,
                                after.as_millis()
                            );
                            self.transport.link_event(Some(detail));
                            reported_down = true;
                        }
                    }
                    continue;
                }
                Ok((_, hello)) => {
                    tracing::warn!(%addr, found = hello.id, "dialed a member and found another node");
                }
                Err(error) => tracing::info!(%addr, %error, "cannot reach peer"),
            }
            failures += 1;
            if failures == config.retries_max + 1 {
                // The gossip still holds the peer live (else its frames were
                // dropped above): messages to it wait, up to the queue's
                // bound (beyond it they are dropped, and it reports the gap),
                // and dialing goes on. It was given up on for `backoffMax`
                // (3 minutes by default) here before, which lost messages
                // to a live node without a word when a lossy network failed
                // a few handshakes in a row.
                let detail = format!(
                    "node {} ({addr}) is live in the gossip but was not reached in {failures} \
                     tries; its messages wait while dialing goes on",
                    self.id
                );
                tracing::warn!(failures, "{detail}");
                if !reported_down {
                    self.transport.link_event(Some(detail));
                    reported_down = true;
                }
            }
            // The backoff paces dials from start to start: a dial that took
            // its whole `timeout` (a SYN lost on a lossy link, which the
            // kernel would send again only at that same second) counts
            // toward it, so a link that heals is dialed again within the
            // backoff, not the backoff after the time-out.
            let wait = backoff(
                failures as u32,
                BACKOFF_BASE,
                config.backoff_max.min(LIVE_BACKOFF_MAX),
            )
            .saturating_sub(dialed_at.elapsed());
            // A peer that comes back to life is dialed at once.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.revive.notified() => {}
            }
        }
    }

    /// Writes frames until the connection fails, stalls or stays idle too long.
    async fn write_loop(
        &mut self,
        stream: tokio_rustls::TlsStream<TcpStream>,
        pending: &mut Option<Item>,
        idle: Duration,
        same_run: bool,
    ) -> Result<(), End> {
        let (mut reader, writer) = tokio::io::split(stream);
        let mut writer = BufWriter::with_capacity(BUFFER_BYTES, writer);
        let (resend, given_up) = self.shared.take_unconfirmed();
        self.shared.reset_counts();
        if given_up > 0 {
            tracing::warn!(
                peer = self.id,
                given_up,
                "messages to a peer left unconfirmed beyond the resend buffer (the peer reports them as a gap)"
            );
        }
        let replay = if same_run {
            resend
        } else {
            if !resend.is_empty() {
                tracing::info!(
                    peer = self.id,
                    dropped = resend.len(),
                    "the peer restarted: messages its previous run left unconfirmed are dropped"
                );
            }
            Vec::new()
        };
        // What the last connection left unconfirmed goes first, in order; it
        // stays in the buffer until this connection confirms it.
        for frame in &replay {
            self.shared.wrote(frame);
        }
        let shared = self.shared.clone();
        let (keepalive, stall_after) = (self.transport.keepalive, self.transport.stall_after);
        // Watches the connection even while a write is blocked on it.
        let watchdog = async move {
            let mut check = tokio::time::interval(keepalive / 2);
            loop {
                check.tick().await;
                if let Some(after) = shared.unconfirmed_for()
                    && after >= stall_after
                {
                    return End::Stalled {
                        unconfirmed: shared.unconfirmed(),
                        after,
                    };
                }
            }
        };
        let answers_shared = self.shared.clone();
        let transport = self.transport.clone();
        let id = self.id;
        let reader = &mut reader;
        // The peer writes on this connection only to answer: a Pong to each
        // Ping, a ProbeAck to each gossip probe. A read ends when it closes.
        let answers = async move {
            loop {
                match read_frame(reader, MAX_ANSWER).await {
                    Ok((FrameType::Pong, body)) => {
                        let count = <[u8; 8]>::try_from(&body[..]).map_err(|_| {
                            std::io::Error::other(format!("malformed Pong from node {id}"))
                        })?;
                        answers_shared.confirm(u64::from_be_bytes(count));
                    }
                    Ok((FrameType::ProbeAck, body)) => {
                        let (seq, update) = decode_probe(&body).map_err(|error| {
                            std::io::Error::other(format!("ProbeAck from node {id}: {error}"))
                        })?;
                        transport
                            .with_swim(|swim| swim.stream_ack(Instant::now(), id, seq, update));
                    }
                    Ok((kind, _)) => {
                        return Err(std::io::Error::other(format!(
                            "unexpected {kind:?} frame from node {id}"
                        )));
                    }
                    Err(FrameError::Io(error)) => return Err::<(), _>(error),
                    Err(error) => {
                        return Err(std::io::Error::other(format!("from node {id}: {error}")));
                    }
                }
            }
        };
        let shared = self.shared.clone();
        let work = async {
            // The replay asks for confirmation as it goes, like any other
            // writing (so that a slow link shows progress within
            // `deadTimeout`), and once more at its end. Confirmations are
            // read meanwhile (`answers`).
            let mut since_ping = 0;
            for frame in &replay {
                put_frame(&mut writer, FrameType::Message, frame).await?;
                since_ping += HEADER_BYTES + frame.len();
                if since_ping >= PING_BYTES {
                    shared.ping(&mut writer).await?;
                    since_ping = 0;
                }
            }
            if !replay.is_empty() {
                shared.ping(&mut writer).await?;
                writer.flush().await?;
            }
            *shared.writer.lock().await = Some(writer);
            shared.touch();
            self.connected.store(true, Ordering::Relaxed);
            self.serve(pending, idle, keepalive).await
        };
        // The answers are read beside the writes, so that confirmations are
        // taken in while a write waits on the socket, not only between writes.
        let result = tokio::select! {
            result = work => result.map_err(End::Io),
            end = answers => Err(End::Io(
                end.err().unwrap_or_else(|| std::io::ErrorKind::ConnectionReset.into()),
            )),
            stalled = watchdog => Err(stalled),
        };
        self.connected.store(false, Ordering::Relaxed);
        if let Some(mut writer) = self.shared.writer.lock().await.take()
            && result.is_ok()
        {
            let _ = tokio::time::timeout(keepalive, writer.shutdown()).await;
        }
        result
    }

    async fn serve(
        &mut self,
        pending: &mut Option<Item>,
        idle: Duration,
        keepalive: Duration,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let mut ping = tokio::time::interval(keepalive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_check = tokio::time::sleep(idle);
        let mut idle_check = std::pin::pin!(idle_check);
        loop {
            // A message the window has no room for waits for a confirmation,
            // which a `Ping` after the last message written asks for.
            let blocked = matches!(pending, Some((FrameType::Message, body)) if !shared.window_open(body.len()));
            if blocked && shared.ping_owed() {
                let mut guard = shared.writer.lock().await;
                let Some(writer) = guard.as_mut() else {
                    return Err(std::io::ErrorKind::ConnectionReset.into());
                };
                shared.ping(writer).await?;
                writer.flush().await?;
            }
            let frame = match pending.take() {
                Some(frame) if !blocked => Some(frame),
                held => {
                    *pending = held;
                    let waiting = pending.is_some();
                    tokio::select! {
                        biased;
                        // Ahead of the queue, which under sustained load is always
                        // ready: a busy connection must still ask for confirmation,
                        // or it would be taken for a stalled one.
                        _ = ping.tick() => {
                            if shared.unconfirmed() == 0 {
                                continue;
                            }
                            // Messages wait for confirmation: ask for it.
                            let mut guard = shared.writer.lock().await;
                            let Some(writer) = guard.as_mut() else {
                                return Err(std::io::ErrorKind::ConnectionReset.into());
                            };
                            shared.ping(writer).await?;
                            writer.flush().await?;
                            continue;
                        }
                        // The peer confirmed messages: the window may have room.
                        _ = shared.opened.notified(), if waiting => continue,
                        frame = self.next_frame(), if !waiting => match frame {
                            Some(frame) => Some(frame),
                            None => return Ok(()),
                        },
                        _ = shared.flush.notified() => None,
                        _ = &mut idle_check, if !waiting => {
                            let quiet = shared.idle_for();
                            if quiet >= idle {
                                return Ok(());
                            }
                            idle_check.as_mut().reset(tokio::time::Instant::now() + (idle - quiet));
                            continue;
                        }
                    }
                }
            };
            // A frame taken from the queues stays in `pending` until it is
            // written: a connection that fails, or stalls (which drops this
            // future at any await), leaves it for the next one.
            if frame.is_some() {
                pending.clone_from(&frame);
            }
            let mut guard = shared.writer.lock().await;
            let Some(writer) = guard.as_mut() else {
                // A sending task saw the connection fail.
                return Err(std::io::ErrorKind::ConnectionReset.into());
            };
            if let Some((kind, body)) = frame {
                let body = self.outgoing(kind, body);
                *pending = Some((kind, body.clone()));
                put_frame(writer, kind, &body).await?;
                *pending = None;
                self.dequeued();
                let mut ping_due = kind == FrameType::Message && shared.wrote(&body);
                // Bytes written this round, buffered or past the buffer.
                let mut round = HEADER_BYTES + body.len();
                while round < BATCH_BYTES {
                    let Some((kind, body)) = self.try_next() else {
                        break;
                    };
                    if kind == FrameType::Message && !shared.window_open(body.len()) {
                        // Waits, still counted as queued, for the window.
                        *pending = Some((kind, body));
                        ping_due |= shared.ping_owed();
                        break;
                    }
                    let body = self.outgoing(kind, body);
                    *pending = Some((kind, body.clone()));
                    put_frame(writer, kind, &body).await?;
                    *pending = None;
                    round += HEADER_BYTES + body.len();
                    self.dequeued();
                    if kind == FrameType::Message {
                        ping_due |= shared.wrote(&body);
                    }
                }
                if ping_due {
                    shared.ping(writer).await?;
                }
            }
            writer.flush().await?;
            shared.touch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u32) -> Bytes {
        Bytes::from(n.to_be_bytes().to_vec())
    }

    #[test]
    fn what_the_peer_confirmed_is_not_written_again_and_the_rest_is_in_order() {
        let shared = Shared::new();
        for n in 1..=5 {
            shared.wrote(&frame(n));
        }
        assert_eq!(shared.unconfirmed(), 5);
        assert!(shared.unconfirmed_for().is_some());
        shared.confirm(3);
        assert_eq!(shared.unconfirmed(), 2);
        let (again, given_up) = shared.take_unconfirmed();
        assert_eq!(again, vec![frame(4), frame(5)]);
        assert_eq!(given_up, 0);
        shared.reset_counts();
        for frame in &again {
            shared.wrote(frame);
        }
        shared.confirm(2);
        assert_eq!(shared.unconfirmed(), 0);
        assert!(shared.unconfirmed_for().is_none(), "nothing waits");
        assert_eq!(shared.take_unconfirmed(), (Vec::new(), 0));
    }

    #[test]
    fn the_window_bounds_what_is_unconfirmed_and_a_ping_follows_every_quarter() {
        let shared = Shared::new();
        let big = Bytes::from(vec![0u8; 256 * 1024]);
        let (mut written, mut first_ping) = (0, None);
        while shared.window_open(big.len()) {
            written += 1;
            if shared.wrote(&big) && first_ping.is_none() {
                first_ping = Some(written);
            }
        }
        assert_eq!(
            written * big.len(),
            WINDOW_BYTES,
            "the window is filled, not more"
        );
        assert_eq!(
            first_ping,
            Some(4),
            "a Ping is due after a quarter of the window"
        );
        // A confirmation of part of it opens the window by as much.
        shared.confirm(2);
        assert!(shared.window_open(2 * big.len()));
        assert!(!shared.window_open(2 * big.len() + 1));
        // Frames count too.
        let shared = Shared::new();
        for n in 0..WINDOW_FRAMES as u32 {
            assert!(shared.window_open(4));
            shared.wrote(&frame(n));
        }
        assert!(!shared.window_open(4));
        // A frame larger than the window goes once nothing is unconfirmed.
        let shared = Shared::new();
        assert!(shared.window_open(WINDOW_BYTES * 2));
    }

    /// A heartbeat that goes ahead of queued frames announces only the
    /// broadcasts written before it; one behind nothing goes as it is.
    #[test]
    fn an_overtaking_heartbeat_announces_only_what_was_written_before_it() {
        use coordinator_core::envelope::{Batch, Codec, Header, Kind};
        let codec = Codec::new("c", Some(b"key"), false, 1 << 20).on_authenticated_links();
        let header = |kind, seq| Header {
            kind,
            from: 1,
            from_incarnation: 7,
            to: 0,
            to_incarnation: 0,
            seq,
            aux: 0,
        };
        let announced = |frame: &Bytes| codec.decode(frame.clone()).unwrap().seq;
        let shared = Shared::new();
        let heartbeat = codec.encode_parts(&header(Kind::Heartbeat, 12), &[], &[]);
        assert_eq!(announced(&shared.overtaking(heartbeat.clone())), 0);
        shared.writing(&codec.encode_parts(&header(Kind::Broadcast, 1), b"t", b"x"));
        let mut batch = Batch::new(1, 7, 1024);
        for seq in 2..=5 {
            batch.push(seq, b"t", b"x");
        }
        shared.writing(&codec.seal_batch(batch));
        // Other frames say nothing of broadcasts.
        shared.writing(&codec.encode_parts(&header(Kind::Direct, 40), &[], b"x"));
        shared.writing(&heartbeat);
        assert_eq!(announced(&shared.overtaking(heartbeat.clone())), 5);
        shared.writing(&codec.encode_parts(&header(Kind::Broadcast, 20), b"t", b"x"));
        assert_eq!(
            shared.overtaking(heartbeat.clone()),
            heartbeat,
            "announces nothing past what was written"
        );
    }

    #[test]
    fn the_resend_buffer_is_bounded_and_says_what_it_could_not_keep() {
        let shared = Shared::new();
        let extra = 10;
        for n in 1..=(RESEND_FRAMES as u32 + extra) {
            shared.wrote(&frame(n));
        }
        // Four of the ten that did not fit were confirmed anyway.
        shared.confirm(4);
        let (again, given_up) = shared.take_unconfirmed();
        assert_eq!(again.len(), RESEND_FRAMES);
        assert_eq!(again[0], frame(extra + 1));
        assert_eq!(given_up, u64::from(extra) - 4);
    }
}
