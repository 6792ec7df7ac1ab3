//! One outbound connection per peer: frames to that node go through it in
//! order. When the connection is idle, the sending task writes its frame
//! itself (no hop to another task); otherwise frames queue for the peer's
//! worker, which batches them. Control frames (heartbeats, joins, departures)
//! overtake queued bulk frames. A broken connection is dialed again with
//! truncated exponential backoff and jitter; after `retriesMax` failures the
//! peer is left alone until the gossip says it is alive again.

use crate::frame::{FrameType, write_frame};
use crate::transport::NativeTransport;
use bytes::Bytes;
use coordinator_core::routes::backoff;
use coordinator_core::{NodeId, TransportError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
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
}

impl Shared {
    fn touch(&self) {
        self.last_write
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_write.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Asks the worker to flush if the task flushing is dropped before it finishes.
struct FlushOnDrop<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.flush.notify_one();
        }
    }
}
/// Frames queued per peer before publishing waits (or drops, if the peer is unreachable).
const PEER_QUEUE: usize = 16_384;
/// First backoff step.
const BACKOFF_BASE: Duration = Duration::from_millis(50);

pub(crate) struct PeerLink {
    control: mpsc::Sender<Bytes>,
    bulk: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    /// A connection is up (publishing waits for room); otherwise frames that
    /// do not fit are dropped (the receiver reports the gap).
    connected: Arc<AtomicBool>,
    revive: Arc<Notify>,
    task: JoinHandle<()>,
}

impl PeerLink {
    pub fn start(transport: Arc<NativeTransport>, id: NodeId) -> Arc<Self> {
        let (control, control_queue) = mpsc::channel(1024);
        let (bulk, bulk_queue) = mpsc::channel(PEER_QUEUE);
        let connected = Arc::new(AtomicBool::new(false));
        let revive = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(None),
            queued: AtomicUsize::new(0),
            flush: Notify::new(),
            last_write: AtomicU64::new(0),
            epoch: Instant::now(),
        });
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
            control,
            bulk,
            shared,
            connected,
            revive,
            task,
        })
    }

    pub async fn send(&self, frame: Bytes, control: bool) -> Result<(), TransportError> {
        if self.connected.load(Ordering::Relaxed) && self.write_now(&frame).await {
            return Ok(());
        }
        let queue = if control { &self.control } else { &self.bulk };
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let result = if self.connected.load(Ordering::Relaxed) {
            queue
                .send(frame)
                .await
                .map_err(|_| TransportError::Closed("Native"))
        } else {
            match queue.try_send(frame) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => Err(TransportError::LinkDown {
                    carrier: "Native",
                    detail: "the peer is unreachable and its queue is full".into(),
                }),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(TransportError::Closed("Native")),
            }
        };
        if result.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    /// Writes the frame from this task when the connection is free and
    /// nothing is queued; `false` when it must queue instead.
    async fn write_now(&self, frame: &Bytes) -> bool {
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
        if self.shared.queued.load(Ordering::Acquire) != 0
            || writer.buffer().len() + HEADER_BYTES + frame.len() > BUFFER_BYTES
        {
            return false;
        }
        // The frame fits in the buffer, so it is copied whole without waiting:
        // a task dropped from here on never leaves half a frame behind.
        let mut flushing = FlushOnDrop {
            shared: &self.shared,
            done: false,
        };
        let result = match write_frame(writer, FrameType::Message, frame).await {
            Ok(()) => writer.flush().await,
            Err(error) => Err(error),
        };
        flushing.done = true;
        self.shared.touch();
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

struct Worker {
    transport: Arc<NativeTransport>,
    id: NodeId,
    control: mpsc::Receiver<Bytes>,
    bulk: mpsc::Receiver<Bytes>,
    connected: Arc<AtomicBool>,
    revive: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Worker {
    async fn next_frame(&mut self) -> Option<Bytes> {
        tokio::select! {
            biased;
            frame = self.control.recv() => frame,
            frame = self.bulk.recv() => frame,
        }
    }

    fn try_next(&mut self) -> Option<Bytes> {
        self.control
            .try_recv()
            .ok()
            .or_else(|| self.bulk.try_recv().ok())
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
        let mut pending: Option<Bytes> = None;
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
            match self.transport.dial(addr).await {
                Ok((stream, hello)) if hello.id == self.id => {
                    failures = 0;
                    self.connected.store(true, Ordering::Relaxed);
                    let result = self
                        .write_loop(stream, &mut pending, config.inactivity_timeout)
                        .await;
                    self.connected.store(false, Ordering::Relaxed);
                    if let Err(error) = result {
                        tracing::info!(%addr, %error, "connection to peer lost");
                    }
                    continue;
                }
                Ok((_, hello)) => {
                    tracing::warn!(%addr, found = hello.id, "dialed a member and found another node");
                }
                Err(error) => tracing::info!(%addr, %error, "cannot reach peer"),
            }
            failures += 1;
            if failures > config.retries_max {
                tracing::warn!(
                    failures,
                    "giving up on this peer until the gossip reports it alive again"
                );
                if pending.take().is_some() {
                    self.dequeued();
                }
                self.discard();
                let revive = self.revive.clone();
                loop {
                    tokio::select! {
                        _ = revive.notified() => break,
                        frame = self.next_frame() => match frame {
                            Some(_) => self.dequeued(),
                            None => return,
                        },
                    }
                }
                failures = 0;
                continue;
            }
            let wait = backoff(failures as u32, BACKOFF_BASE, config.backoff_max);
            tokio::time::sleep(wait).await;
        }
    }

    /// Writes frames until the connection fails or stays idle too long.
    async fn write_loop(
        &mut self,
        stream: tokio_rustls::TlsStream<TcpStream>,
        pending: &mut Option<Bytes>,
        idle: Duration,
    ) -> std::io::Result<()> {
        let (mut reader, writer) = tokio::io::split(stream);
        *self.shared.writer.lock().await = Some(BufWriter::with_capacity(BUFFER_BYTES, writer));
        self.shared.touch();
        self.connected.store(true, Ordering::Relaxed);
        let result = self.serve(&mut reader, pending, idle).await;
        self.connected.store(false, Ordering::Relaxed);
        if let Some(mut writer) = self.shared.writer.lock().await.take()
            && result.is_ok()
        {
            let _ = writer.shutdown().await;
        }
        result
    }

    async fn serve(
        &mut self,
        reader: &mut tokio::io::ReadHalf<tokio_rustls::TlsStream<TcpStream>>,
        pending: &mut Option<Bytes>,
        idle: Duration,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        // The other side never writes on this connection: a read returns when it closes.
        let mut closed = std::pin::pin!(async move {
            let mut byte = [0u8; 1];
            let _ = reader.read(&mut byte).await;
        });
        let idle_check = tokio::time::sleep(idle);
        let mut idle_check = std::pin::pin!(idle_check);
        loop {
            let frame = match pending.take() {
                Some(frame) => Some(frame),
                None => tokio::select! {
                    biased;
                    _ = &mut closed => return Err(std::io::ErrorKind::ConnectionReset.into()),
                    frame = self.next_frame() => match frame {
                        Some(frame) => Some(frame),
                        None => return Ok(()),
                    },
                    _ = shared.flush.notified() => None,
                    _ = &mut idle_check => {
                        let quiet = shared.idle_for();
                        if quiet >= idle {
                            return Ok(());
                        }
                        idle_check.as_mut().reset(tokio::time::Instant::now() + (idle - quiet));
                        continue;
                    }
                },
            };
            let mut guard = shared.writer.lock().await;
            let Some(writer) = guard.as_mut() else {
                // A sending task saw the connection fail.
                *pending = frame;
                return Err(std::io::ErrorKind::ConnectionReset.into());
            };
            if let Some(frame) = frame {
                *pending = Some(frame.clone());
                write_frame(writer, FrameType::Message, &frame).await?;
                *pending = None;
                self.dequeued();
                while writer.buffer().len() < BATCH_BYTES {
                    let Some(frame) = self.try_next() else { break };
                    write_frame(writer, FrameType::Message, &frame).await?;
                    self.dequeued();
                }
            }
            writer.flush().await?;
            shared.touch();
        }
    }
}
