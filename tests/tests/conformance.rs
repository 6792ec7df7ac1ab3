//! The conformance suite on every carrier, brokers started by the tests.
//! Test paths: `conformance::<carrier>::<test>`.

mod conformance {
    tests::conformance_suite!(memory, tests::harness::memory);
    tests::conformance_suite!(memory_faulty, tests::harness::memory_faulty);
    tests::conformance_suite!(native, tests::harness::native);
    tests::conformance_suite!(nats, tests::harness::nats);
    tests::conformance_suite!(redis, tests::harness::redis);
    tests::conformance_suite!(kafka, tests::harness::kafka);
    tests::conformance_suite!(zenoh_peers, tests::harness::zenoh_peers);
    tests::conformance_suite!(zenoh_router, tests::harness::zenoh_router);
    tests::conformance_suite!(redis_cluster_resp2, tests::harness::redis_cluster_resp2);
    tests::conformance_suite!(redis_cluster_resp3, tests::harness::redis_cluster_resp3);
    tests::conformance_suite!(redis_sentinel, tests::harness::redis_sentinel);
}
