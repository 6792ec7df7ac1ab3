//! The flat cluster keys of the older Stalwart JMAP server (`rpc-port: 7911`,
//! `seed-nodes: a:7912;b:7913`, …), accepted in a YAML or TOML file and mapped
//! onto the `Native` carrier.
//!
//! A file is read as legacy when it holds at least one of the keys below. Its
//! other keys belong to the rest of that server's configuration (`jmap-url`,
//! `db-path`, …) and are ignored, except unknown `rpc-*` keys, which are
//! reported so that a misspelt cluster setting is never silently dropped.
//! Errors name the legacy key together with the field it maps to.

use super::reader::{Errors, FieldError};
use serde_json::{Map, Value};

/// Legacy key, the `Native` (or cluster) field it becomes.
const MAPPED: &[(&str, &str, &str)] = &[
    ("rpc-bind-addr", "bindAddr", "native.bindAddr"),
    ("rpc-port", "port", "native.port"),
    (
        "rpc-advertise-addr",
        "advertiseAddr",
        "native.advertiseAddr",
    ),
    ("rpc-cert-path", "certPath", "native.certPath"),
    ("rpc-key-path", "keyPath", "native.keyPath"),
    ("rpc-tls-domain", "tlsDomain", "native.tlsDomain"),
    (
        "rpc-inactivity-timeout",
        "inactivityTimeout",
        "native.inactivityTimeout",
    ),
    ("rpc-timeout", "timeout", "native.timeout"),
    ("rpc-retries-max", "retriesMax", "native.retriesMax"),
    ("rpc-backoff-max", "backoffMax", "native.backoffMax"),
    ("seed-nodes", "seedNodes", "native.seedNodes"),
    ("rpc-key", "clusterKey", "clusterKey"),
    ("rpc-frame-max", "maxMessageSize", "maxMessageSize"),
];

/// Legacy cluster keys that have no equivalent here: Raft timing belongs to
/// the Raft library, and the ping interval is replaced by `heartbeatInterval`,
/// whose default detects a dead node faster.
const IGNORED: &[&str] = &[
    "peer-ping-interval",
    "raft-batch-max",
    "raft-commit-timeout",
    "raft-election-timeout",
];

/// Where a field's value came from, so errors can name the key the user wrote.
pub(crate) struct Renames(Vec<(&'static str, &'static str)>);

impl Renames {
    /// Rewrites `native.port: …` into `rpc-port (native.port): …`.
    pub fn apply(&self, errors: &mut [FieldError]) {
        for error in errors {
            for (legacy, path) in &self.0 {
                if let Some(rest) = error.path.strip_prefix(path)
                    && (rest.is_empty() || rest.starts_with('['))
                {
                    error.path = format!("{legacy}{rest} ({})", error.path);
                    break;
                }
            }
        }
    }
}

/// Whether `fields` is a legacy file.
pub(crate) fn is_legacy(fields: &Map<String, Value>) -> bool {
    MAPPED
        .iter()
        .any(|(legacy, ..)| fields.contains_key(*legacy))
}

/// Turns a legacy object into a `Native` one in place.
pub(crate) fn translate(fields: &mut Map<String, Value>, errors: &mut Errors) -> Renames {
    let mut renames = Vec::new();
    match fields.get("@type") {
        None => {
            fields.insert("@type".into(), Value::String("Native".into()));
        }
        Some(Value::String(kind)) if kind == "Native" => {}
        Some(other) => {
            let legacy = MAPPED
                .iter()
                .find(|(legacy, ..)| fields.contains_key(*legacy))
                .map_or("rpc-*", |(legacy, ..)| legacy);
            errors.push(
                "@type",
                format!("is {other}, but the legacy key {legacy:?} configures the Native carrier: remove one of them"),
            );
        }
    }
    for &(legacy, modern, path) in MAPPED {
        let Some(value) = fields.remove(legacy) else {
            continue;
        };
        if fields.contains_key(modern) {
            errors.push(
                legacy,
                format!("is also given as {modern:?}: keep only one of them"),
            );
            continue;
        }
        let value = match (legacy, value) {
            // `rpc-tls-domain: false` meant "no domain" (self-signed certificates).
            ("rpc-tls-domain", Value::Bool(false)) => continue,
            // `seed-nodes: a:7912;b:7913`
            ("seed-nodes", Value::String(text)) => Value::Array(
                text.split([';', ','])
                    .map(str::trim)
                    .filter(|seed| !seed.is_empty())
                    .map(|seed| Value::String(seed.into()))
                    .collect(),
            ),
            // `rpc-key: <text>` was the shared secret itself.
            ("rpc-key", Value::String(text)) => {
                serde_json::json!({"@type": "Value", "secret": text})
            }
            (_, value) => value,
        };
        fields.insert(modern.into(), value);
        renames.push((legacy, path));
    }
    for key in IGNORED {
        fields.remove(*key);
    }
    let unknown_rpc: Vec<String> = fields
        .keys()
        .filter(|key| key.starts_with("rpc-"))
        .cloned()
        .collect();
    for key in unknown_rpc {
        fields.remove(&key);
        let known: Vec<&str> = MAPPED.iter().map(|(legacy, ..)| *legacy).collect();
        errors.push(
            key,
            format!(
                "unknown legacy cluster key; known ones: {}",
                known.join(", ")
            ),
        );
    }
    // The rest of a legacy file configures the rest of that server.
    fields.retain(|key, _| !key.contains('-'));
    Renames(renames)
}
