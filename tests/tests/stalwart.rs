//! Stalwart's coordinator configurations mean here what they mean to Stalwart,
//! against a real broker.

use coordinator::{Coordinator, CoordinatorConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::brokers::{Broker, Kind, RedisCluster, RedisSentinels};

/// Stalwart's own serializations of its coordinator objects (see the README there).
fn stalwart_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/stalwart");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/stalwart")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "Stalwart's files: {files:?}");
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

/// Starts a node from Stalwart's object with only the broker's address (the
/// field, and its value) replaced, and lets it leave.
async fn starts(object: Value, broker: Option<(&str, Value)>) {
    let mut object = object;
    let carrier = object["@type"].as_str().unwrap().to_string();
    if let Some((field, address)) = broker {
        object[field] = address;
    }
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
        Some(("addresses", json!({ nats.addr().to_string(): true }))),
    )
    .await;
    let redis = Broker::start(Kind::Redis);
    starts(
        stalwart("redis"),
        Some(("url", json!(format!("redis://{}", redis.addr())))),
    )
    .await;
    let cluster = RedisCluster::start();
    let urls: serde_json::Map<String, Value> = cluster
        .urls()
        .into_iter()
        .map(|url| (url, Value::Bool(true)))
        .collect();
    starts(
        stalwart("redis-cluster"),
        Some(("urls", Value::Object(urls))),
    )
    .await;
    let sentinels = RedisSentinels::start();
    let urls: serde_json::Map<String, Value> = sentinels
        .urls()
        .into_iter()
        .map(|url| (url, Value::Bool(true)))
        .collect();
    starts(
        stalwart("redis-sentinel"),
        Some(("urls", Value::Object(urls))),
    )
    .await;
    let kafka = Broker::start(Kind::Kafka);
    starts(
        stalwart("kafka"),
        Some(("brokers", json!({ kafka.addr().to_string(): true }))),
    )
    .await;
    starts(stalwart("disabled"), None).await;
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
    let server = Broker::start_with(Kind::Nats, &["--auth", "s3cret-token"]);
    let node = coordinator::start(&nats_config(
        server.port(),
        r#""authUsername":"stalwart","credentials":{"@type":"Value","secret":"s3cret-token"}"#,
    ))
    .await
    .expect("the token is accepted");
    assert_eq!(node.carrier(), "Nats");
    node.leave().await.expect("leaves");
    let refused = coordinator::start(&nats_config(
        server.port(),
        r#""credentials":{"@type":"Value","secret":"wrong-token"}"#,
    ))
    .await;
    assert!(refused.is_err(), "a wrong token was accepted");
}
