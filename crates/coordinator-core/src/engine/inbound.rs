//! What arrives from the carrier: decode, verify, order, dispatch.

use super::{Inner, MAX_HELD, State, Subscriber};
use crate::api::*;
use crate::engine::outbound::Replier;
use crate::envelope::{Envelope, Kind};
use crate::membership::Heard;
use crate::sequence::{Gap, Outcome, Stream};
use crate::stats::Stats;
use crate::transport::{Inbound, InboundHandler};
use bytes::Bytes;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// What one frame or one tick produced, dispatched after the state lock is released.
#[derive(Default)]
pub(super) struct Work {
    pub member_events: Vec<MemberEvent>,
    pub deliveries: Vec<Envelope>,
    pub gaps: Vec<(NodeId, StreamKind, Gap)>,
}

/// The carrier hands each item over in its own task.
impl InboundHandler for Inner {
    fn handle(self: Arc<Self>, item: Inbound) {
        let _span = self.span.enter();
        match item {
            Inbound::Frame(frame) => self.on_frame(frame),
            Inbound::LinkDown(detail) => {
                Stats::inc(&self.stats.link_downs);
                tracing::warn!(%detail, "carrier link down");
                self.emit(Event::LinkDown { detail });
            }
            Inbound::LinkUp => {
                tracing::info!("carrier link up");
                self.emit(Event::LinkUp);
            }
            Inbound::Member {
                id,
                incarnation,
                state,
            } => self.on_member_report(id, incarnation, state),
            Inbound::Refused { reason, detail } => self.count_drop(reason, || detail),
        }
    }
}

impl Inner {
    fn on_member_report(self: &Arc<Self>, id: NodeId, incarnation: u64, state: MemberState) {
        let mut work = Work::default();
        let order = {
            let mut guard = self.state.lock();
            let state_now = &mut *guard;
            state_now.membership.reported(
                Instant::now(),
                id,
                incarnation,
                state,
                &mut work.member_events,
            );
            Self::forget_streams(state_now, &work.member_events);
            // Published under the lock: whoever sees the new state can no longer
            // receive the event that announced it (nor miss one that follows).
            self.announce(&work.member_events);
            self.dispatch_order.lock()
        };
        if !work.member_events.is_empty() {
            self.wake_timer.notify_one();
        }
        self.dispatch(work);
        drop(order);
    }

    fn count_drop(&self, reason: DropReason, detail: impl FnOnce() -> String) {
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
            tracing::warn!(?reason, %detail, "frame dropped");
            self.emit(Event::Dropped { reason, detail });
        }
    }

    pub(super) fn on_frame(self: &Arc<Self>, frame: Bytes) {
        Stats::inc(&self.stats.frames_received);
        let envelope = match self.codec.decode(frame) {
            Ok(envelope) => envelope,
            Err(error) => return self.count_drop(error.reason(), || error.to_string()),
        };
        let (from, incarnation) = (envelope.from, envelope.from_incarnation);
        if from == self.id {
            // Reported once per conflicting process, not for each of its frames.
            if incarnation != self.incarnation
                && self.id_conflict.swap(incarnation, Ordering::Relaxed) != incarnation
            {
                tracing::error!(
                    other_incarnation = incarnation,
                    "another process uses this node id"
                );
                self.emit(Event::DuplicateNodeId { incarnation });
            }
            return;
        }
        if envelope.kind == Kind::Batch {
            match self.codec.unbatch(&envelope) {
                Ok(envelopes) => {
                    Stats::inc(&self.stats.batches_received);
                    self.on_envelopes(from, envelopes)
                }
                Err(error) => {
                    self.count_drop(error.reason(), || format!("from node {from}: {error}"))
                }
            }
        } else {
            self.on_envelopes(from, [envelope])
        }
    }

    /// Acts on the envelopes of one frame (several for a batch), all from `from`.
    fn on_envelopes(self: &Arc<Self>, from: NodeId, envelopes: impl IntoIterator<Item = Envelope>) {
        let now = Instant::now();
        let mut work = Work::default();
        let mut answer_join = false;
        let mut wake_timer = false;
        let mut dropped = Vec::new();
        let order = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            for envelope in envelopes {
                let incarnation = envelope.from_incarnation;
                let drop = match envelope.kind {
                    Kind::Heartbeat | Kind::Join | Kind::Announce => {
                        let heard = state.membership.heard(
                            now,
                            from,
                            incarnation,
                            envelope.aux,
                            &mut work.member_events,
                        );
                        match heard {
                            Heard::New | Heard::Known => {
                                let stream = state
                                    .streams
                                    .entry((from, incarnation, StreamKind::Broadcast))
                                    .or_insert_with(|| {
                                        Stream::starting_at(envelope.seq + 1, MAX_HELD)
                                    });
                                stream.announce(envelope.seq, now);
                                wake_timer |= heard == Heard::New
                                    || stream.deadline(self.settings.reorder_timeout).is_some();
                                answer_join |= envelope.kind == Kind::Join;
                                None
                            }
                            Heard::Stale | Heard::Conflict => Some(DropReason::Stale),
                        }
                    }
                    Kind::Leave => {
                        state
                            .membership
                            .left(now, from, incarnation, &mut work.member_events);
                        None
                    }
                    Kind::Broadcast => {
                        self.sequence(state, now, envelope, StreamKind::Broadcast, &mut work)
                    }
                    Kind::Direct | Kind::Request | Kind::Reply | Kind::ReplyError => {
                        if envelope.to != self.id || envelope.to_incarnation != self.incarnation {
                            Some(DropReason::Stale)
                        } else {
                            self.sequence(state, now, envelope, StreamKind::Direct, &mut work)
                        }
                    }
                    // Refused by the codec inside a batch; never on its own here.
                    Kind::Batch => Some(DropReason::Malformed),
                };
                dropped.extend(drop);
                // Streams of incarnations gone by now stop here, before the
                // next envelope could recreate them.
                Self::forget_streams(state, &work.member_events);
            }
            // Published under the lock: whoever sees the new state can no longer
            // receive the event that announced it (nor miss one that follows).
            self.announce(&work.member_events);
            self.dispatch_order.lock()
        };
        for reason in dropped {
            self.count_drop(reason, || format!("from node {from}"));
        }
        if answer_join {
            let inner = self.clone();
            tokio::spawn(async move {
                if let Err(error) = inner.send_heartbeat(Kind::Announce, Some(from)).await {
                    tracing::debug!(%error, to = from, "could not answer a join");
                }
            });
        }
        if wake_timer || !work.gaps.is_empty() {
            self.wake_timer.notify_one();
        }
        self.dispatch(work);
        drop(order);
    }

    /// Puts a numbered message through its sender's stream.
    fn sequence(
        &self,
        state: &mut State,
        now: Instant,
        envelope: Envelope,
        kind: StreamKind,
        work: &mut Work,
    ) -> Option<DropReason> {
        let (from, incarnation, seq) = (envelope.from, envelope.from_incarnation, envelope.seq);
        if state
            .membership
            .touched(now, from, incarnation, &mut work.member_events)
            == Heard::Stale
        {
            return Some(DropReason::Stale);
        }
        let first = match kind {
            StreamKind::Broadcast => seq,
            StreamKind::Direct => 1,
        };
        let stream = state
            .streams
            .entry((from, incarnation, kind))
            .or_insert_with(|| Stream::starting_at(first, MAX_HELD));
        let mut found = Vec::new();
        let outcome = stream.receive(seq, envelope, now, &mut work.deliveries, &mut found);
        work.gaps
            .extend(found.into_iter().map(|gap| (from, kind, gap)));
        match outcome {
            Outcome::Delivered | Outcome::Held => None,
            Outcome::Duplicate => Some(DropReason::Duplicate),
        }
    }

    /// Drops the streams of incarnations that are gone.
    pub(super) fn forget_streams(state: &mut State, events: &[MemberEvent]) {
        for event in events {
            let Member {
                id, incarnation, ..
            } = event.member;
            let gone = match event.change {
                MemberChange::Restarted {
                    previous_incarnation,
                } => previous_incarnation,
                MemberChange::Left | MemberChange::Removed => incarnation,
                _ => continue,
            };
            state
                .streams
                .retain(|&(node, inc, _), _| !(node == id && inc == gone));
        }
    }

    /// Hands the results of a frame or a tick to the application.
    /// Sends membership events to their subscribers.
    pub(super) fn announce(&self, events: &[MemberEvent]) {
        for event in events {
            let _ = self.member_events.send(event.clone());
        }
    }

    /// Acts on what a frame or a tick produced, once the state lock is
    /// released (membership events were announced under it).
    pub(super) fn dispatch(self: &Arc<Self>, work: Work) {
        for event in work.member_events {
            let id = event.member.id;
            match event.change {
                MemberChange::Died => {
                    tracing::warn!(member = id, "member dead");
                    self.fail_pending(id, || crate::Error::NodeDead(id));
                }
                MemberChange::Left => {
                    tracing::info!(member = id, "member left");
                    self.fail_pending(id, || crate::Error::NodeLeft(id));
                }
                MemberChange::Restarted { .. } => {
                    tracing::info!(
                        member = id,
                        incarnation = event.member.incarnation,
                        "member restarted"
                    );
                    self.fail_pending(id, || crate::Error::Remote {
                        node: id,
                        message: "the node restarted before it replied".into(),
                    });
                }
                ref change => tracing::info!(member = id, ?change, "membership changed"),
            }
        }
        for (from, stream, gap) in work.gaps {
            Stats::inc(&self.stats.gaps);
            Stats::add(&self.stats.messages_lost, gap.count);
            tracing::warn!(
                from,
                ?stream,
                first = gap.first,
                count = gap.count,
                "messages lost"
            );
            self.emit(Event::Gap {
                from,
                stream,
                first: gap.first,
                count: gap.count,
            });
        }
        for envelope in work.deliveries {
            match envelope.kind {
                Kind::Broadcast => {
                    Stats::inc(&self.stats.broadcasts_delivered);
                    self.deliver_broadcast(
                        envelope.from,
                        envelope.topic_str(),
                        envelope.seq,
                        envelope.payload.clone(),
                        false,
                    );
                }
                Kind::Direct | Kind::Request => {
                    Stats::inc(&self.stats.direct_delivered);
                    let reply = (envelope.kind == Kind::Request)
                        .then(|| Replier::remote(self, envelope.from, envelope.aux));
                    self.deliver_to_inbox(Incoming {
                        from: envelope.from,
                        payload: envelope.payload,
                        reply,
                    });
                }
                Kind::Reply | Kind::ReplyError => self.complete_request(envelope),
                _ => {}
            }
        }
    }

    fn fail_pending(&self, node: NodeId, error: impl Fn() -> crate::Error) {
        let mut pending = self.pending.lock();
        for (_, request) in pending.extract_if(|_, request| request.node == node) {
            let _ = request.reply.send(Err(error()));
        }
    }

    fn complete_request(&self, envelope: Envelope) {
        let request = match self.pending.lock().entry(envelope.aux) {
            // A reply must come from the node the request went to.
            Entry::Occupied(entry) if entry.get().node == envelope.from => entry.remove(),
            _ => return,
        };
        let result = match envelope.kind {
            Kind::Reply => Ok(envelope.payload),
            _ => Err(crate::Error::Remote {
                node: envelope.from,
                message: String::from_utf8_lossy(&envelope.payload).into_owned(),
            }),
        };
        let _ = request.reply.send(result);
    }

    pub(super) fn deliver_to_inbox(&self, incoming: Incoming) {
        match self.inbox_sender.try_send(incoming) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.overflow("inbox"),
            // Nobody reads the inbox any more: a request is answered with an error by its Replier.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn overflow(&self, queue: &str) {
        Stats::inc(&self.stats.dropped_overflow);
        tracing::warn!(queue, "queue full, message dropped");
        self.emit(Event::Overflow {
            queue: queue.to_string(),
            dropped: 1,
        });
    }

    /// Delivers a broadcast to the subscribers of its topic (only those that
    /// asked for their own messages, when `own`).
    pub(super) fn deliver_broadcast(
        &self,
        from: NodeId,
        topic: &str,
        seq: u64,
        payload: Bytes,
        own: bool,
    ) {
        let mut any_closed = false;
        {
            let subscriptions = self.subscriptions.read();
            let Some((topic, subscribers)) = subscriptions.get_key_value(topic) else {
                return;
            };
            let message = BroadcastMessage {
                from,
                topic: topic.clone(),
                seq,
                payload,
            };
            for Subscriber {
                sender,
                receive_own,
            } in subscribers
            {
                if own && !receive_own {
                    continue;
                }
                match sender.try_send(message.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.overflow(&format!("subscription {topic}"))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => any_closed = true,
                }
            }
        }
        if any_closed {
            let mut subscriptions = self.subscriptions.write();
            subscriptions.retain(|_, subscribers| {
                subscribers.retain(|subscriber| !subscriber.sender.is_closed());
                !subscribers.is_empty()
            });
        }
    }
}
