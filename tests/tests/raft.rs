//! openraft over every carrier: three nodes of the `raft-kv` example elect a
//! leader, commit, fail over and catch up. Test paths: `raft::<carrier>::<test>`.

use coordinator_core::testing::LinkFaults;
use std::time::Duration;
use tests::harness::{EngineHarness, MemoryConnector, Timing};

/// Memory with loss, duplication and re-ordering on every link.
async fn lossy_memory() -> EngineHarness<MemoryConnector> {
    EngineHarness::new(MemoryConnector::new(), Timing::default()).with_background_faults(
        LinkFaults {
            drop: 0.05,
            duplicate: 0.1,
            reorder: 0.1,
            delay: Duration::from_millis(2),
        },
    )
}

mod raft {
    tests::raft_suite!(memory, tests::harness::memory);
    tests::raft_suite!(memory_lossy, crate::lossy_memory);
    tests::raft_suite!(native, tests::harness::native);
    tests::raft_suite!(nats, tests::harness::nats);
    tests::raft_suite!(redis, tests::harness::redis);
    tests::raft_suite!(redis_cluster_resp2, tests::harness::redis_cluster_resp2);
    tests::raft_suite!(redis_cluster_resp3, tests::harness::redis_cluster_resp3);
    tests::raft_suite!(kafka, tests::harness::kafka);
    tests::raft_suite!(zenoh_peers, tests::harness::zenoh_peers);
    tests::raft_suite!(zenoh_router, tests::harness::zenoh_router);
}

/// What openraft gets back from the network in each kind of failure, and
/// how the network cuts what does not fit.
mod network {
    use bytes::Bytes;
    use coordinator_core::testing::MemoryNetwork;
    use coordinator_core::{Coordinator, Error, Node, Settings};
    use coordinator_openraft::wire::{self, Request, Rpc};
    use coordinator_openraft::{Network, Options, RaftServer};
    use openraft::error::{RPCError, RaftError};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    };
    use openraft::{CommittedLeaderId, EmptyNode, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
    use raft_kv::{Command, KvConfig, Storage};
    use std::sync::Arc;
    use std::time::Duration;
    use tests::wait::{converge, within};

    const LIMIT: Duration = Duration::from_secs(10);

    async fn nodes(
        ids: &[u64],
        max_message_size: usize,
    ) -> (Arc<MemoryNetwork>, Vec<Arc<dyn Coordinator>>) {
        let network = MemoryNetwork::new();
        let mut nodes: Vec<Arc<dyn Coordinator>> = Vec::new();
        for &id in ids {
            let mut settings = Settings::new(id).cluster_key("raft-network-test").timing(
                Duration::from_millis(50),
                Duration::from_millis(250),
                Duration::from_millis(500),
            );
            settings.max_message_size = max_message_size;
            let node: Node = network.start(settings).expect("node starts");
            nodes.push(Arc::new(node));
        }
        converge(&nodes, LIMIT).await;
        (network, nodes)
    }

    fn vote() -> VoteRequest<u64> {
        VoteRequest::new(Vote::new(1, 1), None)
    }

    /// The last chunk of snapshot "s-1", at `offset`, under a committed vote of node 1.
    fn last_chunk(offset: u64, data: Vec<u8>) -> InstallSnapshotRequest<KvConfig> {
        InstallSnapshotRequest {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "s-1".into(),
            },
            offset,
            data,
            done: true,
        }
    }

    fn option(ms: u64) -> RPCOption {
        RPCOption::new(Duration::from_millis(ms))
    }

    fn entries(count: u64, size: usize) -> Vec<Entry<KvConfig>> {
        (1..=count)
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Command::Set {
                    key: format!("k{index}"),
                    value: "x".repeat(size),
                }),
            })
            .collect()
    }

    /// A Raft for the node of `coordinator` (not initialized).
    async fn raft_on(coordinator: &Arc<dyn Coordinator>) -> openraft::Raft<KvConfig> {
        let storage = Storage::default();
        openraft::Raft::new(
            coordinator.node_id(),
            raft_kv::raft_config(),
            Network::new(coordinator.clone()),
            storage.log,
            storage.state,
        )
        .await
        .unwrap()
    }

    async fn client(
        from: &Arc<dyn Coordinator>,
        to: u64,
        options: Options,
    ) -> coordinator_openraft::Client<KvConfig> {
        let mut factory = Network::<KvConfig>::with_options(from.clone(), options);
        factory.new_client(to, &EmptyNode {}).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_node_is_unreachable_so_openraft_backs_off() {
        let (_network, nodes) = nodes(&[1], 1 << 20).await;
        let mut client = client(&nodes[0], 9, Options::default()).await;
        let result = client.vote(vote(), option(500)).await;
        assert!(
            matches!(result, Err(RPCError::Unreachable(_))),
            "got {result:?}"
        );
        let waits: Vec<_> = client.backoff().take(6).collect();
        assert!(waits[0] <= Duration::from_millis(50) && waits[5] >= Duration::from_millis(500));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_node_times_out() {
        let (_network, nodes) = nodes(&[1, 2], 1 << 20).await;
        // Node 2 is alive but nobody serves Raft there: nothing answers.
        let _inbox = nodes[1].inbox().unwrap();
        let mut client = client(&nodes[0], 2, Options::default()).await;
        let started = std::time::Instant::now();
        let result = client.vote(vote(), option(200)).await;
        // openraft asks to give up at the soft TTL, before it drops the call
        // at the hard one.
        let soft = option(200).soft_ttl();
        assert!(soft < Duration::from_millis(200));
        match result {
            Err(RPCError::Timeout(timeout)) => {
                assert_eq!((timeout.id, timeout.target), (1, 2));
                assert_eq!(timeout.timeout, soft);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pieces_of_a_snapshot_chunk_share_its_deadline() {
        let (_network, nodes) = nodes(&[1, 2], 1 << 20).await;
        // Node 2 answers each piece after 100 ms.
        let mut inbox = nodes[1].inbox().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = inbox.recv().await {
                let Ok(Request::InstallSnapshot(piece)) =
                    wire::decode_request::<KvConfig>(&incoming.payload)
                else {
                    continue;
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
                let reply: Result<InstallSnapshotResponse<u64>, RaftError<u64>> =
                    Ok(InstallSnapshotResponse { vote: piece.vote });
                let _ = incoming.reply(wire::encode_reply(&reply).unwrap()).await;
            }
        });
        let options = Options {
            snapshot_piece: 1024,
            ..Options::default()
        };
        let mut client = client(&nodes[0], 2, options).await;
        let chunk = last_chunk(0, vec![7; 10 * 1024]);
        // Ten pieces of 100 ms each do not fit in one chunk's 400 ms.
        let started = std::time::Instant::now();
        let result = client.install_snapshot(chunk, option(400)).await;
        assert!(
            matches!(result, Err(RPCError::Timeout(_))),
            "got {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_remote_rafts_error_arrives_typed() {
        let (_network, nodes) = nodes(&[1, 2], 1 << 20).await;
        let raft = raft_on(&nodes[1]).await;
        let _server = RaftServer::start(raft.clone(), nodes[1].inbox().unwrap());
        // A Raft that has stopped answers every RPC with a fatal error.
        raft.shutdown().await.unwrap();
        let mut client = client(&nodes[0], 2, Options::default()).await;
        match client.vote(vote(), option(1000)).await {
            Err(RPCError::RemoteError(remote)) => {
                assert_eq!(remote.target, 2);
                assert!(
                    matches!(remote.source, RaftError::Fatal(_)),
                    "got {:?}",
                    remote.source
                );
            }
            other => panic!("expected the remote Raft's error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_too_large_for_the_carrier_asks_for_fewer_entries() {
        let (_network, nodes) = nodes(&[1, 2], 16 * 1024).await;
        let _inbox = nodes[1].inbox().unwrap();
        let mut client = client(&nodes[0], 2, Options::default()).await;
        let append = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: entries(100, 1000),
            leader_commit: None,
        };
        match client.append_entries(append, option(500)).await {
            Err(RPCError::PayloadTooLarge(too_large)) => {
                let hint = too_large.entries_hint();
                // About 15 entries of 1 KB fit in 16 KiB.
                assert!((5..=16).contains(&hint), "hint {hint}");
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // One entry that cannot fit is not retried at once in a loop.
        let append = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: entries(1, 64 * 1024),
            leader_commit: None,
        };
        let result = client.append_entries(append, option(500)).await;
        assert!(
            matches!(result, Err(RPCError::Unreachable(_))),
            "got {result:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_chunk_goes_in_pieces_that_fit() {
        let (_network, nodes) = nodes(&[1, 2], 16 * 1024).await;
        // Node 2 records the pieces as a Raft would receive them.
        let mut inbox = nodes[1].inbox().unwrap();
        let receiver = tokio::spawn(async move {
            let mut pieces = Vec::new();
            while let Some(incoming) = inbox.recv().await {
                let Ok(Request::InstallSnapshot(piece)) =
                    wire::decode_request::<KvConfig>(&incoming.payload)
                else {
                    panic!("not a snapshot piece");
                };
                let done = piece.done;
                let reply: Result<InstallSnapshotResponse<u64>, RaftError<u64>> =
                    Ok(InstallSnapshotResponse { vote: piece.vote });
                incoming
                    .reply(wire::encode_reply(&reply).unwrap())
                    .await
                    .unwrap();
                pieces.push((piece.offset, piece.data.len(), piece.data, done));
                if done {
                    return pieces;
                }
            }
            panic!("inbox closed");
        });
        // Pieces of 64 KiB asked for, but the carrier takes 16 KiB.
        let options = Options {
            snapshot_piece: 64 * 1024,
            ..Options::default()
        };
        let mut client = client(&nodes[0], 2, options).await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let chunk = last_chunk(1000, data.clone());
        let response = client.install_snapshot(chunk, option(1000)).await.unwrap();
        assert_eq!(response.vote, Vote::new_committed(1, 1));
        let pieces = within(LIMIT, "the pieces", receiver).await.unwrap();
        assert!(pieces.len() >= 7, "{} pieces", pieces.len());
        let mut offset = 1000;
        let mut joined = Vec::new();
        for (i, (at, len, bytes, done)) in pieces.iter().enumerate() {
            assert_eq!(*at, offset, "piece {i} out of place");
            assert!(*len <= 16 * 1024);
            assert_eq!(*done, i == pieces.len() - 1, "piece {i}");
            offset += *len as u64;
            joined.extend_from_slice(bytes);
        }
        assert_eq!(joined, data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_not_a_raft_request_is_refused_by_name() {
        let (_network, nodes) = nodes(&[1, 2], 1 << 20).await;
        let raft = raft_on(&nodes[1]).await;
        let _server = RaftServer::start(raft, nodes[1].inbox().unwrap());
        let ask = |payload: Bytes| {
            let node = nodes[0].clone();
            async move { node.request(2, payload, Duration::from_secs(2)).await }
        };
        let refused = |result: Result<Bytes, Error>| match result {
            Err(Error::Remote { node: 2, message }) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(ask(Bytes::from_static(b"hello")).await).contains("not a Raft message"));
        let mut future = wire::encode_request(Rpc::Vote, &vote()).unwrap().to_vec();
        future[1] = 9;
        assert!(refused(ask(future.into()).await).contains("layout version 9"));
        let mut garbage = wire::encode_request(Rpc::Vote, &vote()).unwrap().to_vec();
        garbage.truncate(4);
        assert!(refused(ask(garbage.into()).await).contains("malformed Raft Vote request"));
        // The server still serves.
        let mut client = client(&nodes[0], 2, Options::default()).await;
        let response = client.vote(vote(), option(1000)).await.unwrap();
        // A fresh node grants its first vote to a candidate as up to date as it is.
        assert!(response.vote_granted, "{response:?}");
    }

    /// A log store whose votes wait until the test opens its gate: a Raft
    /// whose requests are slow to handle.
    #[derive(Clone)]
    struct GatedLog {
        log: raft_kv::log_store::LogStore,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl openraft::storage::RaftLogReader<KvConfig> for GatedLog {
        async fn try_get_log_entries<
            RB: std::ops::RangeBounds<u64> + Clone + std::fmt::Debug + Send,
        >(
            &mut self,
            range: RB,
        ) -> Result<Vec<Entry<KvConfig>>, openraft::StorageError<u64>> {
            self.log.try_get_log_entries(range).await
        }
    }

    impl openraft::storage::RaftLogStorage<KvConfig> for GatedLog {
        type LogReader = Self;

        async fn get_log_state(
            &mut self,
        ) -> Result<openraft::storage::LogState<KvConfig>, openraft::StorageError<u64>> {
            self.log.get_log_state().await
        }

        async fn get_log_reader(&mut self) -> Self::LogReader {
            self.clone()
        }

        async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), openraft::StorageError<u64>> {
            // Waits for the gate, and leaves it as it found it.
            drop(self.gate.acquire().await);
            self.log.save_vote(vote).await
        }

        async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, openraft::StorageError<u64>> {
            self.log.read_vote().await
        }

        async fn append<I>(
            &mut self,
            entries: I,
            callback: openraft::storage::LogFlushed<KvConfig>,
        ) -> Result<(), openraft::StorageError<u64>>
        where
            I: IntoIterator<Item = Entry<KvConfig>> + Send,
            I::IntoIter: Send,
        {
            self.log.append(entries, callback).await
        }

        async fn truncate(
            &mut self,
            log_id: LogId<u64>,
        ) -> Result<(), openraft::StorageError<u64>> {
            self.log.truncate(log_id).await
        }

        async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), openraft::StorageError<u64>> {
            self.log.purge(log_id).await
        }
    }

    /// A server handles at most its bound of requests at once; beyond it, it
    /// leaves them in the inbox, whose overflow refuses them at once, instead
    /// of taking on every request that arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_handles_at_most_its_bound_of_requests_at_once() {
        const BOUND: usize = 2;
        const INBOX: usize = 3;
        const REQUESTS: usize = 12;
        let network = MemoryNetwork::new();
        let timing = |settings: Settings| {
            settings.cluster_key("raft-network-test").timing(
                Duration::from_millis(50),
                Duration::from_millis(250),
                Duration::from_millis(500),
            )
        };
        let nodes: Vec<Arc<dyn Coordinator>> = vec![
            Arc::new(network.start(timing(Settings::new(1))).unwrap()),
            Arc::new(
                network
                    .start(timing(Settings::new(2)).queue_capacity(INBOX))
                    .unwrap(),
            ),
        ];
        converge(&nodes, LIMIT).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let storage = Storage::default();
        let log = GatedLog {
            log: storage.log,
            gate: gate.clone(),
        };
        let raft = openraft::Raft::new(
            2,
            raft_kv::raft_config(),
            Network::new(nodes[1].clone()),
            log,
            storage.state,
        )
        .await
        .unwrap();
        let _server = RaftServer::serve(raft, nodes[1].inbox().unwrap(), None, BOUND);
        let vote = wire::encode_request(Rpc::Vote, &vote()).unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..REQUESTS {
            let (node, vote) = (nodes[0].clone(), vote.clone());
            calls.spawn(async move { node.request(2, vote, Duration::from_secs(20)).await });
            // Time for the server to take what it takes from the inbox.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // With the first vote stuck in the store: BOUND requests handled and
        // INBOX waiting in the inbox (the server reads no more until one is
        // done); the others are refused at once.
        let taken = BOUND + INBOX;
        let mut refused = 0;
        within(
            LIMIT,
            "the requests beyond the bound to be refused",
            async {
                while refused < REQUESTS - taken {
                    match calls.join_next().await.expect("calls left").unwrap() {
                        Err(Error::Remote { node: 2, .. }) => refused += 1,
                        other => panic!("a request was answered with the store shut: {other:?}"),
                    }
                }
            },
        )
        .await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), calls.join_next())
                .await
                .is_err(),
            "more than {taken} requests were taken while the store was shut"
        );
        gate.add_permits(1);
        within(LIMIT, "the requests taken to be answered", async {
            while let Some(call) = calls.join_next().await {
                let reply = call.unwrap().expect("a vote answered");
                let vote = wire::decode_reply::<Result<VoteResponse<u64>, RaftError<u64>>>(&reply);
                assert!(matches!(vote, Ok(Ok(_))), "{vote:?}");
            }
        })
        .await;
    }
}
