//! Per destination, sans-IO: the direct stream's numbering and the messages
//! waiting their turn.
//!
//! One frame per destination is with the carrier at a time, so the carrier
//! sees each pair's frames in order; the messages behind it wait here,
//! bounded in bytes and in time, and go out together, as one batch, once the
//! carrier is done with it (the rule broadcasts follow: alone when the
//! destination is idle, together under load). A number is never given back:
//! a send that failed, or whose outcome is unknown, may have arrived, so the
//! next message carries the next number and the receiver reports a gap if it
//! did not.

use crate::api::NodeId;
use crate::envelope::{DirectRecord, Kind, OVERHEAD};
use bytes::Bytes;
use foldhash::HashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A numbered message, unsealed, waiting for the frame before it to leave
/// the carrier.
#[derive(Debug)]
pub(super) struct Waiting {
    /// The lane it waits in ([`Numbered::lane`]).
    pub lane: u64,
    pub kind: Kind,
    /// The request id of a request or reply.
    pub aux: u64,
    pub seq: u64,
    pub payload: Bytes,
    pub since: Instant,
}

/// What a message of `payload_len` bytes counts for against a lane's bound:
/// its size as an envelope of its own, sealed, at most.
fn cost(payload_len: usize) -> usize {
    OVERHEAD + payload_len
}

impl Waiting {
    fn cost(&self) -> usize {
        cost(self.payload.len())
    }

    pub fn record(&self) -> DirectRecord<'_> {
        DirectRecord {
            kind: self.kind,
            aux: self.aux,
            payload: &self.payload,
        }
    }
}

#[derive(Debug, Default)]
struct Lane {
    /// Never the same for two lanes of one [`Lanes`].
    id: u64,
    incarnation: u64,
    last_seq: u64,
    /// The frame with the carrier now.
    busy: Option<u64>,
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
}

/// A message's place in its destination's stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Numbered {
    pub seq: u64,
    /// The carrier is free for this destination: the message goes now.
    pub free: bool,
    /// The lane's own number: a lane's numbers restart when its destination
    /// restarts, so a message is known by its lane and its number.
    pub lane: u64,
}

/// Why a message could not be numbered.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// As many bytes as allowed already wait for this destination.
    Full { waiting_bytes: usize },
    /// The stream to this destination is at its last number.
    Exhausted,
}

pub(super) struct Lanes {
    lanes: HashMap<NodeId, Lane>,
    /// Where the streams to departed destinations stopped, so that a
    /// destination that comes back with the same run (after it was forgotten
    /// in a long partition) is not sent numbers it already has.
    retired: HashMap<(NodeId, u64), u64>,
    retired_order: VecDeque<(NodeId, u64)>,
    max_retired: usize,
    max_waiting_bytes: usize,
    next_lane: u64,
    /// Messages waiting, over every lane.
    waiting_total: usize,
}

impl Lanes {
    pub fn new(max_waiting_bytes: usize, max_retired: usize) -> Self {
        Self {
            lanes: HashMap::default(),
            retired: HashMap::default(),
            retired_order: VecDeque::new(),
            max_retired: max_retired.max(1),
            max_waiting_bytes,
            next_lane: 0,
            waiting_total: 0,
        }
    }

    /// Numbers the next message to `to` (run `incarnation`), with a payload
    /// of `payload_len` bytes.
    /// Frames still waiting for an earlier run of `to` are returned in
    /// `stale`: they can no longer be delivered.
    pub fn number(
        &mut self,
        to: NodeId,
        incarnation: u64,
        payload_len: usize,
        stale: &mut Vec<Waiting>,
    ) -> Result<Numbered, Refused> {
        let max = self.max_waiting_bytes;
        let lane = self.lane(to, incarnation, stale);
        let free = lane.busy.is_none();
        // One message may always wait, whatever its size, or a message
        // larger than the bound could never be sent to a busy destination.
        if !free && lane.waiting_bytes > 0 && lane.waiting_bytes + cost(payload_len) > max {
            return Err(Refused::Full {
                waiting_bytes: lane.waiting_bytes,
            });
        }
        let seq = lane.last_seq.checked_add(1).ok_or(Refused::Exhausted)?;
        lane.last_seq = seq;
        Ok(Numbered {
            seq,
            free,
            lane: lane.id,
        })
    }

    fn lane(&mut self, to: NodeId, incarnation: u64, stale: &mut Vec<Waiting>) -> &mut Lane {
        if self
            .lanes
            .get(&to)
            .is_some_and(|lane| lane.incarnation != incarnation)
        {
            self.retire(to, stale);
        }
        let retired = &mut self.retired;
        let next_lane = &mut self.next_lane;
        self.lanes.entry(to).or_insert_with(|| Lane {
            id: {
                *next_lane += 1;
                *next_lane
            },
            incarnation,
            last_seq: retired.remove(&(to, incarnation)).unwrap_or(0),
            ..Lane::default()
        })
    }

    /// The run of `to` its lane numbers for.
    pub fn incarnation(&self, to: NodeId) -> Option<u64> {
        self.lanes.get(&to).map(|lane| lane.incarnation)
    }

    /// The carrier has the frame `token` for `to` now.
    pub fn start(&mut self, to: NodeId, token: u64) {
        if let Some(lane) = self.lanes.get_mut(&to) {
            lane.busy = Some(token);
        }
    }

    /// Queues a numbered message behind the frame with the carrier.
    pub fn wait(&mut self, to: NodeId, waiting: Waiting) {
        if let Some(lane) = self.lanes.get_mut(&to) {
            lane.waiting_bytes += waiting.cost();
            lane.waiting.push_back(waiting);
            self.waiting_total += 1;
        }
    }

    /// Whether any message waits, for any destination (without looking at
    /// every lane, as [`Lanes::deadline`] does).
    pub fn any_waiting(&self) -> bool {
        self.waiting_total > 0
    }

    /// The carrier is done with frame `token` for `to`: the messages that go
    /// out next, together, are put in `next` (as many as fit in a batch of
    /// `batch_bytes` unsealed, and always the first; with `replies_alone`, a
    /// reply goes in a frame of its own). If any, the caller hands them to
    /// the carrier as one frame and says so with [`Lanes::start`]; if none,
    /// the lane is free.
    pub fn finished(
        &mut self,
        to: NodeId,
        token: u64,
        batch_bytes: usize,
        replies_alone: bool,
        next: &mut Vec<Waiting>,
    ) {
        let Some(lane) = self.lanes.get_mut(&to) else {
            return;
        };
        if lane.busy != Some(token) {
            return;
        }
        lane.busy = None;
        let mut size = DirectRecord::BATCH_HEAD;
        while let Some(first) = lane.waiting.front() {
            let record = DirectRecord::record_size(first.payload.len());
            let alone = replies_alone && matches!(first.kind, Kind::Reply | Kind::ReplyError);
            if !next.is_empty() && (size + record > batch_bytes || alone) {
                break;
            }
            size += record;
            let waiting = lane.waiting.pop_front().expect("checked non-empty");
            lane.waiting_bytes -= waiting.cost();
            self.waiting_total -= 1;
            next.push(waiting);
            if alone {
                break;
            }
        }
    }

    /// The defect the simulator must find (tests only): the number of a
    /// failed send is given back when nothing was numbered after it.
    #[cfg(test)]
    pub fn give_back(&mut self, to: NodeId, seq: u64) {
        if let Some(lane) = self.lanes.get_mut(&to)
            && lane.last_seq == seq
        {
            lane.last_seq -= 1;
        }
    }

    /// Takes out the frames that waited `timeout` or longer.
    /// They come out in the order they were numbered, destination by destination.
    pub fn expire(&mut self, now: Instant, timeout: Duration, expired: &mut Vec<Waiting>) {
        let mut destinations: Vec<NodeId> = self.lanes.keys().copied().collect();
        destinations.sort_unstable();
        for to in destinations {
            let lane = self.lanes.get_mut(&to).expect("listed");
            while lane
                .waiting
                .front()
                .is_some_and(|w| now.saturating_duration_since(w.since) >= timeout)
            {
                let waiting = lane.waiting.pop_front().expect("checked non-empty");
                lane.waiting_bytes -= waiting.cost();
                self.waiting_total -= 1;
                expired.push(waiting);
            }
        }
    }

    /// When [`Lanes::expire`] next has something to do.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.lanes
            .values()
            .filter_map(|lane| lane.waiting.front().map(|w| w.since + timeout))
            .min()
    }

    /// `to`'s run `incarnation` is gone: its lane is retired, and what waited
    /// for it is returned in `stale`.
    pub fn forget(&mut self, to: NodeId, incarnation: u64, stale: &mut Vec<Waiting>) {
        if self
            .lanes
            .get(&to)
            .is_some_and(|lane| lane.incarnation == incarnation && lane.busy.is_none())
        {
            self.retire(to, stale);
        }
    }

    fn retire(&mut self, to: NodeId, stale: &mut Vec<Waiting>) {
        let Some(lane) = self.lanes.remove(&to) else {
            return;
        };
        self.waiting_total -= lane.waiting.len();
        stale.extend(lane.waiting);
        if lane.last_seq == 0 {
            return;
        }
        let key = (to, lane.incarnation);
        if self.retired.insert(key, lane.last_seq).is_none() {
            self.retired_order.push_back(key);
        }
        while self.retired.len() > self.max_retired {
            match self.retired_order.pop_front() {
                Some(oldest) => {
                    self.retired.remove(&oldest);
                }
                None => break,
            }
        }
        // Keys re-used by a lane that came back are stale in the order list.
        if self.retired_order.len() > 2 * self.max_retired {
            let retired = &self.retired;
            self.retired_order.retain(|key| retired.contains_key(key));
        }
    }

    /// Destinations with a lane (for memory checks).
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// The largest number of bytes waiting for one destination.
    pub fn max_waiting_bytes(&self) -> usize {
        self.lanes
            .values()
            .map(|lane| lane.waiting_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Every waiting frame (the node stops), lane by lane, in the order they were numbered.
    pub fn drain(&mut self) -> Vec<Waiting> {
        let mut all: Vec<Waiting> = self
            .lanes
            .values_mut()
            .flat_map(|lane| {
                lane.waiting_bytes = 0;
                lane.waiting.drain(..)
            })
            .collect();
        self.waiting_total = 0;
        all.sort_by_key(|waiting| (waiting.lane, waiting.seq));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number and whether the carrier is free.
    fn numbered(
        lanes: &mut Lanes,
        to: NodeId,
        incarnation: u64,
        payload_len: usize,
        stale: &mut Vec<Waiting>,
    ) -> Result<(u64, bool), Refused> {
        lanes
            .number(to, incarnation, payload_len, stale)
            .map(|numbered| (numbered.seq, numbered.free))
    }

    fn waiting(seq: u64, since: Instant) -> Waiting {
        Waiting {
            lane: 1,
            kind: Kind::Direct,
            aux: 0,
            seq,
            payload: Bytes::from_static(&[0; 10]),
            since,
        }
    }

    /// A lane to node 2 whose frame 1 is with the carrier, and behind it
    /// messages of these kinds, numbers 2, 3, … in order.
    fn busy_lane(kinds: &[Kind]) -> Lanes {
        let t0 = Instant::now();
        let mut lanes = Lanes::new(1 << 20, 8);
        let mut stale = Vec::new();
        lanes.number(2, 7, 10, &mut stale).unwrap();
        lanes.start(2, 1);
        for (token, &kind) in (2..).zip(kinds) {
            lanes.number(2, 7, 10, &mut stale).unwrap();
            lanes.wait(
                2,
                Waiting {
                    kind,
                    ..waiting(token, t0)
                },
            );
        }
        lanes
    }

    fn finished(lanes: &mut Lanes, to: NodeId, token: u64, batch_bytes: usize) -> Vec<u64> {
        let mut next = Vec::new();
        lanes.finished(to, token, batch_bytes, false, &mut next);
        next.iter().map(|w| w.seq).collect()
    }

    #[test]
    fn one_frame_at_a_time_and_numbers_never_given_back() {
        let t0 = Instant::now();
        // Room for two waiting messages, not three.
        let mut lanes = Lanes::new(2 * cost(10) + 5, 8);
        let mut stale = Vec::new();
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((1, true)));
        lanes.start(2, 100);
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((2, false)));
        lanes.wait(2, waiting(101, t0));
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((3, false)));
        lanes.wait(2, waiting(102, t0));
        assert_eq!(
            numbered(&mut lanes, 2, 7, 10, &mut stale),
            Err(Refused::Full {
                waiting_bytes: 2 * cost(10)
            })
        );
        // Message 1 failed: its number stays spent; 2 and 3 go next, together.
        assert_eq!(finished(&mut lanes, 2, 100, 1024), vec![101, 102]);
        lanes.start(2, 200);
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((4, false)));
        assert!(finished(&mut lanes, 2, 200, 1024).is_empty());
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((5, true)));
    }

    #[test]
    fn one_message_larger_than_the_bound_may_wait_alone() {
        let t0 = Instant::now();
        let mut lanes = Lanes::new(10, 8);
        let mut stale = Vec::new();
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((1, true)));
        lanes.start(2, 1);
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((2, false)));
        lanes.wait(2, waiting(2, t0));
        assert_eq!(
            numbered(&mut lanes, 2, 7, 10, &mut stale),
            Err(Refused::Full {
                waiting_bytes: cost(10)
            })
        );
    }

    #[test]
    fn what_waits_goes_out_in_batches_of_the_bound_and_in_order() {
        let mut lanes = busy_lane(&[Kind::Direct; 7]);
        assert!(lanes.any_waiting());
        // Three records of 23 bytes fit behind the batch's head, not four.
        let bound = DirectRecord::BATCH_HEAD + 3 * DirectRecord::record_size(10);
        assert_eq!(finished(&mut lanes, 2, 1, bound), vec![2, 3, 4]);
        // Only the frame with the carrier frees the lane.
        assert!(finished(&mut lanes, 2, 1, bound).is_empty());
        lanes.start(2, 9);
        assert_eq!(finished(&mut lanes, 2, 9, bound), vec![5, 6, 7]);
        lanes.start(2, 10);
        // A message larger than the bound still goes, alone.
        assert_eq!(finished(&mut lanes, 2, 10, 1), vec![8]);
        lanes.start(2, 11);
        assert!(finished(&mut lanes, 2, 11, bound).is_empty());
        assert_eq!(lanes.max_waiting_bytes(), 0);
        assert!(!lanes.any_waiting());
    }

    #[test]
    fn a_carrier_that_answers_requests_itself_gets_each_reply_alone() {
        let mut lanes = busy_lane(&[
            Kind::Direct,
            Kind::Request,
            Kind::Reply,
            Kind::ReplyError,
            Kind::Direct,
        ]);
        let mut took = Vec::new();
        let mut last = 1;
        loop {
            let mut next = Vec::new();
            lanes.finished(2, last, 1 << 16, true, &mut next);
            if next.is_empty() {
                break;
            }
            took.push(next.iter().map(|w| w.seq).collect::<Vec<_>>());
            last = 100 + took.len() as u64;
            lanes.start(2, last);
        }
        // In order; replies each alone.
        assert_eq!(took, vec![vec![2, 3], vec![4], vec![5], vec![6]]);
    }

    #[test]
    fn waiting_frames_expire_and_a_new_run_starts_at_one() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut lanes = Lanes::new(1 << 20, 8);
        let mut stale = Vec::new();
        lanes.number(2, 7, 10, &mut stale).unwrap();
        lanes.start(2, 1);
        lanes.number(2, 7, 10, &mut stale).unwrap();
        lanes.wait(2, waiting(2, t0));
        assert_eq!(lanes.deadline(timeout), Some(t0 + timeout));
        let mut expired = Vec::new();
        lanes.expire(t0 + timeout, timeout, &mut expired);
        assert_eq!(expired.len(), 1);
        assert!(!lanes.any_waiting());
        lanes.number(2, 7, 10, &mut stale).unwrap();
        lanes.wait(2, waiting(3, t0));
        assert!(lanes.any_waiting());
        assert_eq!(numbered(&mut lanes, 2, 8, 10, &mut stale), Ok((1, true)));
        assert_eq!(stale.len(), 1, "what waited for the old run");
        assert!(!lanes.any_waiting());
    }

    #[test]
    fn a_forgotten_destination_that_comes_back_resumes_its_numbers() {
        let mut lanes = Lanes::new(1 << 20, 1);
        let mut stale = Vec::new();
        lanes.number(2, 7, 10, &mut stale).unwrap();
        lanes.number(2, 7, 10, &mut stale).unwrap();
        lanes.forget(2, 7, &mut stale);
        assert_eq!(lanes.len(), 0);
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((3, true)));
        lanes.forget(2, 7, &mut stale);
        lanes.number(3, 1, 10, &mut stale).unwrap();
        lanes.forget(3, 1, &mut stale);
        // Only one retired stream is remembered: node 2's is gone.
        assert_eq!(numbered(&mut lanes, 2, 7, 10, &mut stale), Ok((1, true)));
    }
}
