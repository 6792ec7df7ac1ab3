//! What this node sends: broadcasts, point-to-point messages, requests,
//! replies and heartbeats.

use super::outbox::{Publishing, Queued};
use super::{DirectOut, Inner, PendingRequest, check_topic};
use crate::api::*;
use crate::envelope::{EncodeError, Envelope, Header, Kind};
use crate::error::Error;
use crate::stats::Stats;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

impl Inner {
    /// An envelope from this node with no topic and no payload.
    fn envelope(
        &self,
        kind: Kind,
        to: NodeId,
        to_incarnation: u64,
        seq: u64,
        aux: u64,
    ) -> Envelope {
        Envelope {
            kind,
            from: self.id,
            from_incarnation: self.incarnation,
            to,
            to_incarnation,
            seq,
            aux,
            topic: Bytes::new(),
            payload: Bytes::new(),
        }
    }

    fn encode(&self, envelope: Envelope) -> Result<Bytes, Error> {
        self.codec
            .encode(&envelope)
            .map_err(|error| self.encode_error(error, envelope.topic_str()))
    }

    fn encode_error(&self, error: EncodeError, topic: &str) -> Error {
        match error {
            EncodeError::TooLarge { size, max } => Error::TooLarge { size, max },
            EncodeError::TopicTooLong => Error::InvalidTopic {
                topic: topic.into(),
                reason: "longer than 255 bytes",
            },
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

    fn failed(&self, error: crate::TransportError) -> Error {
        Stats::inc(&self.stats.send_failures);
        Error::Transport(error)
    }

    pub(super) async fn broadcast(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        self.check_open()?;
        check_topic(topic)?;
        self.check_size(topic.len(), payload.len())?;
        let plain = self
            .codec
            .check(topic.len(), payload.len())
            .map_err(|error| self.encode_error(error, topic))?;
        let queued = self.outbox.push(plain, topic.as_bytes(), &payload).await;
        let seq = match queued.ok_or(Error::Closed)? {
            Queued::Behind { seq } => seq,
            Queued::Publish { seq } => {
                let mut publishing = Publishing {
                    outbox: &self.outbox,
                    seq,
                    sent: None,
                };
                let header = Header {
                    kind: Kind::Broadcast,
                    from: self.id,
                    from_incarnation: self.incarnation,
                    to: 0,
                    to_incarnation: 0,
                    seq,
                    aux: 0,
                };
                let frame = self.codec.encode_parts(&header, topic.as_bytes(), &payload);
                let result = self.transport.publish(frame).await;
                publishing.sent = Some(result.is_ok());
                drop(publishing);
                result.map_err(|error| self.failed(error))?;
                seq
            }
        };
        Stats::inc(&self.stats.broadcasts_sent);
        self.deliver_broadcast(self.id, topic, seq, payload, true);
        Ok(())
    }

    /// Publishes what waits in the outbox, batch after batch, whenever a
    /// caller leaves some behind.
    pub(super) async fn flush_loop(self: Arc<Self>) {
        loop {
            self.outbox.work().await;
            while let Some((batch, last)) = self.outbox.take() {
                let count = batch.len() as u64;
                if count > 1 {
                    Stats::inc(&self.stats.batches_sent);
                }
                let result = self.transport.publish(self.codec.seal_batch(batch)).await;
                self.outbox.settle(last);
                if let Err(error) = result {
                    Stats::inc(&self.stats.send_failures);
                    Stats::add(&self.stats.broadcasts_failed, count);
                    tracing::warn!(%error, messages = count, last, "queued broadcasts not sent");
                    self.emit(Event::SendFailed {
                        messages: count,
                        detail: error.to_string(),
                    });
                }
            }
        }
    }

    /// Whether `to` can be sent to; its incarnation if so.
    fn reachable(&self, to: NodeId) -> Result<u64, Error> {
        match self.state.lock().membership.get(to) {
            None => Err(Error::UnknownNode(to)),
            Some(member) => match member.state {
                MemberState::Dead => Err(Error::NodeDead(to)),
                MemberState::Left => Err(Error::NodeLeft(to)),
                MemberState::Alive | MemberState::Suspect => Ok(member.incarnation),
            },
        }
    }

    /// Sends one message of `to`'s direct stream, in order with the others.
    pub(super) async fn send_direct(
        &self,
        kind: Kind,
        to: NodeId,
        aux: u64,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.check_open()?;
        let incarnation = self.reachable(to)?;
        let lane = self.direct_out.lock().entry(to).or_default().clone();
        let mut lane = lane.lock().await;
        if lane.incarnation != incarnation {
            *lane = DirectOut {
                incarnation,
                last_seq: 0,
            };
        }
        let seq = lane.last_seq + 1;
        let frame = self.encode(Envelope {
            payload,
            ..self.envelope(kind, to, incarnation, seq, aux)
        })?;
        self.transport
            .send_to(to, frame)
            .await
            .map_err(|error| self.failed(error))?;
        lane.last_seq = seq;
        Stats::inc(&self.stats.direct_sent);
        Ok(())
    }

    pub(super) async fn send(&self, to: NodeId, payload: Bytes) -> Result<(), Error> {
        self.check_open()?;
        self.check_size(0, payload.len())?;
        if to == self.id {
            self.deliver_to_inbox(Incoming {
                from: self.id,
                payload,
                reply: None,
            });
            return Ok(());
        }
        self.send_direct(Kind::Direct, to, 0, payload).await
    }

    pub(super) async fn request(
        self: &Arc<Self>,
        to: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        self.check_open()?;
        self.check_size(0, payload.len())?;
        let (sender, receiver) = oneshot::channel();
        let _pending = if to == self.id {
            let reply = Replier {
                target: Target::Local {
                    node: self.id,
                    sender: Some(sender),
                },
                answered: false,
            };
            self.deliver_to_inbox(Incoming {
                from: self.id,
                payload,
                reply: Some(reply),
            });
            None
        } else {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            self.pending.lock().insert(
                id,
                PendingRequest {
                    node: to,
                    reply: sender,
                },
            );
            let guard = PendingGuard { inner: self, id };
            self.send_direct(Kind::Request, to, id, payload).await?;
            Some(guard)
        };
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                Stats::inc(&self.stats.requests_timed_out);
                Err(Error::Timeout { node: to, timeout })
            }
        }
    }

    /// A heartbeat-like message (`Heartbeat`, `Join`, `Leave`; `Announce` to
    /// one node). It announces the last broadcast whose publish is over, so it
    /// never announces one still queued.
    pub(super) async fn send_heartbeat(&self, kind: Kind, to: Option<NodeId>) -> Result<(), Error> {
        let last = self.outbox.settled();
        let counter = self.heartbeat_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let result = match to {
            None => {
                let frame = self.encode(self.envelope(kind, 0, 0, last, counter))?;
                self.transport.publish(frame).await
            }
            Some(node) => {
                let incarnation = self.reachable(node)?;
                let frame = self.encode(self.envelope(kind, node, incarnation, last, counter))?;
                self.transport.send_to(node, frame).await
            }
        };
        result.map_err(|error| self.failed(error))?;
        Stats::inc(&self.stats.heartbeats_sent);
        Ok(())
    }
}

/// Forgets a pending request when its caller stops waiting, for whatever reason.
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().remove(&self.id);
    }
}

/// Answers one request. Dropping it unanswered sends an error reply, so the
/// requester fails at once instead of waiting for its time-out.
pub struct Replier {
    target: Target,
    answered: bool,
}

enum Target {
    Remote {
        inner: Weak<Inner>,
        node: NodeId,
        to: NodeId,
        request: u64,
    },
    Local {
        node: NodeId,
        sender: Option<oneshot::Sender<Result<Bytes, Error>>>,
    },
}

impl std::fmt::Debug for Replier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Remote { to, request, .. } => {
                write!(f, "Replier(to node {to}, request {request})")
            }
            Target::Local { .. } => f.write_str("Replier(local)"),
        }
    }
}

impl Replier {
    pub(crate) fn remote(inner: &Arc<Inner>, to: NodeId, request: u64) -> Self {
        Self {
            target: Target::Remote {
                inner: Arc::downgrade(inner),
                node: inner.id,
                to,
                request,
            },
            answered: false,
        }
    }

    pub(crate) async fn reply(mut self, result: Result<Bytes, String>) -> Result<(), Error> {
        self.answered = true;
        match &mut self.target {
            Target::Remote {
                inner, to, request, ..
            } => {
                let inner = inner.upgrade().ok_or(Error::Closed)?;
                let (kind, payload) = match result {
                    Ok(payload) => (Kind::Reply, payload),
                    Err(message) => (Kind::ReplyError, Bytes::from(message)),
                };
                inner.send_direct(kind, *to, *request, payload).await
            }
            Target::Local { node, sender } => {
                let node = *node;
                let sender = sender.take().ok_or(Error::Closed)?;
                sender
                    .send(result.map_err(|message| Error::Remote { node, message }))
                    .map_err(|_| Error::Closed)
            }
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        match &mut self.target {
            Target::Remote {
                inner,
                node,
                to,
                request,
            } => {
                let (Some(inner), Ok(runtime)) =
                    (inner.upgrade(), tokio::runtime::Handle::try_current())
                else {
                    return;
                };
                let (node, to, request) = (*node, *to, *request);
                runtime.spawn(async move {
                    let message =
                        Bytes::from(format!("node {node} dropped the request without replying"));
                    let _ = inner
                        .send_direct(Kind::ReplyError, to, request, message)
                        .await;
                });
            }
            Target::Local { node, sender } => {
                if let Some(sender) = sender.take() {
                    let message = format!("node {node} dropped the request without replying");
                    let _ = sender.send(Err(Error::Remote {
                        node: *node,
                        message,
                    }));
                }
            }
        }
    }
}
