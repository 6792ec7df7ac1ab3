//! The Redis carrier over TLS (`rediss://`): a server it cannot verify, or
//! an authority file it cannot use, stops the start with an error that
//! names the field. Delivery over TLS, across a restart of the server, is
//! `broker_restart::redis_over_tls_survives_its_server_killed_and_restarted`.

use coordinator_core::Settings;
use coordinator_core::config::{CarrierConfig, RedisConfig};
use tests::brokers::{Broker, Kind};

fn config(broker: &Broker, ca: Option<&str>) -> RedisConfig {
    let ca = ca
        .map(|ca| format!(r#", "tlsCaPath": {ca:?}"#))
        .unwrap_or_default();
    let text = format!(
        r#"{{"@type": "Redis", "url": "rediss://{}", "timeout": "2s", "poolTimeoutCreate": "2s"{ca}}}"#,
        broker.addr()
    );
    match coordinator_core::CoordinatorConfig::from_json(&text)
        .expect("a valid configuration")
        .carrier
    {
        CarrierConfig::Redis(redis) => redis,
        other => unreachable!("parsed as {other:?}"),
    }
}

async fn start_error(config: &RedisConfig) -> String {
    match coordinator_redis::connect(config, &Settings::new(1)).await {
        Ok(_) => panic!("the carrier started"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_an_unknown_authority_is_refused() {
    let broker = tokio::task::spawn_blocking(|| Broker::start(Kind::RedisTls))
        .await
        .unwrap();
    // Without `tlsCaPath` the system's roots are trusted, and they do not
    // know the test authority.
    let error = start_error(&config(&broker, None)).await;
    assert!(
        error.contains("redis.url") && error.contains("certificate"),
        "{error}"
    );
    // With the authority, the same server is accepted.
    let ca = broker.dir().join("ca.pem").display().to_string();
    let link = coordinator_redis::connect(&config(&broker, Some(&ca)), &Settings::new(1)).await;
    assert!(link.is_ok(), "{:?}", link.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_file_that_is_missing_or_not_pem_is_named() {
    let broker = tokio::task::spawn_blocking(|| Broker::start(Kind::RedisTls))
        .await
        .unwrap();
    let missing = broker.dir().join("no-such-ca.pem").display().to_string();
    let error = start_error(&config(&broker, Some(&missing))).await;
    assert!(
        error.contains("redis.tlsCaPath") && error.contains("no-such-ca.pem"),
        "{error}"
    );
    let garbage = broker.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let error = start_error(&config(&broker, Some(&garbage.display().to_string()))).await;
    assert!(error.contains("redis.tlsCaPath"), "{error}");
}
