//! Configuration of a coordinator: a JSON (or TOML) object tagged by `@type`
//! that selects the carrier, with the settings every node needs beside it.
//!
//! Field names follow Stalwart's `Coordinator` object, so a Stalwart
//! configuration pasted as the whole file is valid as it is. Parsing reports
//! every problem at once, each with the path of its field, and unknown fields
//! are errors.

mod carriers;
pub mod duration;
mod legacy;
mod reader;
pub mod secret;

pub use carriers::*;
pub use reader::{ConfigErrors, FieldError};
pub use secret::{Secret, SecretString};

use reader::{Errors, ObjectReader};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Default cluster name, used to prefix topics, subjects, channels and keys.
pub const DEFAULT_CLUSTER: &str = "coordinator";
/// Default largest envelope, in bytes (the default maximum payload of NATS and Kafka).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1024 * 1024;

/// A whole coordinator configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorConfig {
    #[serde(flatten)]
    pub carrier: CarrierConfig,
    #[serde(flatten)]
    pub cluster: ClusterConfig,
}

/// Settings every node needs, whatever the carrier.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// This node's id; when absent, `COORDINATOR_NODE_ID` or a hash of the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Cluster name: prefixes topics, subjects, channels and key expressions so
    /// that two clusters can share a broker.
    pub cluster: String,
    /// Shared key that authenticates every envelope. `None` means no authentication.
    pub cluster_key: Secret,
    /// Also encrypt payloads (needs `clusterKey`).
    pub encrypt: bool,
    /// Whether nodes send heartbeats through the carrier (on by default).
    /// Off, a node that needs only broadcasts and messages sends nothing
    /// periodic: membership is then what the carrier's own failure detector
    /// reports (Native, Zenoh) or, on a broker, the nodes heard from
    /// (joins, answers to joins, messages) until they leave or restart, with
    /// no failure detection ([`crate::FailureDetection::Off`]).
    pub heartbeats: bool,
    /// How often a node tells the others it is alive.
    #[serde(with = "duration::serde_text")]
    pub heartbeat_interval: Duration,
    /// Silence after which a node is suspected.
    #[serde(with = "duration::serde_text")]
    pub suspect_timeout: Duration,
    /// Silence after which a node is declared dead.
    #[serde(with = "duration::serde_text")]
    pub dead_timeout: Duration,
    /// How long an out-of-order message waits for the ones before it before they
    /// are reported lost.
    #[serde(with = "duration::serde_text")]
    pub reorder_timeout: Duration,
    /// Largest envelope in bytes (payload plus about 100 bytes of header).
    pub max_message_size: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            cluster: DEFAULT_CLUSTER.into(),
            cluster_key: Secret::None,
            encrypt: false,
            heartbeats: true,
            heartbeat_interval: Duration::from_millis(250),
            suspect_timeout: Duration::from_millis(750),
            dead_timeout: Duration::from_millis(1250),
            reorder_timeout: Duration::from_millis(500),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl CoordinatorConfig {
    /// A configuration for the given carrier with every cluster setting at its default.
    pub fn new(carrier: CarrierConfig) -> Self {
        Self {
            carrier,
            cluster: ClusterConfig::default(),
        }
    }

    /// Parses a JSON text.
    pub fn from_json(text: &str) -> Result<Self, ConfigErrors> {
        let value: Value = serde_json::from_str(text).map_err(|error| {
            single(format!(
                "not valid JSON at line {}, column {}: {error}",
                error.line(),
                error.column()
            ))
        })?;
        Self::from_value(value)
    }

    /// Parses a TOML text (the same fields as JSON; `@type` must be quoted).
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|error| single(format!("not valid TOML: {}", error.to_string().trim())))?;
        let value = serde_json::to_value(table)
            .map_err(|error| single(format!("unreadable TOML: {error}")))?;
        Self::from_value(value)
    }

    /// Parses a YAML text (the same fields as JSON, or the legacy flat
    /// `rpc-*` keys of a Stalwart JMAP `config.yml`).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let value: Value = serde_norway::from_str(text)
            .map_err(|error| single(format!("not valid YAML: {error}")))?;
        Self::from_value(value)
    }

    /// Reads a file: TOML when its name ends in `.toml`, YAML for `.yaml` or
    /// `.yml`, JSON otherwise.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|error| single(format!("cannot read {}: {error}", path.display())))?;
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("toml") => Self::from_toml(&text),
            Some("yaml" | "yml") => Self::from_yaml(&text),
            _ => Self::from_json(&text),
        }
    }

    /// Reads an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, ConfigErrors> {
        let Value::Object(mut fields) = value else {
            return Err(single(
                "the configuration must be an object with an \"@type\" field",
            ));
        };
        let mut errors = Errors::default();
        let renames =
            legacy::is_legacy(&fields).then(|| legacy::translate(&mut fields, &mut errors));
        let mut reader = ObjectReader::new(&mut errors, "", fields);
        let carrier = CarrierConfig::read(&mut reader);
        let cluster = ClusterConfig::read(&mut reader);
        reader.finish();
        if let Some(renames) = renames {
            renames.apply(&mut errors.0);
        }
        match carrier {
            Some(carrier) if errors.0.is_empty() => Ok(Self { carrier, cluster }),
            _ => Err(ConfigErrors(errors.0)),
        }
    }

    /// What is accepted but will not do what it may seem to: a NATS
    /// `authUsername` without an `authSecret` is ignored (as Stalwart ignores
    /// the user name of its defaults), and so is a token beside a user name
    /// and secret (Stalwart's order); the same for a Redis user name without
    /// its secret. `check-config` prints these.
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut warnings = Vec::new();
        if let CarrierConfig::Nats(nats) = &self.carrier {
            let password = nats.auth_username.is_some() && !nats.auth_secret.is_none();
            if nats.auth_username.is_some() && nats.auth_secret.is_none() {
                warnings.push(FieldError {
                    path: "nats.authUsername".into(),
                    message: "ignored: there is no authSecret to go with it".into(),
                });
            }
            for (field, token) in [
                ("authToken", &nats.auth_token),
                ("credentials", &nats.credentials),
            ] {
                if password && !token.is_none() {
                    warnings.push(FieldError {
                        path: format!("nats.{field}"),
                        message:
                            "ignored: authUsername and authSecret are used instead (as in Stalwart)"
                                .into(),
                    });
                }
            }
        }
        let detector = matches!(
            self.carrier,
            CarrierConfig::Native(_) | CarrierConfig::Zenoh(_) | CarrierConfig::Disabled
        );
        if !self.cluster.heartbeats && !detector {
            warnings.push(FieldError {
                path: "heartbeats".into(),
                message: format!(
                    "off: the {} carrier has no failure detector of its own, so no member \
                     will be suspected or declared dead (a crashed node stays listed)",
                    self.carrier.name()
                ),
            });
        }
        let mut user_without_secret = |path: &str, user: &Option<String>, secret: &Secret| {
            if user.is_some() && secret.is_none() {
                warnings.push(FieldError {
                    path: path.into(),
                    message: "ignored: there is no secret to go with it".into(),
                });
            }
        };
        match &self.carrier {
            CarrierConfig::RedisCluster(cluster) => user_without_secret(
                "redisCluster.authUsername",
                &cluster.auth_username,
                &cluster.auth_secret,
            ),
            CarrierConfig::RedisSentinel(sentinel) => {
                user_without_secret(
                    "redisSentinel.authUsername",
                    &sentinel.auth_username,
                    &sentinel.auth_secret,
                );
                user_without_secret(
                    "redisSentinel.sentinelUsername",
                    &sentinel.sentinel_username,
                    &sentinel.sentinel_secret,
                );
            }
            _ => {}
        }
        warnings
    }

    /// Every secret of the configuration with the path of its field.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let mut secrets = vec![("clusterKey".to_string(), &self.cluster.cluster_key)];
        match &self.carrier {
            CarrierConfig::Nats(nats) => {
                secrets.push(("nats.authSecret".into(), &nats.auth_secret));
                secrets.push(("nats.authToken".into(), &nats.auth_token));
                secrets.push(("nats.credentials".into(), &nats.credentials));
                secrets.push(("nats.userCredentials".into(), &nats.user_credentials));
            }
            CarrierConfig::RedisCluster(cluster) => {
                secrets.push(("redisCluster.authSecret".into(), &cluster.auth_secret));
            }
            CarrierConfig::RedisSentinel(sentinel) => {
                secrets.push(("redisSentinel.authSecret".into(), &sentinel.auth_secret));
                secrets.push((
                    "redisSentinel.sentinelSecret".into(),
                    &sentinel.sentinel_secret,
                ));
            }
            _ => {}
        }
        secrets
    }

    /// Reads every secret (environment variables, files), reporting each one
    /// that cannot be read, without revealing any value.
    pub fn check_secrets(&self) -> Result<(), ConfigErrors> {
        let errors: Vec<FieldError> = self
            .secrets()
            .into_iter()
            .filter_map(|(path, secret)| secret.resolve(&path).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The normalized configuration as pretty JSON, defaults filled in, secrets redacted.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a configuration always serializes")
    }
}

fn single(message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![FieldError {
        path: String::new(),
        message: message.into(),
    }])
}

impl ClusterConfig {
    fn read(reader: &mut ObjectReader<'_>) -> Self {
        let defaults = Self::default();
        let node_id = reader.optional_u64("nodeId", 0, u64::MAX);
        let cluster = reader.string("cluster").unwrap_or(defaults.cluster);
        if cluster.is_empty()
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            reader.error("cluster", format!("must be letters, digits, '-' or '_' (it prefixes topic and subject names), found {cluster:?}"));
        }
        let cluster_key = reader.secret("clusterKey");
        let encrypt = reader.bool_or("encrypt", false);
        if encrypt && cluster_key.is_none() {
            reader.error("encrypt", "needs clusterKey to be set");
        }
        let millis = Duration::from_millis;
        let heartbeats = reader.bool_or("heartbeats", defaults.heartbeats);
        let heartbeat_interval = reader.duration_or(
            "heartbeatInterval",
            defaults.heartbeat_interval,
            millis(10),
            millis(60_000),
        );
        let suspect_timeout = reader.duration_or(
            "suspectTimeout",
            defaults.suspect_timeout,
            millis(10),
            millis(600_000),
        );
        let dead_timeout = reader.duration_or(
            "deadTimeout",
            defaults.dead_timeout,
            millis(10),
            millis(3_600_000),
        );
        let reorder_timeout = reader.duration_or(
            "reorderTimeout",
            defaults.reorder_timeout,
            millis(1),
            millis(60_000),
        );
        let max_message_size = reader.u64_or(
            "maxMessageSize",
            defaults.max_message_size,
            1024,
            64 * 1024 * 1024,
        );
        if suspect_timeout <= heartbeat_interval {
            reader.error("suspectTimeout", "must be longer than heartbeatInterval");
        }
        if dead_timeout <= suspect_timeout {
            reader.error("deadTimeout", "must be longer than suspectTimeout");
        }
        Self {
            node_id,
            cluster,
            cluster_key,
            encrypt,
            heartbeats,
            heartbeat_interval,
            suspect_timeout,
            dead_timeout,
            reorder_timeout,
            max_message_size,
        }
    }

    /// This node's id: `nodeId`, else `COORDINATOR_NODE_ID`, else a stable hash of the host name.
    pub fn resolve_node_id(&self) -> Result<u64, String> {
        if let Some(id) = self.node_id {
            return Ok(id);
        }
        if let Ok(text) = std::env::var("COORDINATOR_NODE_ID") {
            return text.trim().parse().map_err(|_| {
                format!("nodeId: COORDINATOR_NODE_ID must be a whole number, found {text:?}")
            });
        }
        let host = hostname().ok_or_else(|| {
            "nodeId: not set, COORDINATOR_NODE_ID is not set and the host name cannot be read"
                .to_string()
        })?;
        Ok(node_id_from_name(&host))
    }
}

fn hostname() -> Option<String> {
    let from_env = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.trim().is_empty());
    from_env
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// A stable node id from a name (the first 8 bytes of its SHA-256).
pub fn node_id_from_name(name: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests;
