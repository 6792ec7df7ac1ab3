//! The Raft rows of `coordinator bench`: the `raft-kv` example store on three
//! nodes of the measured carrier, beside the same store on openraft with an
//! in-process router (direct calls between the three `Raft`s, nothing
//! encoded): the most the library could reach.

use super::bench::{Clock, Row, histogram, latency_row, time_each};
use anyhow::Context;
use coordinator::{Coordinator, NodeId};
use futures_util::StreamExt;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::{EmptyNode, Raft};
use raft_kv::{Command, KvConfig, KvNode, KvRaft, Storage};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Writes in flight at once in the throughput run (openraft batches them).
const IN_FLIGHT: usize = 64;
const LIMIT: Duration = Duration::from_secs(120);

/// The Raft settings of both runs: `raft-kv`'s, without snapshots. Its
/// snapshots serialise the whole map, every 500 entries: over the writes of
/// a run they grew to a fifth to half of the CPU of both runs, and measured
/// the store rather than what carries its messages (the Raft tests keep them,
/// to cover InstallSnapshot).
fn bench_config() -> Arc<openraft::Config> {
    raft_kv::raft_config_with(openraft::SnapshotPolicy::Never)
}

/// Three `raft-kv` nodes over `nodes` (fresh coordinators, inboxes untaken).
pub(super) async fn rows(
    subject: &str,
    nodes: &[Arc<dyn Coordinator>],
    writes: u64,
    samples: u64,
    size: usize,
) -> anyhow::Result<Vec<Row>> {
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id()).collect();
    for node in nodes {
        tokio::time::timeout(
            Duration::from_secs(30),
            coordinator::wait_for_members(node.as_ref(), &ids),
        )
        .await
        .context("the Raft nodes did not see each other")?;
    }
    let mut kv = Vec::new();
    for node in nodes {
        kv.push(KvNode::start(node.clone(), bench_config(), Storage::default()).await?);
    }
    kv[0].initialize(&ids).await?;
    let leader = wait_leader(kv.iter().map(|n| n.raft())).await?;
    let raft = kv
        .iter()
        .find(|n| n.id() == leader)
        .expect("the leader is one of them")
        .raft()
        .clone();
    let subject = format!("{subject} raft");
    let rows = measure(&subject, &raft, writes, samples, size).await;
    for node in kv {
        node.stop().await;
    }
    rows
}

/// The same store on openraft with an in-process router.
pub(super) async fn router_rows(
    writes: u64,
    samples: u64,
    size: usize,
) -> anyhow::Result<Vec<Row>> {
    let router = Router::default();
    let mut rafts = Vec::new();
    for id in [1, 2, 3] {
        let storage = Storage::default();
        let raft = Raft::new(
            id,
            bench_config(),
            router.clone(),
            storage.log,
            storage.state,
        )
        .await?;
        router
            .rafts
            .write()
            .expect("not poisoned")
            .insert(id, raft.clone());
        rafts.push(raft);
    }
    rafts[0]
        .initialize(
            [1, 2, 3]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
        )
        .await?;
    let leader = wait_leader(rafts.iter()).await?;
    let rows = measure(
        "openraft router",
        &rafts[(leader - 1) as usize],
        writes,
        samples,
        size,
    )
    .await;
    for raft in rafts {
        let _ = raft.shutdown().await;
    }
    rows
}

/// Waits (at most 30 s) until the nodes agree on a leader.
async fn wait_leader<'a>(rafts: impl IntoIterator<Item = &'a KvRaft>) -> anyhow::Result<NodeId> {
    tokio::time::timeout(Duration::from_secs(30), raft_kv::agreed_leader(rafts, None))
        .await
        .context("no leader within 30 s")?
        .context("a Raft node stopped")
}

fn command(key: u64, size: usize) -> Command {
    Command::Set {
        key: format!("key-{key}"),
        value: "v".repeat(size),
    }
}

/// Committed writes per second with `IN_FLIGHT` writers, then the commit
/// latency of `samples` writes one after another, through the leader.
async fn measure(
    subject: &str,
    leader: &KvRaft,
    writes: u64,
    samples: u64,
    size: usize,
) -> anyhow::Result<Vec<Row>> {
    // A leader just elected takes writes once a quorum has answered it
    // within its lease: the first write waits for that, unmeasured.
    tokio::time::timeout(
        LIMIT,
        raft_kv::write_within_lease(leader, command(u64::MAX, size)),
    )
    .await
    .context("the Raft leader took no write")??;
    let started = Clock::start();
    let mut running = tokio::task::JoinSet::new();
    let mut committed = 0;
    let run = async {
        for key in 0..writes {
            if running.len() >= IN_FLIGHT {
                committed += running.join_next().await.expect("one runs")??;
            }
            let raft = leader.clone();
            running.spawn(async move {
                raft.client_write(command(key, size))
                    .await
                    .map(|_| 1u64)
                    .map_err(anyhow::Error::from)
            });
        }
        while let Some(done) = running.join_next().await {
            committed += done??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(LIMIT, run)
        .await
        .context("the Raft throughput run took too long")??;
    let (elapsed, cpu) = started.elapsed();
    let throughput = Row::throughput(
        subject,
        "commit throughput",
        size,
        writes,
        committed,
        elapsed,
    )
    .with_cpu(cpu);
    let mut latency = histogram();
    let mut key = writes;
    time_each(samples, &mut latency, async || {
        key += 1;
        tokio::time::timeout(LIMIT, leader.client_write(command(key, size)))
            .await
            .context("a Raft write took too long")??;
        Ok(())
    })
    .await?;
    Ok(vec![
        throughput,
        latency_row(subject, "commit latency", size, &latency),
    ])
}

/// Calls the target `Raft` directly: appends go to its own stream of
/// appends (`Raft::stream_append`), pipelined as openraft does it.
#[derive(Clone, Default)]
struct Router {
    rafts: Arc<RwLock<HashMap<NodeId, KvRaft>>>,
}

struct RouterClient {
    target: NodeId,
    router: Router,
}

impl RaftNetworkFactory<KvConfig> for Router {
    type Network = RouterClient;

    async fn new_client(&mut self, target: NodeId, _node: &EmptyNode) -> RouterClient {
        RouterClient {
            target,
            router: self.clone(),
        }
    }
}

type RouterError = RPCError<KvConfig>;

impl RouterClient {
    fn raft(&self) -> Result<KvRaft, RouterError> {
        self.router
            .rafts
            .read()
            .expect("not poisoned")
            .get(&self.target)
            .cloned()
            .ok_or_else(|| {
                let error = std::io::Error::other(format!("no node {}", self.target));
                RPCError::Unreachable(Unreachable::new(&error))
            })
    }

    fn remote<E: std::error::Error + 'static>(&self, error: E) -> RouterError {
        RPCError::Unreachable(Unreachable::new(&RemoteError::<KvConfig, E>::new(
            self.target,
            error,
        )))
    }
}

impl RaftNetworkV2<KvConfig> for RouterClient {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<KvConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<KvConfig>, RouterError> {
        let raft = self.raft()?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<KvConfig>, RouterError>>, RouterError>,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<KvConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let raft = self.raft()?;
            let target = self.target;
            let results = raft.stream_append(input).map(move |result| {
                result.map_err(|fatal| {
                    RPCError::Unreachable(Unreachable::new(&RemoteError::<KvConfig, _>::new(
                        target, fatal,
                    )))
                })
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<KvConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<KvConfig>, RouterError> {
        let raft = self.raft()?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<KvConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<KvConfig>, RouterError> {
        let raft = self.raft()?;
        raft.pre_vote(rpc).await.map_err(|e| self.remote(e))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<KvConfig>,
        snapshot: SnapshotOf<KvConfig, Self::SnapshotData>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<KvConfig>, StreamingError<KvConfig>> {
        let raft = self
            .raft()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}
