//! The test brokers themselves: what the carrier tests rely on.

use std::time::{Duration, Instant};
use tests::brokers::{Broker, Kind, RedisCluster};

#[test]
fn a_broker_killed_and_restarted_answers_again_on_the_same_port() {
    for kind in [Kind::Nats, Kind::Redis] {
        let mut broker = Broker::start(kind);
        let port = broker.port();
        broker.kill();
        assert!(
            std::net::TcpStream::connect(broker.addr()).is_err(),
            "{kind:?} still answers after a kill"
        );
        broker.restart();
        assert_eq!(broker.port(), port);
        assert!(std::net::TcpStream::connect(broker.addr()).is_ok());
    }
}

#[test]
fn a_redis_cluster_forms_and_a_replica_takes_over_a_killed_master() {
    let mut cluster = RedisCluster::start();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    let victim = masters[0];
    cluster.nodes[victim].kill();
    let started = Instant::now();
    loop {
        let live_masters: Vec<usize> = cluster
            .masters()
            .into_iter()
            .filter(|&index| index != victim)
            .collect();
        if live_masters.len() == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no replica took over within 20 s: {live_masters:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_that_cannot_start_says_why_in_its_own_words() {
    let started = Instant::now();
    let failure = std::panic::catch_unwind(|| {
        Broker::start_with(Kind::Redis, &["--no-such-directive", "yes"]);
    })
    .expect_err("redis-server refuses an unknown directive");
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("redis-server on port") && message.contains("no-such-directive"),
        "the failure names the broker, its port and what it said: {message}"
    );
    // It gives up after a few quick exits, not after the whole ready timeout.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
