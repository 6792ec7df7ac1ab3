//! The sending side: openraft's network factory and per-target client, over
//! `Coordinator::request`.

use crate::wire::{self, Rpc};
use coordinator_core::{Coordinator, Error, NodeId};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftTypeConfig};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// How the network sends; the defaults suit every carrier.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest piece of snapshot data sent in one message. A snapshot chunk
    /// that openraft hands over is cut into pieces of this size, so that a
    /// heartbeat sent meanwhile waits behind at most one piece, and a chunk
    /// larger than the carrier's `maxMessageSize` still goes through.
    pub snapshot_piece: usize,
    /// First wait after a target was unreachable; it doubles, with jitter,
    /// up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            snapshot_piece: 256 * 1024,
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
enum Failure {
    /// The carrier refused the message as too large.
    TooLarge { size: usize, max: usize },
    /// No reply in time.
    Timeout(Timeout<NodeId>),
    /// Dead, gone, unknown, closed, a carrier down, or a node that refused
    /// the message: wait before trying again.
    Unreachable(Unreachable),
    /// A request that does not encode, or a reply that does not decode.
    Codec(NetworkError),
}

impl Failure {
    /// In openraft's terms; a message too large for the carrier is
    /// `Unreachable` here (the callers that can split it do so first).
    fn into_rpc<N: openraft::Node, E: std::error::Error>(self) -> RPCError<NodeId, N, E> {
        match self {
            Failure::TooLarge { size, max } => {
                RPCError::Unreachable(Unreachable::new(&Error::TooLarge { size, max }))
            }
            Failure::Timeout(timeout) => RPCError::Timeout(timeout),
            Failure::Unreachable(unreachable) => RPCError::Unreachable(unreachable),
            Failure::Codec(error) => RPCError::Network(error),
        }
    }
}

type RpcResult<C, T, E> = Result<T, RPCError<NodeId, <C as RaftTypeConfig>::Node, E>>;

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
    ) -> Result<Result<T, E>, Failure>
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

    fn failure(&self, error: Error, rpc: Rpc, timeout: Duration) -> Failure {
        match error {
            Error::TooLarge { size, max } => Failure::TooLarge { size, max },
            Error::Timeout { .. } => Failure::Timeout(Timeout {
                action: match rpc {
                    Rpc::AppendEntries => RPCTypes::AppendEntries,
                    Rpc::Vote => RPCTypes::Vote,
                    Rpc::InstallSnapshot => RPCTypes::InstallSnapshot,
                },
                id: self.coordinator.node_id(),
                target: self.target,
                timeout,
            }),
            error => Failure::Unreachable(Unreachable::new(&error)),
        }
    }

    /// The target's answer, or the failure, as openraft wants it.
    // The error is openraft's own type, as its network methods return it.
    #[allow(clippy::result_large_err)]
    fn settle<T, E: std::error::Error>(
        &self,
        outcome: Result<Result<T, E>, Failure>,
    ) -> RpcResult<C, T, E> {
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(RPCError::RemoteError(RemoteError::new(self.target, error))),
            Err(failure) => Err(failure.into_rpc()),
        }
    }
}

impl<C> RaftNetwork<C> for Client<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> RpcResult<C, AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let entries = rpc.entries.len() as u64;
        // openraft 0.9 asks an RPC to give up at `soft_ttl`; at `hard_ttl`
        // it drops the future itself.
        match self.call(Rpc::AppendEntries, &rpc, option.soft_ttl()).await {
            Err(Failure::TooLarge { size, max }) if entries > 1 => {
                // As many entries as fit, on average, with room to spare.
                let hint =
                    (entries * max as u64 * 9 / 10 / size.max(1) as u64).clamp(1, entries - 1);
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(hint),
                ))
            }
            Err(Failure::TooLarge { size, max }) => {
                // One entry larger than the carrier takes: nothing here can
                // split it. Say so loudly; openraft retries after a backoff.
                tracing::error!(
                    target = self.target,
                    error = %Error::TooLarge { size, max },
                    "a Raft log entry does not fit in one message: raise maxMessageSize"
                );
                self.settle(Err(Failure::TooLarge { size, max }))
            }
            outcome => self.settle(outcome),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> RpcResult<C, InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>
    {
        let InstallSnapshotRequest {
            vote,
            meta,
            offset,
            data,
            done,
        } = rpc;
        let mut piece = self.shared.options.snapshot_piece.max(1);
        let mut sent = 0usize;
        // The pieces of one chunk share the chunk's time, not each its own.
        let ttl = option.soft_ttl();
        let deadline = tokio::time::Instant::now() + ttl;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return self.settle(Err(self.failure(
                    Error::Timeout {
                        node: self.target,
                        timeout: ttl,
                    },
                    Rpc::InstallSnapshot,
                    ttl,
                )));
            }
            let end = (sent + piece).min(data.len());
            let last = end == data.len();
            let request = InstallSnapshotRequest::<C> {
                vote,
                meta: meta.clone(),
                offset: offset + sent as u64,
                data: data[sent..end].to_vec(),
                done: done && last,
            };
            let outcome = self
                .call::<InstallSnapshotResponse<NodeId>, _>(Rpc::InstallSnapshot, &request, left)
                .await;
            match outcome {
                // The last piece, or a target that has moved on to a newer vote.
                Ok(Ok(response)) if last || response.vote != vote => return Ok(response),
                Ok(Ok(_)) => sent = end,
                Err(Failure::TooLarge { size, max }) if piece > 1024 => {
                    // Smaller pieces, with room for the envelope around them.
                    let overhead = size.saturating_sub(end - sent);
                    piece = max.saturating_sub(overhead + 64).clamp(1024, piece / 2);
                    tracing::debug!(target = self.target, piece, "smaller snapshot pieces");
                }
                outcome => return self.settle(outcome),
            }
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<C, VoteResponse<NodeId>, RaftError<NodeId>> {
        let outcome = self.call(Rpc::Vote, &rpc, option.soft_ttl()).await;
        self.settle(outcome)
    }

    fn backoff(&self) -> Backoff {
        let options = &self.shared.options;
        Backoff::new(Jittered {
            attempt: 0,
            base: options.backoff_min,
            max: options.backoff_max,
        })
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
