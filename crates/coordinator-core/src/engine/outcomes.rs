//! The outcomes of messages to one node that waited their turn, told per
//! frame rather than per message.
//!
//! Messages posted while the frame before them is with the carrier share one
//! [`Group`]: each caller's outcome is the group and its message's number,
//! so a message costs a reference count, not a channel and an entry in a
//! map. The core settles a lane's messages in ranges ([`Output::Sent`]: a
//! frame, or messages that expired or can no longer be sent); a range is
//! written into every group it overlaps, and a caller reads the range that
//! holds its number. A group lives as long as a caller holds it; the list of
//! groups still waiting lives until all their numbers are settled.
//!
//! [`Output::Sent`]: super::core::Output::Sent

use super::core::clone_result;
use crate::error::Error;
use foldhash::HashMap;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Messages of one lane that waited their turn together, and what became of them.
#[derive(Debug, Default)]
pub(crate) struct Group {
    state: Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Settled ranges of numbers (first, last) and their outcome: usually one.
    settled: Vec<(u64, u64, Result<(), Error>)>,
    /// Callers waiting for a number not settled yet.
    wakers: Vec<Waker>,
}

impl Group {
    /// The outcome of message `seq`, once settled.
    pub(crate) fn poll(&self, seq: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut state = self.state.lock();
        if let Some((_, _, result)) = state
            .settled
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&seq))
        {
            return Poll::Ready(clone_result(result));
        }
        // One task usually awaits many messages of a group, one after another.
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Settles messages `first..=last`; the callers to wake are added to `wake`.
    fn settle(&self, first: u64, last: u64, result: Result<(), Error>, wake: &mut Vec<Waker>) {
        let mut state = self.state.lock();
        state.settled.push((first, last, result));
        wake.append(&mut state.wakers);
    }
}

/// A group whose numbers are not all settled.
#[derive(Debug)]
struct Waiting {
    first: u64,
    last: u64,
    /// How many numbers of `first..=last` are settled. Every number in it is
    /// settled once, whether a caller holds it or not (a request's, say).
    settled: u64,
    /// Takes new messages: no range of its lane came since it was made.
    open: bool,
    group: Arc<Group>,
}

/// The groups waiting, by lane.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    lanes: HashMap<u64, VecDeque<Waiting>>,
}

impl Outcomes {
    /// The group of message `seq` of `lane`, which waits its turn. The
    /// numbers of a lane given here only grow.
    pub(crate) fn join(&mut self, lane: u64, seq: u64) -> Arc<Group> {
        let groups = self.lanes.entry(lane).or_default();
        if let Some(open) = groups.back_mut().filter(|waiting| waiting.open) {
            open.last = seq;
            return open.group.clone();
        }
        let group = Arc::new(Group::default());
        groups.push_back(Waiting {
            first: seq,
            last: seq,
            settled: 0,
            open: true,
            group: group.clone(),
        });
        group
    }

    /// Messages `first..=last` of `lane` are settled ([`Output::Sent`]);
    /// the callers to wake are added to `wake`.
    ///
    /// [`Output::Sent`]: super::core::Output::Sent
    pub(crate) fn settle(
        &mut self,
        lane: u64,
        first: u64,
        last: u64,
        result: Result<(), Error>,
        wake: &mut Vec<Waker>,
    ) {
        let Some(groups) = self.lanes.get_mut(&lane) else {
            return;
        };
        // Messages numbered from now on go out after this range: a group of
        // their own keeps each group's ranges few.
        if let Some(back) = groups.back_mut() {
            back.open = false;
        }
        for waiting in groups.iter_mut() {
            let (from, to) = (first.max(waiting.first), last.min(waiting.last));
            if from > to {
                continue;
            }
            waiting.group.settle(from, to, clone_result(&result), wake);
            waiting.settled += to - from + 1;
        }
        groups.retain(|waiting| waiting.settled <= waiting.last - waiting.first);
        if groups.is_empty() {
            self.lanes.remove(&lane);
        }
    }

    /// Groups waiting, over every lane (for memory checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lanes.values().map(VecDeque::len).sum()
    }
}

impl Drop for Outcomes {
    /// The node is gone: what was never settled will not be.
    fn drop(&mut self) {
        let mut wake = Vec::new();
        for waiting in self.lanes.values().flatten() {
            waiting
                .group
                .settle(waiting.first, waiting.last, Err(Error::Closed), &mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn outcome(group: &Group, seq: u64) -> Option<Result<(), String>> {
        let mut cx = Context::from_waker(Waker::noop());
        match group.poll(seq, &mut cx) {
            Poll::Ready(result) => Some(result.map_err(|e| e.to_string())),
            Poll::Pending => None,
        }
    }

    #[test]
    fn each_message_reads_the_range_that_holds_it() {
        let mut outcomes = Outcomes::default();
        let mut wake = Vec::new();
        let a = outcomes.join(1, 2);
        let b = outcomes.join(1, 4);
        assert!(Arc::ptr_eq(&a, &b), "posted behind the same frame");
        assert_eq!(outcome(&a, 2), None);
        // Number 1 was the frame before them; 3 is someone else's request.
        outcomes.settle(1, 1, 1, Ok(()), &mut wake);
        let c = outcomes.join(1, 5);
        assert!(!Arc::ptr_eq(&a, &c), "a range came: a new group");
        // 2 expired, 3 and 4 went, 5 failed with its frame.
        outcomes.settle(1, 2, 2, Err(Error::Closed), &mut wake);
        assert_eq!(outcomes.len(), 2);
        outcomes.settle(1, 3, 4, Ok(()), &mut wake);
        assert_eq!(outcomes.len(), 1, "the first group is settled");
        assert_eq!(outcome(&a, 2), Some(Err(Error::Closed.to_string())));
        assert_eq!(outcome(&a, 4), Some(Ok(())));
        assert_eq!(outcome(&c, 5), None);
        outcomes.settle(1, 5, 5, Err(Error::NodeDead(2)), &mut wake);
        assert_eq!(outcome(&c, 5), Some(Err(Error::NodeDead(2).to_string())));
        assert_eq!(outcomes.len(), 0);
        assert!(outcomes.lanes.is_empty());
    }

    #[test]
    fn a_waiting_caller_is_woken_once_and_the_rest_fail_when_the_node_goes() {
        let mut outcomes = Outcomes::default();
        let group = outcomes.join(7, 1);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(group.poll(1, &mut cx).is_pending());
        assert!(group.poll(1, &mut cx).is_pending());
        assert_eq!(group.state.lock().wakers.len(), 1);
        let other = outcomes.join(8, 1);
        let mut wake = Vec::new();
        outcomes.settle(7, 1, 1, Ok(()), &mut wake);
        assert_eq!(wake.len(), 1);
        drop(outcomes);
        assert_eq!(outcome(&other, 1), Some(Err(Error::Closed.to_string())));
    }
}
