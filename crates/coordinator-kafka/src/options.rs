//! The librdkafka properties of each client, from the configuration.
//!
//! Latency is set deliberately: `fetch.wait.max.ms` (`fetchWaitMax`, 5 ms)
//! bounds how long a broker may hold an empty fetch. Apache Kafka answers a
//! fetch as soon as data arrives (`fetch.min.bytes` 1), so there it only sets
//! how often an idle consumer asks (200 times a second); a broker that holds
//! every fetch until it expires (Tansu) adds it to each delivery, and
//! librdkafka's default, 500 ms, would put half a second on every broadcast.
//! Measured on Tansu: broadcast p50 13.4 ms at 10 ms, 8 ms at 5 ms for a bare
//! client (BENCHMARKS.md). `linger.ms` (`linger`, 0) sends at once; batches still form
//! while a request is in flight. `properties` override everything here.

use coordinator_core::config::KafkaConfig;
use coordinator_core::{Error, NodeId, Settings};
use rdkafka::ClientConfig;

/// Properties every client of a node shares: brokers, security, identity.
pub fn common(config: &KafkaConfig, settings: &Settings) -> Result<ClientConfig, Error> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", config.brokers.join(","))
        .set(
            "client.id",
            format!("coordinator-{}-node-{}", settings.cluster, settings.node_id),
        )
        .set("socket.keepalive.enable", "true")
        // librdkafka's own truncated exponential backoff (with jitter) for
        // reconnecting to a broker.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    if let Some(protocol) = &config.security_protocol {
        client.set("security.protocol", protocol);
    }
    if let Some(mechanism) = &config.sasl_mechanism {
        client.set("sasl.mechanism", mechanism);
    }
    if let Some(user) = &config.sasl_username {
        client.set("sasl.username", user);
    }
    if let Some(password) = config
        .sasl_password
        .resolve("kafka.saslPassword")
        .map_err(|error| Error::Start(error.to_string()))?
    {
        client.set("sasl.password", password.expose());
    }
    if let Some(path) = &config.tls_ca_path {
        client.set("ssl.ca.location", path);
    }
    Ok(client)
}

/// Applies `properties` last, so they override what this carrier chose.
pub fn overrides(client: &mut ClientConfig, config: &KafkaConfig) {
    for (name, value) in &config.properties {
        client.set(name, value);
    }
}

/// The producer: sends at once, retries for `timeoutMessage`.
pub fn producer(config: &KafkaConfig, settings: &Settings) -> Result<ClientConfig, Error> {
    let mut client = common(config, settings)?;
    client
        .set("linger.ms", millis(config.linger))
        .set("message.timeout.ms", millis(config.timeout_message))
        .set(
            "message.max.bytes",
            (settings.max_message_size + 4096)
                .max(1_000_000)
                .to_string(),
        )
        // A retried batch must not land after the ones sent behind it (the
        // engine would wait for it only `reorderTimeout`, then call it lost).
        // The idempotent producer would keep order with more requests in
        // flight, but a broker that restarts empty (Tansu in memory) fences
        // it for good; batches still grow while one request is in flight.
        .set("max.in.flight.requests.per.connection", "1")
        .set("retry.backoff.ms", "20")
        .set("retry.backoff.max.ms", "1000");
    overrides(&mut client, config);
    Ok(client)
}

/// The consumer of one node: its own group (offsets are committed there),
/// partitions assigned by this carrier, never by a group rebalance.
pub fn consumer(config: &KafkaConfig, settings: &Settings) -> Result<ClientConfig, Error> {
    let mut client = common(config, settings)?;
    client
        .set("group.id", group_id(config, settings.node_id))
        // Offsets are committed by the carrier every few seconds, and not on
        // close: closing must not wait for a broker that may be gone.
        .set("enable.auto.commit", "false")
        // Only when an offset is out of range: the broker no longer has it
        // (retention) or lost the log (a restarted in-memory broker). What the
        // broker still holds is read then, not skipped.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", millis(config.fetch_wait_max))
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        .set("session.timeout.ms", millis(config.timeout_session))
        .set(
            "fetch.message.max.bytes",
            (settings.max_message_size + 4096)
                .max(1_048_576)
                .to_string(),
        );
    overrides(&mut client, config);
    Ok(client)
}

/// The administrative client that creates topics.
pub fn admin(config: &KafkaConfig, settings: &Settings) -> Result<ClientConfig, Error> {
    let mut client = common(config, settings)?;
    overrides(&mut client, config);
    Ok(client)
}

/// Node `node`'s own consumer group: `{groupId}-node-{node}`. One group per
/// node, so that every node reads every broadcast (a group shared by all
/// nodes would hand each message to one of them only).
pub fn group_id(config: &KafkaConfig, node: NodeId) -> String {
    format!("{}-node-{node}", config.group_id)
}

fn millis(duration: std::time::Duration) -> String {
    duration.as_millis().to_string()
}
