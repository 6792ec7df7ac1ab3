//! The carrier variants of the configuration and their fields, with Stalwart's
//! names, defaults and bounds.

use super::duration::serde_text;
use super::reader::ObjectReader;
use super::secret::Secret;
use serde::Serialize;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
const DAY: Duration = secs(86_400);

/// Which carrier moves the bytes, with its own settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "@type")]
#[non_exhaustive]
pub enum CarrierConfig {
    /// A single node: membership is itself, broadcasts and requests to itself work locally.
    Disabled,
    Kafka(KafkaConfig),
    Nats(NatsConfig),
    Zenoh(ZenohConfig),
    Redis(RedisConfig),
    RedisCluster(RedisClusterConfig),
    RedisSentinel(RedisSentinelConfig),
    Native(NativeConfig),
}

impl CarrierConfig {
    /// The `@type` name of this carrier.
    pub fn name(&self) -> &'static str {
        match self {
            CarrierConfig::Disabled => "Disabled",
            CarrierConfig::Kafka(_) => "Kafka",
            CarrierConfig::Nats(_) => "Nats",
            CarrierConfig::Zenoh(_) => "Zenoh",
            CarrierConfig::Redis(_) => "Redis",
            CarrierConfig::RedisCluster(_) => "RedisCluster",
            CarrierConfig::RedisSentinel(_) => "RedisSentinel",
            CarrierConfig::Native(_) => "Native",
        }
    }

    pub(super) fn read(reader: &mut ObjectReader<'_>) -> Option<Self> {
        let kind = match reader.take("@type") {
            Some(Value::String(kind)) => kind,
            Some(other) => {
                reader.error("@type", format!("expected a string, found {other}"));
                return None;
            }
            None => {
                reader.error(
                    "@type",
                    "is required: one of Disabled, Kafka, Nats, Zenoh, Redis, RedisCluster, RedisSentinel, Native",
                );
                return None;
            }
        };
        Some(match kind.as_str() {
            "Disabled" => CarrierConfig::Disabled,
            "Kafka" => CarrierConfig::Kafka(KafkaConfig::read(reader, "kafka")),
            "Nats" => CarrierConfig::Nats(NatsConfig::read(reader, "nats")),
            "Zenoh" => CarrierConfig::Zenoh(ZenohConfig::read(reader, "zenoh")),
            "Redis" => CarrierConfig::Redis(RedisConfig::read(reader, "redis")),
            "RedisCluster" => {
                CarrierConfig::RedisCluster(RedisClusterConfig::read(reader, "redisCluster"))
            }
            "RedisSentinel" => {
                CarrierConfig::RedisSentinel(RedisSentinelConfig::read(reader, "redisSentinel"))
            }
            "Native" => CarrierConfig::Native(NativeConfig::read(reader, "native")),
            "Default" => {
                reader.error(
                    "@type",
                    "\"Default\" means Stalwart's in-memory store, which this library does not know: \
                     write \"Redis\" with the store's url instead",
                );
                return None;
            }
            other => {
                reader.error(
                    "@type",
                    format!(
                        "unknown carrier {other:?}; expected one of Disabled, Kafka, Nats, Zenoh, Redis, RedisCluster, RedisSentinel, Native"
                    ),
                );
                return None;
            }
        })
    }
}

/// Apache Kafka (or any Kafka-API broker).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    /// The prefix of each node's own consumer group, `{groupId}-node-{nodeId}`
    /// (one group per node, so that every node reads every broadcast).
    pub group_id: String,
    /// How long the producer tries to deliver a message (`message.timeout.ms`).
    #[serde(with = "serde_text")]
    pub timeout_message: Duration,
    /// How long starting may wait for the brokers (metadata, topic creation,
    /// offsets), and `session.timeout.ms`.
    #[serde(with = "serde_text")]
    pub timeout_session: Duration,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Secret,
    /// A PEM file of the certificate authorities that sign the brokers' certificates.
    pub tls_ca_path: Option<String>,
    /// Partitions of the broadcast topic, when this node creates it.
    pub partitions: u64,
    /// Replicas of each topic this node creates; the broker's default when absent.
    pub replication_factor: Option<u64>,
    /// How long the topics this node creates keep messages (`retention.ms`).
    #[serde(with = "serde_text")]
    pub retention: Duration,
    /// The longest a fetch waits for data (`fetch.wait.max.ms`): on a broker
    /// that holds a fetch until this expires, the floor of every delivery.
    #[serde(with = "serde_text")]
    pub fetch_wait_max: Duration,
    /// How long the producer waits to batch messages (`linger.ms`).
    #[serde(with = "serde_text")]
    pub linger: Duration,
    /// Any other librdkafka properties, applied last (they override the above).
    pub properties: std::collections::BTreeMap<String, String>,
}

/// The values `securityProtocol` accepts.
pub const KAFKA_SECURITY_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// The values `saslMechanism` accepts.
pub const KAFKA_SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl KafkaConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| {
            let choice = |v: &mut ObjectReader<'_>, key: &str, allowed: &[&str]| {
                let value = v.string(key)?;
                match allowed.iter().find(|a| a.eq_ignore_ascii_case(&value)) {
                    Some(found) => Some(found.to_string()),
                    None => {
                        v.error(
                            key,
                            format!("must be one of {}, found {value:?}", allowed.join(", ")),
                        );
                        None
                    }
                }
            };
            let security_protocol = choice(v, "securityProtocol", &KAFKA_SECURITY_PROTOCOLS);
            let sasl_mechanism = choice(v, "saslMechanism", &KAFKA_SASL_MECHANISMS);
            let config = Self {
                brokers: v.strings_min("brokers", None, 1),
                group_id: v.required_string("groupId"),
                timeout_message: v.duration_or("timeoutMessage", secs(5), millis(1), DAY),
                timeout_session: v.duration_or("timeoutSession", secs(5), millis(1), DAY),
                security_protocol,
                sasl_mechanism,
                sasl_username: v.string("saslUsername"),
                sasl_password: v.secret("saslPassword"),
                tls_ca_path: v.string("tlsCaPath"),
                partitions: v.u64_or("partitions", 1, 1, 10_000),
                replication_factor: v.optional_u64("replicationFactor", 1, 32),
                retention: v.duration_or("retention", secs(3600), secs(1), DAY * 365),
                fetch_wait_max: v.duration_or("fetchWaitMax", millis(5), Duration::ZERO, secs(300)),
                linger: v.duration_or("linger", Duration::ZERO, Duration::ZERO, secs(300)),
                properties: v.string_map("properties"),
            };
            let sasl = config
                .security_protocol
                .as_deref()
                .is_some_and(|p| p.starts_with("sasl_"));
            if sasl && config.sasl_mechanism.is_none() {
                v.error(
                    "saslMechanism",
                    "is required when securityProtocol is sasl_plaintext or sasl_ssl",
                );
            }
            if !sasl && (config.sasl_mechanism.is_some() || config.sasl_username.is_some()) {
                v.error(
                    "securityProtocol",
                    "must be sasl_plaintext or sasl_ssl when saslMechanism or saslUsername is set",
                );
            }
            if config.sasl_username.is_some() == config.sasl_password.is_none() {
                v.error(
                    "saslPassword",
                    "and saslUsername go together: set both or neither",
                );
            }
            config
        })
    }
}

/// NATS.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NatsConfig {
    pub addresses: Vec<String>,
    /// `None`: reconnect forever.
    pub max_reconnects: Option<u64>,
    #[serde(with = "serde_text")]
    pub timeout_connection: Duration,
    #[serde(with = "serde_text")]
    pub timeout_request: Duration,
    #[serde(with = "serde_text")]
    pub ping_interval: Duration,
    pub capacity_client: u64,
    pub capacity_read_buffer: u64,
    pub capacity_subscription: u64,
    pub no_echo: bool,
    pub use_tls: bool,
    pub auth_username: Option<String>,
    pub auth_secret: Secret,
    /// A NATS authentication token (this library's name for it).
    pub auth_token: Secret,
    /// A NATS authentication token, as Stalwart hands its `credentials` to
    /// the client; used when there is no user name with a secret.
    pub credentials: Secret,
    /// The text of a NATS user credentials (`.creds`) document: a user JWT
    /// and its NKey seed (`{"@type":"File","filePath":"user.creds"}` names a file).
    pub user_credentials: Secret,
}

impl NatsConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| {
            let config = Self {
                addresses: v.strings_min("addresses", Some(vec!["127.0.0.1:4222".into()]), 1),
                max_reconnects: v.optional_u64("maxReconnects", 0, u64::MAX),
                timeout_connection: v.duration_or("timeoutConnection", secs(5), millis(1), DAY),
                timeout_request: v.duration_or("timeoutRequest", secs(10), millis(1), DAY),
                ping_interval: v.duration_or("pingInterval", secs(60), millis(1), DAY),
                capacity_client: v.u64_or("capacityClient", 2048, 1, u32::MAX as u64),
                capacity_read_buffer: v.u64_or("capacityReadBuffer", 65535, 1, u16::MAX as u64),
                capacity_subscription: v.u64_or("capacitySubscription", 65536, 1, u32::MAX as u64),
                no_echo: v.bool_or("noEcho", true),
                use_tls: v.bool_or("useTls", false),
                auth_username: v.string("authUsername"),
                auth_secret: v.secret("authSecret"),
                auth_token: v.secret("authToken"),
                credentials: v.secret("credentials"),
                user_credentials: v.secret("userCredentials"),
            };
            if !config.auth_token.is_none() && !config.credentials.is_none() {
                v.error(
                    "credentials",
                    "is a token, as authToken is: set one of them, not both",
                );
            }
            // A user name without a password is ignored, as Stalwart does
            // (its defaults carry one): `CoordinatorConfig::warnings` says so.
            config
        })
    }
}

/// Eclipse Zenoh.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZenohConfig {
    /// JSON5 text of a zenoh configuration.
    pub config: String,
}

impl ZenohConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| Self {
            config: v.required_string("config"),
        })
    }
}

/// Connection-pool settings shared by `Redis` and `RedisCluster`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolConfig {
    pub pool_max_connections: u64,
    #[serde(with = "serde_text::option")]
    pub pool_timeout_create: Option<Duration>,
    #[serde(with = "serde_text::option")]
    pub pool_timeout_wait: Option<Duration>,
    #[serde(with = "serde_text::option")]
    pub pool_timeout_recycle: Option<Duration>,
}

impl PoolConfig {
    fn read(v: &mut ObjectReader<'_>) -> Self {
        Self {
            pool_max_connections: v.u64_or("poolMaxConnections", 10, 1, 8192),
            pool_timeout_create: Some(v.duration_or("poolTimeoutCreate", secs(30), millis(1), DAY)),
            pool_timeout_wait: Some(v.duration_or("poolTimeoutWait", secs(30), millis(1), DAY)),
            pool_timeout_recycle: Some(v.duration_or(
                "poolTimeoutRecycle",
                secs(30),
                millis(1),
                DAY,
            )),
        }
    }
}

/// A single Redis server.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisConfig {
    pub url: String,
    #[serde(with = "serde_text")]
    pub timeout: Duration,
    /// A PEM file of the certificate authorities that sign the server's
    /// certificate, for a `rediss://` URL (the system's roots when absent).
    pub tls_ca_path: Option<String>,
    #[serde(flatten)]
    pub pool: PoolConfig,
}

/// `tlsCaPath` means something only with a TLS URL: say so rather than ignore it.
fn check_tls_ca_path(v: &mut ObjectReader<'_>, path: &Option<String>, urls: &[String]) {
    let tls = |url: &String| url.starts_with("rediss://") || url.starts_with("valkeys://");
    if path.is_some() && !urls.iter().any(tls) {
        v.error(
            "tlsCaPath",
            "is set, but no URL is a TLS one (rediss://): it would not be used",
        );
    }
}

fn check_redis_url(v: &mut ObjectReader<'_>, key: &str, url: &str) {
    let known = [
        "redis://",
        "rediss://",
        "redis+unix://",
        "unix://",
        "valkey://",
        "valkeys://",
    ];
    if !url.is_empty() && !known.iter().any(|scheme| url.starts_with(scheme)) {
        v.error(
            key,
            format!("expected a redis:// or rediss:// URL, found {url:?}"),
        );
    }
}

impl RedisConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| {
            let url = v
                .string("url")
                .unwrap_or_else(|| "redis://127.0.0.1".into());
            check_redis_url(v, "url", &url);
            let tls_ca_path = v.string("tlsCaPath");
            check_tls_ca_path(v, &tls_ca_path, std::slice::from_ref(&url));
            Self {
                url,
                timeout: v.duration_or("timeout", secs(10), millis(1), DAY),
                tls_ca_path,
                pool: PoolConfig::read(v),
            }
        })
    }
}

/// The RESP protocol version spoken to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisProtocol {
    Resp2,
    Resp3,
}

impl RedisProtocol {
    fn read(v: &mut ObjectReader<'_>) -> Self {
        match v.string("protocolVersion").as_deref() {
            None | Some("resp2") | Some("RESP2") => RedisProtocol::Resp2,
            Some("resp3") | Some("RESP3") => RedisProtocol::Resp3,
            Some(other) => {
                v.error(
                    "protocolVersion",
                    format!("expected \"resp2\" or \"resp3\", found {other:?}"),
                );
                RedisProtocol::Resp2
            }
        }
    }
}

/// A Redis Cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisClusterConfig {
    pub urls: Vec<String>,
    #[serde(with = "serde_text")]
    pub timeout: Duration,
    pub auth_username: Option<String>,
    pub auth_secret: Secret,
    pub max_retries: Option<u64>,
    /// Milliseconds, 1 to 1024.
    #[serde(with = "serde_text::option")]
    pub min_retry_wait: Option<Duration>,
    /// Milliseconds, 1 to 1024.
    #[serde(with = "serde_text::option")]
    pub max_retry_wait: Option<Duration>,
    pub read_from_replicas: bool,
    pub protocol_version: RedisProtocol,
    /// Each node's own channel is a sharded channel (`SSUBSCRIBE`, Redis 7+),
    /// so what is sent to one node stays on the shard that owns its slot
    /// instead of crossing the cluster bus to every server.
    pub sharded_pub_sub: bool,
    /// A PEM file of the certificate authorities that sign the servers'
    /// certificates, for `rediss://` URLs (the system's roots when absent).
    pub tls_ca_path: Option<String>,
    #[serde(flatten)]
    pub pool: PoolConfig,
}

impl RedisClusterConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| {
            let urls = v.strings_min("urls", Some(vec!["redis://127.0.0.1".into()]), 1);
            for (index, url) in urls.iter().enumerate() {
                check_redis_url(v, &format!("urls[{index}]"), url);
            }
            let protocol_version = RedisProtocol::read(v);
            let config = Self {
                urls,
                timeout: v.duration_or("timeout", secs(10), millis(1), DAY),
                auth_username: v.string("authUsername"),
                auth_secret: v.secret("authSecret"),
                max_retries: v.optional_u64("maxRetries", 1, 1024),
                min_retry_wait: v.optional_duration("minRetryWait", millis(1), millis(1024)),
                max_retry_wait: v.optional_duration("maxRetryWait", millis(1), millis(1024)),
                read_from_replicas: v.bool_or("readFromReplicas", true),
                protocol_version,
                sharded_pub_sub: v.bool_or("shardedPubSub", true),
                tls_ca_path: v.string("tlsCaPath"),
                pool: PoolConfig::read(v),
            };
            check_tls_ca_path(v, &config.tls_ca_path, &config.urls);
            if let (Some(min), Some(max)) = (config.min_retry_wait, config.max_retry_wait)
                && min > max
            {
                v.error("minRetryWait", "must not be longer than maxRetryWait");
            }
            config
        })
    }
}

/// A Redis master found through Redis Sentinel, and followed when the
/// sentinels fail it over to a replica.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelConfig {
    /// The sentinels (`redis://host:26379`; `rediss://` for TLS, to the
    /// sentinels and to the Redis servers they name).
    pub urls: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub service_name: String,
    #[serde(with = "serde_text")]
    pub timeout: Duration,
    /// The user and password for the Redis servers.
    pub auth_username: Option<String>,
    pub auth_secret: Secret,
    /// The user and password for the sentinels themselves.
    pub sentinel_username: Option<String>,
    pub sentinel_secret: Secret,
    pub protocol_version: RedisProtocol,
    /// A PEM file of the certificate authorities that sign the sentinels' and
    /// servers' certificates, for `rediss://` URLs (the system's roots when absent).
    pub tls_ca_path: Option<String>,
    #[serde(flatten)]
    pub pool: PoolConfig,
}

impl RedisSentinelConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| {
            let urls = v.strings_min("urls", Some(vec!["redis://127.0.0.1:26379".into()]), 1);
            for (index, url) in urls.iter().enumerate() {
                check_redis_url(v, &format!("urls[{index}]"), url);
                if url.starts_with("redis+unix://") || url.starts_with("unix://") {
                    v.error(
                        &format!("urls[{index}]"),
                        "a sentinel is reached over TCP: expected redis:// or rediss://",
                    );
                }
            }
            let tls = |url: &String| url.starts_with("rediss://") || url.starts_with("valkeys://");
            if urls.iter().any(tls) && !urls.iter().all(tls) {
                v.error(
                    "urls",
                    "mixes TLS (rediss://) and plain (redis://) sentinels: use one or the other",
                );
            }
            let service_name = v.string("serviceName").unwrap_or_else(|| "mymaster".into());
            if service_name.is_empty() {
                v.error("serviceName", "must not be empty");
            }
            let config = Self {
                urls,
                service_name,
                timeout: v.duration_or("timeout", secs(10), millis(1), DAY),
                auth_username: v.string("authUsername"),
                auth_secret: v.secret("authSecret"),
                sentinel_username: v.string("sentinelUsername"),
                sentinel_secret: v.secret("sentinelSecret"),
                protocol_version: RedisProtocol::read(v),
                tls_ca_path: v.string("tlsCaPath"),
                pool: PoolConfig::read(v),
            };
            check_tls_ca_path(v, &config.tls_ca_path, &config.urls);
            config
        })
    }
}

/// Our own carrier: TLS RPC on TCP and gossip on UDP, on one port, no broker.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NativeConfig {
    pub bind_addr: IpAddr,
    /// TCP and UDP port number; 0 picks a free one (the gossip tells the others).
    pub port: u16,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
    pub tls_domain: Option<String>,
    #[serde(with = "serde_text")]
    pub inactivity_timeout: Duration,
    /// Connect plus handshake timeout.
    #[serde(with = "serde_text")]
    pub timeout: Duration,
    pub retries_max: u64,
    #[serde(with = "serde_text")]
    pub backoff_max: Duration,
    /// `host:port` of nodes to join through.
    pub seed_nodes: Vec<String>,
    /// `host:port` other nodes dial to reach this one.
    pub advertise_addr: Option<String>,
}

impl Default for NativeConfig {
    /// The defaults of the seed documents: `0.0.0.0:7911`, self-signed TLS,
    /// 5 min inactivity, 1 s connect timeout, 5 retries, 3 min backoff ceiling.
    fn default() -> Self {
        Self {
            bind_addr: IpAddr::from([0, 0, 0, 0]),
            port: 7911,
            cert_path: None,
            key_path: None,
            tls_domain: None,
            inactivity_timeout: millis(300_000),
            timeout: millis(1000),
            retries_max: 5,
            backoff_max: millis(180_000),
            seed_nodes: Vec::new(),
            advertise_addr: None,
        }
    }
}

impl NativeConfig {
    fn read(reader: &mut ObjectReader<'_>, name: &'static str) -> Self {
        reader.with_prefix(name, |v| {
            let bind_addr = match v.string("bindAddr") {
                None => IpAddr::from([0, 0, 0, 0]),
                Some(text) => text.parse().unwrap_or_else(|_| {
                    v.error(
                        "bindAddr",
                        format!("expected an IP address such as 0.0.0.0 or ::, found {text:?}"),
                    );
                    IpAddr::from([0, 0, 0, 0])
                }),
            };
            let config = Self {
                bind_addr,
                port: v.u64_or("port", 7911, 0, u16::MAX as u64) as u16,
                cert_path: v.string("certPath"),
                key_path: v.string("keyPath"),
                tls_domain: v.string("tlsDomain"),
                inactivity_timeout: v.duration_or(
                    "inactivityTimeout",
                    millis(300_000),
                    millis(1),
                    DAY,
                ),
                timeout: v.duration_or("timeout", millis(1000), millis(1), secs(600)),
                retries_max: v.u64_or("retriesMax", 5, 0, 1_000_000),
                backoff_max: v.duration_or("backoffMax", millis(180_000), millis(1), DAY),
                seed_nodes: v.strings_min("seedNodes", Some(Vec::new()), 0),
                advertise_addr: v.string("advertiseAddr"),
            };
            if config.cert_path.is_some() != config.key_path.is_some() {
                v.error(
                    if config.cert_path.is_some() {
                        "keyPath"
                    } else {
                        "certPath"
                    },
                    "certPath and keyPath go together: set both or neither",
                );
            }
            for (index, seed) in config.seed_nodes.iter().enumerate() {
                if !looks_like_host_port(seed) {
                    v.error(
                        &format!("seedNodes[{index}]"),
                        format!("expected host:port, found {seed:?}"),
                    );
                }
            }
            if let Some(advertise) = &config.advertise_addr
                && !looks_like_host_port(advertise)
            {
                v.error(
                    "advertiseAddr",
                    format!("expected host:port, found {advertise:?}"),
                );
            }
            config
        })
    }
}

fn looks_like_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0),
        None => false,
    }
}
