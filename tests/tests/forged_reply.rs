//! A reply is accepted only from the node the request went to.

use bytes::Bytes;
use coordinator::Error;
use coordinator_core::envelope::{Codec, Envelope, Kind};
use std::time::Duration;
use tests::harness::{self, CLUSTER_KEY, Harness};
use tests::wait::{converge, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_another_node_does_not_answer_a_request() {
    let mut harness = harness::memory().await;
    let asker = harness.start(1).await;
    let asked = harness.start(2).await;
    converge(&[asker.clone(), asked.clone()], Duration::from_secs(10)).await;
    let mut inbox = asked.inbox().unwrap();
    let hoarder = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(request) = inbox.recv().await {
            kept.push(request);
        }
    });
    let incarnation = asker
        .members()
        .iter()
        .find(|m| m.local)
        .unwrap()
        .incarnation;
    let waiting = {
        let asker = asker.clone();
        tokio::spawn(async move {
            asker
                .request(2, Bytes::from_static(b"q"), Duration::from_millis(500))
                .await
        })
    };
    until(Duration::from_secs(10), "the request to arrive", || {
        asked.stats().direct_delivered >= 1
    })
    .await;
    // Node 3 holds the cluster key but was not asked: its "reply" to request 1 must be ignored.
    let other = harness.raw(3).await;
    let codec = Codec::new("conformance", Some(CLUSTER_KEY.as_bytes()), false, 1 << 20);
    let forged = Envelope {
        kind: Kind::Reply,
        from: 3,
        from_incarnation: 1,
        to: 1,
        to_incarnation: incarnation,
        seq: 1,
        aux: 1,
        topic: Bytes::new(),
        payload: Bytes::from_static(b"forged answer"),
    };
    other
        .transport
        .send_to(1, codec.encode(&forged).unwrap())
        .await
        .unwrap();
    let result = waiting.await.unwrap();
    assert!(
        matches!(result, Err(Error::Timeout { node: 2, .. })),
        "{result:?}"
    );
    hoarder.abort();
}
