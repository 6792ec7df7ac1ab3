//! What the Zenoh carrier does with Zenoh's own features.

use bytes::Bytes;
use std::time::Duration;
use tests::harness::{Harness, zenoh_peers, zenoh_router};
use tests::wait::converge;

/// A request travels as a Zenoh query and its reply as the answer to that
/// query, between peers and through a router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_through_queryables() {
    for mut harness in [zenoh_peers().await, zenoh_router().await] {
        let nodes = vec![harness.start(1).await, harness.start(2).await];
        converge(&nodes, Duration::from_secs(10)).await;
        let mut inbox = nodes[1].inbox().unwrap();
        let server = tokio::spawn(async move {
            while let Some(request) = inbox.recv().await {
                let answer = [b"re: ".as_slice(), &request.payload].concat();
                let _ = request.reply(Bytes::from(answer)).await;
            }
        });
        for i in 0..3 {
            let reply = nodes[0]
                .request(2, Bytes::from(format!("q{i}")), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(reply, format!("re: q{i}").as_bytes());
        }
        let responder = harness.connector().transport(2).expect("node 2 runs");
        assert_eq!(
            responder.replies_sent(),
            (3, 0),
            "every reply answers its query (none put on the requester's key)"
        );
        server.abort();
    }
}
