//! The sending side: openraft's network factory and per-target client, over
//! `Coordinator::request`.

use crate::wire::{self, Rpc, SnapshotPiece};
use coordinator_core::{Coordinator, Error, NodeId};
use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use openraft::alias::{LogIdOf, SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftTypeConfig};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Cursor;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// How the network sends; the defaults suit every carrier.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest piece of snapshot data sent in one message. A snapshot is
    /// sent in pieces of this size, each answered before the next goes, so
    /// that a heartbeat sent meanwhile waits behind at most one piece, and a
    /// snapshot larger than the carrier's `maxMessageSize` still goes
    /// through.
    pub snapshot_piece: usize,
    /// AppendEntries under way to one target at once, at most: the next
    /// goes out before the answer to the previous one is in, so that a new
    /// entry does not wait a round trip behind the append that carries the
    /// previous entry's commit. 1 sends one at a time. The default, 2, is
    /// what that takes; more splits a busy leader's entries into more,
    /// smaller appends (fewer commits/s on the broker carriers, see
    /// BENCHMARKS.md).
    pub pipeline: usize,
    /// First wait after a target was unreachable; it doubles, with jitter,
    /// up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            snapshot_piece: 256 * 1024,
            pipeline: 2,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// openraft's network over a coordinator: give it to `Raft::new`. Raft node
/// ids are the coordinator's node ids; the `Node` value openraft keeps for a
/// member is not used for addressing.
pub struct Network<C> {
    coordinator: Arc<dyn Coordinator>,
    shared: Arc<Shared>,
    _config: PhantomData<fn() -> C>,
}

struct Shared {
    options: Options,
}

impl<C> Network<C> {
    pub fn new(coordinator: Arc<dyn Coordinator>) -> Self {
        Self::with_options(coordinator, Options::default())
    }

    pub fn with_options(coordinator: Arc<dyn Coordinator>, options: Options) -> Self {
        Self {
            coordinator,
            shared: Arc::new(Shared { options }),
            _config: PhantomData,
        }
    }
}

impl<C> RaftNetworkFactory<C> for Network<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    type Network = Client<C>;

    async fn new_client(&mut self, target: NodeId, _node: &C::Node) -> Client<C> {
        Client {
            coordinator: self.coordinator.clone(),
            shared: self.shared.clone(),
            target,
            _config: PhantomData,
        }
    }
}

/// Sends the RPCs of one Raft target.
pub struct Client<C> {
    coordinator: Arc<dyn Coordinator>,
    shared: Arc<Shared>,
    target: NodeId,
    _config: PhantomData<fn() -> C>,
}

/// Why a request got no answer from the target's Raft.
enum Failure<C: RaftTypeConfig> {
    /// The carrier refused the message as too large.
    TooLarge { size: usize, max: usize },
    /// No reply in time.
    Timeout(Timeout<C>),
    /// Dead, gone, unknown, closed, a carrier down, or a node that refused
    /// the message: wait before trying again.
    Unreachable(Unreachable<C>),
    /// A request that does not encode, or a reply that does not decode.
    Codec(NetworkError<C>),
}

impl<C: RaftTypeConfig> Failure<C> {
    /// In openraft's terms; a message too large for the carrier is
    /// `Unreachable` here (the callers that can split it do so first).
    fn into_rpc<E: std::error::Error>(self) -> RPCError<C, E> {
        match self {
            Failure::TooLarge { size, max } => {
                RPCError::Unreachable(Unreachable::new(&Error::TooLarge { size, max }))
            }
            Failure::Timeout(timeout) => RPCError::Timeout(timeout),
            Failure::Unreachable(unreachable) => RPCError::Unreachable(unreachable),
            Failure::Codec(error) => RPCError::Network(error),
        }
    }

    fn into_streaming(self) -> StreamingError<C> {
        match self {
            Failure::TooLarge { size, max } => {
                StreamingError::Unreachable(Unreachable::new(&Error::TooLarge { size, max }))
            }
            Failure::Timeout(timeout) => StreamingError::Timeout(timeout),
            Failure::Unreachable(unreachable) => StreamingError::Unreachable(unreachable),
            Failure::Codec(error) => StreamingError::Network(error),
        }
    }
}

type RpcResult<C, T> = Result<T, RPCError<C>>;

/// Appends with no entry that an append sent in a stream went instead of:
/// where they stood in the log, and how many.
type Stood<C> = (Option<LogIdOf<C>>, usize);

/// An append sent in a stream: its range, the appends it went instead of,
/// and the answer.
struct Sent<C: RaftTypeConfig> {
    prev: Option<LogIdOf<C>>,
    last: Option<LogIdOf<C>>,
    stands_for: Stood<C>,
    outcome: RpcResult<C, AppendEntriesResponse<C>>,
}

impl<C> Client<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    /// One request to the target; its reply decoded as the target's `Result`.
    async fn call<T, E>(
        &self,
        rpc: Rpc,
        request: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Result<T, E>, Failure<C>>
    where
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let payload = wire::encode_request(rpc, request)
            .map_err(|error| Failure::Codec(NetworkError::new(&error)))?;
        let reply = self
            .coordinator
            .request(self.target, payload, timeout)
            .await
            .map_err(|error| self.failure(error, rpc, timeout))?;
        wire::decode_reply::<Result<T, E>>(&reply).map_err(|error| {
            tracing::warn!(target = self.target, ?rpc, %error, "undecodable Raft reply");
            Failure::Codec(NetworkError::new(&error))
        })
    }

    fn failure(&self, error: Error, rpc: Rpc, timeout: Duration) -> Failure<C> {
        match error {
            Error::TooLarge { size, max } => Failure::TooLarge { size, max },
            Error::Timeout { .. } => Failure::Timeout(Timeout {
                action: match rpc {
                    Rpc::AppendEntries => RPCTypes::AppendEntries,
                    Rpc::Vote | Rpc::PreVote => RPCTypes::Vote,
                    Rpc::Snapshot => RPCTypes::InstallSnapshot,
                    Rpc::TransferLeader => RPCTypes::TransferLeader,
                },
                id: self.coordinator.node_id(),
                target: self.target,
                timeout,
            }),
            error => Failure::Unreachable(Unreachable::new(&error)),
        }
    }

    /// The target's answer, or the failure, as openraft wants it: an error
    /// of the target's Raft (it has stopped) is a remote error.
    fn settle<T>(&self, outcome: Result<Result<T, RaftError<C>>, Failure<C>>) -> RpcResult<C, T> {
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(RPCError::Unreachable(Unreachable::new(&RemoteError::<
                C,
                RaftError<C>,
            >::new(
                self.target,
                error,
            )))),
            Err(failure) => Err(failure.into_rpc()),
        }
    }

    /// One AppendEntries. One too large for the carrier goes as its first
    /// entries, as many as fit: the answer is then a partial success up to
    /// the last of them, and openraft sends the rest next.
    async fn append(
        &self,
        mut rpc: AppendEntriesRequest<C>,
        option: &RPCOption,
    ) -> RpcResult<C, AppendEntriesResponse<C>> {
        // openraft asks an RPC to give up at `soft_ttl`; at `hard_ttl` it
        // drops the future itself.
        let timeout = option.soft_ttl();
        let mut trimmed = false;
        loop {
            let outcome = self.call(Rpc::AppendEntries, &rpc, timeout).await;
            let entries = rpc.entries.len();
            match outcome {
                Err(Failure::TooLarge { size, max }) if entries > 1 => {
                    // As many entries as fit, on average, with room to spare.
                    let fit = (entries as u64 * max as u64 * 9 / 10 / size.max(1) as u64)
                        .clamp(1, entries as u64 - 1);
                    rpc.entries.truncate(fit as usize);
                    trimmed = true;
                }
                Err(Failure::TooLarge { size, max }) => {
                    // One entry larger than the carrier takes: nothing here
                    // can split it. Say so loudly; openraft retries after a
                    // backoff.
                    tracing::error!(
                        target = self.target,
                        error = %Error::TooLarge { size, max },
                        "a Raft log entry does not fit in one message: raise maxMessageSize"
                    );
                    return self.settle(Err(Failure::TooLarge { size, max }));
                }
                Ok(Ok(AppendEntriesResponse::Success)) if trimmed => {
                    let last = rpc.entries.last().map(|entry| entry.log_id());
                    return Ok(AppendEntriesResponse::PartialSuccess(last));
                }
                outcome => return self.settle(outcome),
            }
        }
    }
}

impl<C> RaftNetworkV2<C> for Client<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> RpcResult<C, AppendEntriesResponse<C>> {
        self.append(rpc, &option).await
    }

    /// Sends the appends as they come, up to [`Options::pipeline`] under way
    /// at once, and yields their answers in order, one per request. The
    /// stream ends after an answer that is not a full success (a conflict, a
    /// higher vote, a partial success, a failure): openraft then starts a new
    /// one from where the target is.
    ///
    /// An append that carries no entry (only a new commit index) while
    /// another is under way waits: if openraft hands over another append
    /// meanwhile, that one goes instead (it carries a newer commit index and
    /// continues the log where the waiting one stands), and its answer is
    /// also the waiting one's (the target matched the log up to where the
    /// waiting one stood, or conflicts there). If not, it goes as soon as
    /// nothing is under way. Under load this spares a message and its reply
    /// for most commit-only appends; one write at a time sends exactly as
    /// before.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<C, BoxStream<'s, RpcResult<C, StreamAppendResult<C>>>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
    {
        let client: &'s Client<C> = self;
        let depth = client.shared.options.pipeline.max(1);
        let mut input = Some(input);
        let mut under_way = FuturesOrdered::new();
        // An append with no entry waiting, and how many earlier ones it
        // stands for.
        let mut waiting: Option<(AppendEntriesRequest<C>, usize)> = None;
        let mut answers = VecDeque::new();
        let mut ended = false;
        let send = move |request: AppendEntriesRequest<C>, stands_for: Stood<C>| {
            let prev = request.prev_log_id.clone();
            let last = request
                .entries
                .last()
                .map(|entry| entry.log_id())
                .or_else(|| prev.clone());
            let option = option.clone();
            Box::pin(async move {
                Sent {
                    prev,
                    last,
                    stands_for,
                    outcome: client.append(request, &option).await,
                }
            }) as BoxFuture<'s, Sent<C>>
        };
        let stream = futures_util::stream::poll_fn(move |cx| {
            loop {
                if let Some(answer) = answers.pop_front() {
                    return Poll::Ready(Some(answer));
                }
                if ended {
                    return Poll::Ready(None);
                }
                // Take what openraft has to send, while there is room.
                while under_way.len() < depth {
                    let Some(requests) = input.as_mut() else {
                        break;
                    };
                    match requests.poll_next_unpin(cx) {
                        Poll::Ready(Some(request)) => {
                            let earlier = waiting.take();
                            if request.entries.is_empty() && !under_way.is_empty() {
                                let count = earlier.map_or(0, |(_, count)| count + 1);
                                waiting = Some((request, count));
                                continue;
                            }
                            let stands_for = earlier
                                .map(|(held, count)| (held.prev_log_id, count + 1))
                                .unwrap_or_default();
                            under_way.push_back(send(request, stands_for));
                        }
                        Poll::Ready(None) => input = None,
                        Poll::Pending => break,
                    }
                }
                if under_way.is_empty()
                    && let Some((request, count)) = waiting.take()
                {
                    let stands_for = (request.prev_log_id.clone(), count);
                    under_way.push_back(send(request, stands_for));
                }
                match under_way.poll_next_unpin(cx) {
                    Poll::Ready(Some(sent)) => {
                        let Sent {
                            prev,
                            last,
                            stands_for: (at, count),
                            outcome,
                        } = sent;
                        let response = match outcome {
                            Ok(response) => response,
                            Err(error) => {
                                ended = true;
                                answers.push_back(Err(error));
                                continue;
                            }
                        };
                        // The answers of the appends this one went instead of.
                        for _ in 0..count {
                            let result =
                                response.clone().into_stream_result(at.clone(), at.clone());
                            ended = result.is_err();
                            answers.push_back(Ok(result));
                            if ended {
                                break;
                            }
                        }
                        if !ended {
                            let partial = matches!(
                                &response,
                                AppendEntriesResponse::PartialSuccess(matching) if *matching != last
                            );
                            let result = response.into_stream_result(prev, last);
                            ended = partial || result.is_err();
                            answers.push_back(Ok(result));
                        }
                    }
                    Poll::Ready(None) if input.is_none() => return Poll::Ready(None),
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        });
        Box::pin(async move { Ok(Box::pin(stream) as BoxStream<'s, _>) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> RpcResult<C, VoteResponse<C>> {
        let outcome = self.call(Rpc::Vote, &rpc, option.soft_ttl()).await;
        self.settle(outcome)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> RpcResult<C, VoteResponse<C>> {
        let outcome = self.call(Rpc::PreVote, &rpc, option.soft_ttl()).await;
        self.settle(outcome)
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> RpcResult<C, TransferLeaderResponse<C>> {
        let outcome = self
            .call::<_, Fatal<C>>(Rpc::TransferLeader, &request, option.soft_ttl())
            .await
            .map(|result| result.map_err(RaftError::Fatal));
        self.settle(outcome)
    }

    /// Sends the snapshot in pieces of at most [`Options::snapshot_piece`]
    /// bytes, each answered before the next goes; smaller ones if the
    /// carrier refuses a piece as too large.
    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let mut cancel = pin!(cancel);
        let data = snapshot.snapshot.into_inner();
        let mut piece = self.shared.options.snapshot_piece.max(1);
        let mut sent = 0usize;
        let timeout = option.soft_ttl();
        loop {
            let end = (sent + piece).min(data.len());
            let done = end == data.len();
            let request = SnapshotPiece {
                vote: &vote,
                meta: &snapshot.meta,
                offset: sent as u64,
                data: &data[sent..end],
                done,
            };
            let outcome = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                outcome = self.call::<Option<SnapshotResponse<C>>, Fatal<C>>(
                    Rpc::Snapshot,
                    &request,
                    timeout,
                ) => outcome,
            };
            match outcome {
                // The last piece, or a target that has moved on to a newer vote.
                Ok(Ok(Some(response))) => return Ok(response),
                Ok(Ok(None)) if !done => sent = end,
                Ok(Ok(None)) => {
                    return Err(StreamingError::Network(NetworkError::from_string(
                        "the target did not answer the snapshot's last piece",
                    )));
                }
                Ok(Err(fatal)) => {
                    return Err(StreamingError::Unreachable(Unreachable::new(
                        &RemoteError::<C, Fatal<C>>::new(self.target, fatal),
                    )));
                }
                Err(Failure::TooLarge { size, max }) if piece > 1024 => {
                    // Smaller pieces, with room for the envelope around them.
                    let overhead = size.saturating_sub(end - sent);
                    piece = max.saturating_sub(overhead + 64).clamp(1024, piece / 2);
                    tracing::debug!(target = self.target, piece, "smaller snapshot pieces");
                }
                Err(failure) => return Err(failure.into_streaming()),
            }
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        let options = &self.shared.options;
        Some(Backoff::new(Jittered {
            attempt: 0,
            base: options.backoff_min,
            max: options.backoff_max,
        }))
    }
}

/// The carriers' truncated exponential backoff with jitter
/// ([`coordinator_core::routes::backoff`]), as the iterator openraft takes.
struct Jittered {
    attempt: u32,
    base: Duration,
    max: Duration,
}

impl Iterator for Jittered {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = coordinator_core::routes::backoff(self.attempt, self.base, self.max);
        self.attempt = self.attempt.saturating_add(1);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let waits: Vec<_> = Jittered {
            attempt: 0,
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
        .take(10)
        .collect();
        let mut step = Duration::from_millis(50);
        for wait in &waits {
            assert!(
                *wait >= step / 2 && *wait <= step,
                "{wait:?} for step {step:?}"
            );
            step = (step * 2).min(Duration::from_secs(1));
        }
        assert!(waits[9] >= Duration::from_millis(500));
    }
}
