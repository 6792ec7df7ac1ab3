//! The adapter with two nodes built from Stalwart's own objects, on a real
//! NATS server and a real Redis server: publish and subscribe work, and a
//! broker stopped under them calls the resynchronisation hook.

use serde_json::{Value, json};
use stalwart_adapter::{Coordinator, Resync};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::brokers::{Broker, Kind};

const LONG: Duration = Duration::from_secs(20);

/// Stalwart's serialization of its coordinator object of this type.
fn stalwart(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../tests/data/stalwart/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

type Calls = Arc<Mutex<Vec<Resync>>>;

async fn node(object: &Value, id: u64) -> (Coordinator, Calls) {
    let calls: Calls = Arc::default();
    let hook = calls.clone();
    let node = Coordinator::build(object, id, move |resync| hook.lock().unwrap().push(resync))
        .await
        .unwrap_or_else(|error| panic!("node {id}: {error}"));
    (node, calls)
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats() {
    let mut nats = Broker::start(Kind::Nats);
    let mut object = stalwart("nats");
    object["addresses"] = json!({ nats.addr().to_string(): true });
    publish_subscribe_and_resync(&object, &mut nats, false).await;
}

/// Redis pub/sub is at most once: what is published while the server is
/// down is lost, and the hook hears of it as a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis() {
    let mut redis = Broker::start(Kind::Redis);
    let mut object = stalwart("redis");
    object["url"] = json!(format!("redis://{}", redis.addr()));
    publish_subscribe_and_resync(&object, &mut redis, true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn disabled_is_none_as_in_stalwart() {
    let (node, _) = node(&stalwart("disabled"), 1).await;
    assert!(node.is_none());
    assert!(node.publish("cache", b"x".to_vec()).await.is_err());
}

async fn publish_subscribe_and_resync(object: &Value, broker: &mut Broker, gap_expected: bool) {
    let (a, _) = node(object, 1).await;
    let (b, b_calls) = node(object, 2).await;
    let mut stream = b.subscribe("cache").await.unwrap();

    // Publish and subscribe, both ways; a node hears its own, as on a broker.
    a.publish("cache", b"from a".to_vec()).await.unwrap();
    let message = within("a's message", stream.next()).await.unwrap();
    assert_eq!(
        (message.topic(), message.payload()),
        ("cache", &b"from a"[..])
    );
    b.publish("cache", b"from b".to_vec()).await.unwrap();
    let message = within("b's own message", stream.next()).await.unwrap();
    assert_eq!(message.payload(), b"from b");
    // Nothing periodic is sent: heartbeats are off for Stalwart. (The
    // counter also counts joins and answers to joins: once both nodes know
    // each other, and node 1's answer to node 2's join is out, it stays.)
    within("the nodes to know each other", async {
        while [&a, &b]
            .iter()
            .any(|node| node.node().unwrap().members().len() < 2)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let control = a.node().unwrap().stats().heartbeats_sent;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.node().unwrap().stats().heartbeats_sent, control);
    assert!(
        b_calls.lock().unwrap().is_empty(),
        "{:?}",
        b_calls.lock().unwrap()
    );

    // The broker stops; node 1 publishes while it is away.
    broker.kill();
    let mut during = Vec::new();
    for i in 0..5 {
        let text = format!("during {i}");
        let _ = a.publish("cache", text.clone().into_bytes()).await;
        during.push(text);
    }
    tokio::task::block_in_place(|| broker.restart());
    within("the hook to hear the link is back", async {
        while !b_calls.lock().unwrap().contains(&Resync::LinkUp) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Node 1 publishes until node 2 has its message: whatever of the outage
    // did not arrive, the hook heard of as a gap.
    let mut delivered = Vec::new();
    within("a message after the outage", async {
        loop {
            a.publish("cache", b"after".to_vec()).await.unwrap();
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(300), stream.next()).await
            {
                if message.payload() == b"after" {
                    return;
                }
                delivered.push(String::from_utf8(message.payload().to_vec()).unwrap());
            }
        }
    })
    .await;
    let missing = during
        .iter()
        .filter(|text| !delivered.contains(text))
        .count() as u64;
    // The hook runs on a task of its own: wait for it to hear of every
    // missing message (and of at least one, where a gap is certain).
    let reported_lost = || -> u64 {
        b_calls
            .lock()
            .unwrap()
            .iter()
            .map(|call| match call {
                Resync::Gap { from: 1, count } => *count,
                _ => 0,
            })
            .sum()
    };
    let wanted = missing.max(u64::from(gap_expected));
    tokio::time::timeout(LONG, async {
        while reported_lost() < wanted {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{missing} of the outage's messages missing, {} reported lost: {:?}",
            reported_lost(),
            b_calls.lock().unwrap()
        )
    });
    let reported = reported_lost();
    let calls = b_calls.lock().unwrap().clone();
    eprintln!(
        "outage: {} published, {} delivered, {reported} reported lost; hook: {calls:?}",
        during.len(),
        during.len() as u64 - missing
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
