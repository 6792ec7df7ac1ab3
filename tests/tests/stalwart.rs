//! Stalwart's coordinator configurations mean here what they mean to Stalwart,
//! against a real broker.

use coordinator::{Coordinator, CoordinatorConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::brokers::{Broker, Kind, RedisCluster, free_port};

/// Stalwart's own serializations of its coordinator objects (see the README there).
fn stalwart_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/stalwart");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/stalwart")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "Stalwart's files: {files:?}");
    files
}

fn stalwart(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/stalwart/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_stalwart_coordinator_object_passes_check_config() {
    for file in stalwart_files() {
        let config = CoordinatorConfig::from_file(&file)
            .unwrap_or_else(|errors| panic!("{}: {errors}", file.display()));
        coordinator::check(&config).unwrap_or_else(|errors| panic!("{}: {errors}", file.display()));
    }
}

/// Starts a node from Stalwart's object with only the broker's address
/// replaced, and lets it leave.
async fn starts(object: Value, broker: (&str, Value)) {
    let mut object = object;
    let carrier = object["@type"].as_str().unwrap().to_string();
    object[broker.0] = broker.1;
    let config = CoordinatorConfig::from_value(object).unwrap();
    let node = tokio::time::timeout(Duration::from_secs(60), coordinator::start(&config))
        .await
        .unwrap_or_else(|_| panic!("{carrier}: no start within a minute"))
        .unwrap_or_else(|error| panic!("{carrier}: {error}"));
    assert_eq!(node.carrier(), carrier);
    node.leave().await.expect("leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalwarts_objects_start_against_real_brokers() {
    let nats = Broker::start(Kind::Nats);
    starts(
        stalwart("nats"),
        ("addresses", json!({ nats.addr().to_string(): true })),
    )
    .await;
    let redis = Broker::start(Kind::Redis);
    starts(
        stalwart("redis"),
        ("url", json!(format!("redis://{}", redis.addr()))),
    )
    .await;
    let cluster = RedisCluster::start();
    let urls: serde_json::Map<String, Value> = cluster
        .urls()
        .into_iter()
        .map(|url| (url, Value::Bool(true)))
        .collect();
    starts(stalwart("redis-cluster"), ("urls", Value::Object(urls))).await;
    let kafka = Broker::start(Kind::Kafka);
    starts(
        stalwart("kafka"),
        ("brokers", json!({ kafka.addr().to_string(): true })),
    )
    .await;
    starts(stalwart("disabled"), ("@type", json!("Disabled"))).await;
}

/// A `nats-server` that accepts only clients with `token`.
struct TokenNats {
    child: Child,
    port: u16,
}

impl TokenNats {
    fn start(token: &str) -> TokenNats {
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--auth", token])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's package nats-server) on PATH");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TokenNats { child, port }
    }
}

impl Drop for TokenNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_config(port: u16, auth: &str) -> CoordinatorConfig {
    CoordinatorConfig::from_json(&format!(
        r#"{{"@type":"Nats","nodeId":1,"addresses":{{"127.0.0.1:{port}":true}},
            "timeoutConnection":"2s","maxReconnects":0,{auth}}}"#
    ))
    .expect("a valid configuration")
}

/// Stalwart hands `credentials` to the NATS client as a token, and ignores a
/// user name that has no secret (its defaults carry one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_are_a_token_as_in_stalwart() {
    let server = TokenNats::start("s3cret-token");
    let node = coordinator::start(&nats_config(
        server.port,
        r#""authUsername":"stalwart","credentials":{"@type":"Value","secret":"s3cret-token"}"#,
    ))
    .await
    .expect("the token is accepted");
    assert_eq!(node.carrier(), "Nats");
    node.leave().await.expect("leaves");
    let refused = coordinator::start(&nats_config(
        server.port,
        r#""credentials":{"@type":"Value","secret":"wrong-token"}"#,
    ))
    .await;
    assert!(refused.is_err(), "a wrong token was accepted");
}
