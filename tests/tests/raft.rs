//! openraft over every carrier: three nodes of the `raft-kv` example elect a
//! leader, commit, fail over and catch up. Test paths: `raft::<carrier>::<test>`.

use coordinator_core::LinkFaults;
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
