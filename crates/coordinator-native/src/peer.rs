//! One outbound connection per peer: frames to that node go through it in
//! order. Control frames (heartbeats, joins, departures) overtake queued bulk
//! frames; writes are batched while frames are waiting. A broken connection is
//! dialed again with truncated exponential backoff and jitter; after
//! `retriesMax` failures the peer is left alone until the gossip says it is
//! alive again.

use crate::frame::{FrameType, write_frame};
use crate::transport::NativeTransport;
use bytes::Bytes;
use coordinator_core::{NodeId, TransportError};
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Bytes gathered before a flush.
const BATCH_BYTES: usize = 64 * 1024;
/// Frames queued per peer before publishing waits (or drops, if the peer is unreachable).
const PEER_QUEUE: usize = 16_384;
/// First backoff step.
const BACKOFF_BASE: Duration = Duration::from_millis(50);

pub(crate) struct PeerLink {
    control: mpsc::Sender<Bytes>,
    bulk: mpsc::Sender<Bytes>,
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
        let worker = Worker {
            transport,
            id,
            control: control_queue,
            bulk: bulk_queue,
            connected: connected.clone(),
            revive: revive.clone(),
        };
        let span = tracing::debug_span!("peer", peer = id);
        let task = tokio::spawn(tracing::Instrument::instrument(worker.run(), span));
        Arc::new(Self {
            control,
            bulk,
            connected,
            revive,
            task,
        })
    }

    pub async fn send(&self, frame: Bytes, control: bool) -> Result<(), TransportError> {
        let queue = if control { &self.control } else { &self.bulk };
        if self.connected.load(Ordering::Relaxed) {
            return queue
                .send(frame)
                .await
                .map_err(|_| TransportError::Closed("Native"));
        }
        match queue.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(TransportError::LinkDown {
                carrier: "Native",
                detail: "the peer is unreachable and its queue is full".into(),
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TransportError::Closed("Native")),
        }
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

    /// Drops what is queued (the peer cannot be reached).
    fn discard(&mut self) -> usize {
        let mut dropped = 0;
        while self.try_next().is_some() {
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
                pending = None;
                self.discard();
                let revive = self.revive.clone();
                loop {
                    tokio::select! {
                        _ = revive.notified() => break,
                        frame = self.next_frame() => if frame.is_none() { return },
                    }
                }
                failures = 0;
                continue;
            }
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << failures.min(20))
                .min(config.backoff_max);
            let wait = rand::rng().random_range(ceiling / 2..=ceiling);
            tokio::time::sleep(wait).await;
        }
    }

    /// Writes frames until the connection fails or stays idle too long.
    async fn write_loop(
        &mut self,
        stream: tokio_rustls::TlsStream<tokio::net::TcpStream>,
        pending: &mut Option<Bytes>,
        idle: Duration,
    ) -> std::io::Result<()> {
        let (mut reader, writer) = tokio::io::split(stream);
        let mut writer = BufWriter::with_capacity(BATCH_BYTES + 16 * 1024, writer);
        // The other side never writes on this connection: a read returns when it closes.
        let mut closed = Box::pin(async move {
            let mut byte = [0u8; 1];
            let _ = reader.read(&mut byte).await;
        });
        loop {
            let frame = match pending.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    biased;
                    _ = &mut closed => return Err(std::io::ErrorKind::ConnectionReset.into()),
                    frame = self.next_frame() => match frame {
                        Some(frame) => frame,
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep(idle) => {
                        let _ = writer.shutdown().await;
                        return Ok(());
                    }
                },
            };
            *pending = Some(frame.clone());
            write_frame(&mut writer, FrameType::Message, &frame).await?;
            *pending = None;
            while writer.buffer().len() < BATCH_BYTES {
                let Some(frame) = self.try_next() else { break };
                write_frame(&mut writer, FrameType::Message, &frame).await?;
            }
            writer.flush().await?;
        }
    }
}
