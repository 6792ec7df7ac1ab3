//! One interface for the nodes of a clustered server: broadcast, membership
//! and Raft message delivery, over the carrier a configuration selects.
//!
//! ```no_run
//! # async fn run() -> Result<(), coordinator::Error> {
//! use coordinator::{Coordinator, CoordinatorConfig, SubscribeOptions};
//! let config = CoordinatorConfig::from_file("coordinator.json")?;
//! let node = coordinator::start(&config).await?;
//! let mut reloads = node.subscribe("config.reload", SubscribeOptions::default()).await?;
//! node.broadcast("config.reload", "now".into()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

// The application's side only: what a carrier implements stays in
// `coordinator_core::transport`, the engine's parts in `coordinator_core`.
pub use coordinator_core::api::*;
pub use coordinator_core::config::{
    self, CarrierConfig, ClusterConfig, ConfigErrors, CoordinatorConfig, FieldError, Secret,
};
pub use coordinator_core::stats::StatsSnapshot;
/// Tools for an application's own tests: the `Memory` carrier with fault
/// injection, and the deterministic simulator of the engine.
pub use coordinator_core::testing;
pub use coordinator_core::{Error, Node, NodeBuilder, Settings, TransportError, new_incarnation};

#[cfg(feature = "metrics")]
pub mod metrics;

/// Starts this node on the carrier the configuration selects.
///
/// Secrets are read and the node id resolved here; a carrier that this build
/// does not include, or that is not implemented yet, is a clear error.
pub async fn start(config: &CoordinatorConfig) -> Result<Node, Error> {
    let settings = Settings::from_config(&config.cluster)?;
    // What is logged while the carrier connects names the node and carrier,
    // as everything the node logs afterwards does (its tasks have spans).
    let span = tracing::info_span!(
        "coordinator",
        node = settings.node_id,
        carrier = config.carrier.name()
    );
    tracing::Instrument::instrument(start_in_span(config, settings), span).await
}

async fn start_in_span(config: &CoordinatorConfig, settings: Settings) -> Result<Node, Error> {
    match &config.carrier {
        CarrierConfig::Disabled => Node::alone(settings),
        #[cfg(feature = "native")]
        CarrierConfig::Native(native) => {
            let settings = settings.incarnation(new_incarnation());
            let (link, _) =
                coordinator_native::connect(native, &settings, Default::default()).await?;
            Node::start(settings, coordinator_native::NAME, link)
        }
        #[cfg(feature = "nats")]
        CarrierConfig::Nats(nats) => {
            let link = coordinator_nats::connect(nats, &settings).await?;
            Node::start(settings, coordinator_nats::NAME, link)
        }
        #[cfg(feature = "kafka")]
        CarrierConfig::Kafka(kafka) => {
            let link = coordinator_kafka::connect(kafka, &settings).await?;
            Node::start(settings, coordinator_kafka::NAME, link)
        }
        #[cfg(feature = "zenoh")]
        CarrierConfig::Zenoh(zenoh) => {
            // The liveliness token names the run: the carrier needs it first.
            let settings = settings.incarnation(new_incarnation());
            let link = coordinator_zenoh::connect(zenoh, &settings).await?;
            Node::start(settings, coordinator_zenoh::NAME, link)
        }
        #[cfg(feature = "redis")]
        CarrierConfig::Redis(redis) => {
            let link = coordinator_redis::connect(redis, &settings).await?;
            Node::start(settings, coordinator_redis::NAME, link)
        }
        #[cfg(feature = "redis")]
        CarrierConfig::RedisCluster(cluster) => {
            let link = coordinator_redis::connect_cluster(cluster, &settings).await?;
            Node::start(settings, coordinator_redis::CLUSTER_NAME, link)
        }
        #[cfg(feature = "redis")]
        CarrierConfig::RedisSentinel(sentinel) => {
            let link = coordinator_redis::connect_sentinel(sentinel, &settings).await?;
            Node::start(settings, coordinator_redis::SENTINEL_NAME, link)
        }
        other => Err(unavailable(other.name())),
    }
}

/// What [`start`] would refuse without reaching a broker: unreadable secrets
/// and embedded texts that do not parse (a Zenoh `config`, Kafka
/// `properties`, a NATS `userCredentials` document), each named by its field.
/// `check-config` runs it.
pub fn check(config: &CoordinatorConfig) -> Result<(), ConfigErrors> {
    config.check_secrets()?;
    Settings::from_config(&config.cluster).map_err(refused)?;
    let checked: Result<(), Error> = match &config.carrier {
        #[cfg(feature = "nats")]
        CarrierConfig::Nats(nats) => coordinator_nats::check(nats),
        #[cfg(feature = "kafka")]
        CarrierConfig::Kafka(kafka) => Settings::from_config(&config.cluster)
            .and_then(|settings| coordinator_kafka::check(kafka, &settings)),
        #[cfg(feature = "zenoh")]
        CarrierConfig::Zenoh(zenoh) => coordinator_zenoh::check(zenoh),
        _ => Ok(()),
    };
    checked.map_err(refused)
}

/// A start error as the configuration problem it is (a carrier's message
/// already begins with the field it is about).
fn refused(error: Error) -> ConfigErrors {
    let message = match error {
        Error::Config(errors) => return errors,
        Error::Start(message) => message,
        other => other.to_string(),
    };
    ConfigErrors(vec![FieldError {
        path: String::new(),
        message,
    }])
}

/// Why a carrier cannot start in this build.
fn unavailable(name: &'static str) -> Error {
    let (built, implemented) = match name {
        "Kafka" => carrier_status!("kafka", coordinator_kafka),
        "Nats" => carrier_status!("nats", coordinator_nats),
        "Zenoh" => carrier_status!("zenoh", coordinator_zenoh),
        "Redis" => carrier_status!("redis", coordinator_redis),
        "RedisCluster" | "RedisSentinel" => {
            let (built, _) = carrier_status!("redis", coordinator_redis);
            #[cfg(feature = "redis")]
            let implemented = coordinator_redis::CLUSTER_IMPLEMENTED;
            #[cfg(not(feature = "redis"))]
            let implemented = false;
            (built, implemented)
        }
        "Native" => carrier_status!("native", coordinator_native),
        _ => (false, false),
    };
    if !built {
        Error::Start(format!(
            "the {name} carrier is not in this build (enable the cargo feature for it)"
        ))
    } else if !implemented {
        Error::Start(format!(
            "the {name} carrier is not implemented yet in this version; use \"Disabled\" for a single node, \
             or the in-process Memory carrier (coordinator demo) to try a cluster"
        ))
    } else {
        Error::Start(format!(
            "the {name} carrier cannot be started by this version of the facade"
        ))
    }
}

/// (compiled in, implemented) for a carrier crate behind a cargo feature.
macro_rules! carrier_status {
    ($feature:literal, $krate:ident) => {{
        #[cfg(feature = $feature)]
        let status = (true, $krate::IMPLEMENTED);
        #[cfg(not(feature = $feature))]
        let status = (false, false);
        status
    }};
}
use carrier_status;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_starts_a_single_node() {
        let config = CoordinatorConfig::from_json(r#"{"@type":"Disabled","nodeId":5}"#).unwrap();
        let node = start(&config).await.unwrap();
        assert_eq!(node.node_id(), 5);
        assert_eq!(node.carrier(), "Disabled");
    }

    #[cfg(feature = "kafka")]
    #[tokio::test]
    async fn kafka_that_cannot_be_reached_names_the_brokers() {
        let config = CoordinatorConfig::from_json(
            r#"{"@type":"Kafka","brokers":["127.0.0.1:9"],"groupId":"g","nodeId":1,"timeoutSession":"300ms"}"#,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(
            error.contains("kafka.brokers:") && error.contains("127.0.0.1:9"),
            "{error}"
        );
    }

    #[cfg(feature = "zenoh")]
    #[tokio::test]
    async fn zenoh_with_a_broken_configuration_names_the_field() {
        let config = CoordinatorConfig::from_json(
            r##"{"@type":"Zenoh","nodeId":1,"config":"{ mode: 'peer', listen: { endpoints: [ "}"##,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(error.contains("zenoh.config:"), "{error}");
    }

    #[cfg(feature = "native")]
    #[tokio::test]
    async fn native_without_a_cluster_key_or_with_an_unreadable_certificate_says_which_field() {
        let config = CoordinatorConfig::from_json(
            r#"{"@type":"Native","nodeId":1,"bindAddr":"127.0.0.1","port":0}"#,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(error.contains("clusterKey"), "{error}");
        let config = CoordinatorConfig::from_json(
            r#"{"@type":"Native","nodeId":1,"bindAddr":"127.0.0.1","port":0,
                "clusterKey":{"@type":"Value","secret":"k"},
                "certPath":"/nonexistent/cert.pem","keyPath":"/nonexistent/key.pem"}"#,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(
            error.contains("native.certPath") && error.contains("/nonexistent/cert.pem"),
            "{error}"
        );
    }

    #[cfg(feature = "nats")]
    #[tokio::test]
    async fn nats_that_cannot_be_reached_names_the_addresses() {
        let config = CoordinatorConfig::from_json(
            r#"{"@type":"Nats","nodeId":1,"addresses":["127.0.0.1:9"],"timeoutConnection":"300ms","maxReconnects":0}"#,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(
            error.contains("nats.addresses: cannot connect to 127.0.0.1:9"),
            "{error}"
        );
        for (fields, expected) in [
            (
                r#""addresses":["127.0.0.1:9","nats://bad host:4222"]"#,
                "nats.addresses[1]: \"nats://bad host:4222\" is not a NATS address",
            ),
            (
                r#""userCredentials":{"@type":"Value","secret":"not a creds file"}"#,
                "nats.userCredentials: not a NATS user credentials (.creds) document",
            ),
        ] {
            let config =
                CoordinatorConfig::from_json(&format!(r#"{{"@type":"Nats","nodeId":1,{fields}}}"#))
                    .unwrap();
            let error = start(&config).await.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_that_cannot_be_reached_names_the_url_without_its_password() {
        let config = CoordinatorConfig::from_json(
            r#"{"@type":"Redis","nodeId":1,"url":"redis://u:hunter2@127.0.0.1:9","timeout":"500ms"}"#,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(
            error.contains("redis.url: cannot subscribe at redis://<credentials>@127.0.0.1:9"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
        let cluster = CoordinatorConfig::from_json(
            r#"{"@type":"RedisCluster","nodeId":1,"urls":["redis://u:hunter2@127.0.0.1:9"],"timeout":"500ms"}"#,
        )
        .unwrap();
        let error = start(&cluster).await.unwrap_err().to_string();
        assert!(
            error.contains("redisCluster.urls: cannot reach redis://<credentials>@127.0.0.1:9"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_cluster_key_variable_stops_the_start() {
        let config = CoordinatorConfig::from_json(
            r#"{"@type":"Disabled","nodeId":1,"clusterKey":{"@type":"EnvironmentVariable","variableName":"COORDINATOR_TEST_NO_SUCH_KEY"}}"#,
        )
        .unwrap();
        let error = start(&config).await.unwrap_err().to_string();
        assert!(
            error.contains(
                "clusterKey: environment variable COORDINATOR_TEST_NO_SUCH_KEY is not set"
            ),
            "{error}"
        );
    }
}
