use super::*;
use serde_json::json;

fn errors(value: serde_json::Value) -> Vec<String> {
    CoordinatorConfig::from_value(value)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_stalwart_nats_object_is_valid_as_it_is() {
    let text = r#"{
      "@type": "Nats",
      "addresses": ["nats1:4222", "nats2:4222"],
      "authUsername": "nats-user",
      "authSecret": {"@type": "Value", "secret": "nats-password"},
      "pingInterval": "60s", "noEcho": true, "useTls": false,
      "timeoutConnection": "5s", "timeoutRequest": "10s",
      "capacityClient": 2048, "capacitySubscription": 65536, "capacityReadBuffer": 65535,
      "maxReconnects": null, "credentials": {"@type": "None"}
    }"#;
    let config = CoordinatorConfig::from_json(text).unwrap();
    let CarrierConfig::Nats(nats) = &config.carrier else {
        panic!("not NATS: {config:?}")
    };
    assert_eq!(nats.addresses, vec!["nats1:4222", "nats2:4222"]);
    assert_eq!(nats.auth_username.as_deref(), Some("nats-user"));
    assert_eq!(nats.max_reconnects, None);
    assert_eq!(config.cluster, ClusterConfig::default());
}

#[test]
fn defaults_are_filled_in_for_every_carrier() {
    let c = CoordinatorConfig::from_value(
        json!({"@type": "Kafka", "brokers": ["k:9092"], "groupId": "g"}),
    )
    .unwrap();
    let CarrierConfig::Kafka(k) = c.carrier else {
        panic!()
    };
    assert_eq!(
        (k.timeout_message, k.timeout_session),
        (Duration::from_secs(5), Duration::from_secs(5))
    );

    let c = CoordinatorConfig::from_value(json!({"@type": "Nats"})).unwrap();
    let CarrierConfig::Nats(n) = c.carrier else {
        panic!()
    };
    assert_eq!(
        (
            n.capacity_client,
            n.capacity_read_buffer,
            n.capacity_subscription
        ),
        (2048, 65535, 65536)
    );
    assert_eq!(
        (n.no_echo, n.use_tls, n.ping_interval),
        (true, false, Duration::from_secs(60))
    );
    assert_eq!(
        (n.timeout_connection, n.timeout_request),
        (Duration::from_secs(5), Duration::from_secs(10))
    );

    let c = CoordinatorConfig::from_value(json!({"@type": "Redis"})).unwrap();
    let CarrierConfig::Redis(r) = c.carrier else {
        panic!()
    };
    assert_eq!(
        (r.url.as_str(), r.timeout, r.pool.pool_max_connections),
        ("redis://127.0.0.1", Duration::from_secs(10), 10)
    );
    assert_eq!(r.pool.pool_timeout_wait, Some(Duration::from_secs(30)));

    let c = CoordinatorConfig::from_value(json!({"@type": "RedisCluster"})).unwrap();
    let CarrierConfig::RedisCluster(r) = c.carrier else {
        panic!()
    };
    assert_eq!(
        (r.read_from_replicas, r.protocol_version, r.sharded_pub_sub),
        (true, RedisProtocol::Resp2, true)
    );
    assert_eq!(r.urls, vec!["redis://127.0.0.1"]);

    let c = CoordinatorConfig::from_value(json!({"@type": "Native"})).unwrap();
    let CarrierConfig::Native(n) = c.carrier else {
        panic!()
    };
    assert_eq!(
        (n.bind_addr.to_string().as_str(), n.port, n.retries_max),
        ("0.0.0.0", 7911, 5)
    );
    assert_eq!(
        (n.timeout, n.inactivity_timeout, n.backoff_max),
        (
            Duration::from_millis(1000),
            Duration::from_secs(300),
            Duration::from_secs(180)
        )
    );

    assert_eq!(
        CoordinatorConfig::from_value(json!({"@type": "Disabled"}))
            .unwrap()
            .carrier,
        CarrierConfig::Disabled
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let found = errors(json!({
        "@type": "Nats",
        "capacityClient": 0,
        "timeoutRequest": "soon",
        "noEcho": "yes",
        "addresses": [],
        "heartbeatInterval": "1s",
        "suspectTimeout": "500ms",
        "colour": "blue",
    }));
    assert!(
        found.contains(&"nats.capacityClient: must be at least 1, found 0".to_string()),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("nats.timeoutRequest: expected a duration")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("nats.noEcho: expected true or false")),
        "{found:#?}"
    );
    assert!(
        found.contains(&"nats.addresses: must list at least 1, found 0".to_string()),
        "{found:#?}"
    );
    assert!(
        found.contains(&"suspectTimeout: must be longer than heartbeatInterval".to_string()),
        "{found:#?}"
    );
    assert!(
        found.contains(&"colour: unknown field".to_string()),
        "{found:#?}"
    );
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn required_fields_and_bounds() {
    let found = errors(json!({"@type": "Kafka"}));
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("kafka.brokers: is required")),
        "{found:#?}"
    );
    assert!(
        found.contains(&"kafka.groupId: is required".to_string()),
        "{found:#?}"
    );
    let found = errors(json!({"@type": "Redis", "poolMaxConnections": 9000, "url": "http://x"}));
    assert!(
        found.contains(&"redis.poolMaxConnections: must be at most 8192, found 9000".to_string()),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("redis.url: expected a redis://")),
        "{found:#?}"
    );
    let found = errors(
        json!({"@type": "RedisCluster", "protocolVersion": "resp4", "maxRetries": 0, "maxRetryWait": "2s"}),
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("redisCluster.protocolVersion")),
        "{found:#?}"
    );
    let found = errors(json!({"@type": "Zenoh"}));
    assert_eq!(found, vec!["zenoh.config: is required"]);
    let found = errors(
        json!({"@type": "Native", "certPath": "/c.pem", "seedNodes": ["10.0.0.1"], "bindAddr": "x"}),
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("native.seedNodes[0]: expected host:port")),
        "{found:#?}"
    );
}

#[test]
fn secrets_are_checked_and_unknown_secret_fields_reported() {
    let found = errors(
        json!({"@type": "Nats", "authSecret": {"@type": "Value"}, "credentials": {"@type": "Magic"},
                              "clusterKey": {"@type": "File", "filePath": "/k", "mode": 1}}),
    );
    assert!(
        found.contains(&"nats.authSecret.secret: is required".to_string()),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("nats.credentials.@type: unknown secret type \"Magic\"")),
        "{found:#?}"
    );
    assert!(
        found.contains(&"clusterKey.mode: unknown field".to_string()),
        "{found:#?}"
    );
    let config = CoordinatorConfig::from_value(
        json!({"@type": "Nats", "credentials": {"@type": "Text", "secret": "jwt"}}),
    )
    .unwrap();
    let CarrierConfig::Nats(nats) = config.carrier else {
        panic!()
    };
    assert!(matches!(nats.credentials, Secret::Value(_)));
}

#[test]
fn missing_or_unknown_type_is_explained() {
    assert_eq!(
        errors(json!({})),
        vec![
            "@type: is required: one of Disabled, Kafka, Nats, Zenoh, Redis, RedisCluster, RedisSentinel, Native"
        ]
    );
    assert!(errors(json!({"@type": "Mqtt"}))[0].contains("unknown carrier \"Mqtt\""));
    assert!(errors(json!({"@type": "Default"}))[0].contains("in-memory store"));
    let found = errors(json!({"@type": "Mqtt", "nodeId": -1}));
    assert_eq!(
        found.len(),
        2,
        "cluster fields are still checked: {found:#?}"
    );
}

#[test]
fn common_settings_parse_and_durations_take_every_form() {
    let config = CoordinatorConfig::from_value(json!({
        "@type": "Disabled", "nodeId": 3, "cluster": "mail-eu", "heartbeatInterval": 100,
        "suspectTimeout": "300ms", "deadTimeout": "1s", "clusterKey": {"@type": "Value", "secret": "k"}, "encrypt": true
    })).unwrap();
    assert_eq!(config.cluster.node_id, Some(3));
    assert_eq!(config.cluster.cluster, "mail-eu");
    assert_eq!(
        config.cluster.heartbeat_interval,
        Duration::from_millis(100)
    );
    assert_eq!(config.cluster.dead_timeout, Duration::from_secs(1));
    assert!(
        errors(json!({"@type": "Disabled", "encrypt": true}))[0]
            .starts_with("encrypt: needs clusterKey")
    );
    assert!(
        errors(json!({"@type": "Disabled", "cluster": "a b"}))[0]
            .starts_with("cluster: must be letters")
    );
}

#[test]
fn toml_reads_the_same_fields() {
    let config = CoordinatorConfig::from_toml(
        "\"@type\" = \"Redis\"\nurl = \"redis://10.0.0.5:6380\"\npoolMaxConnections = 20\nnodeId = 4\n",
    )
    .unwrap();
    let CarrierConfig::Redis(redis) = config.carrier else {
        panic!()
    };
    assert_eq!(
        (redis.url.as_str(), redis.pool.pool_max_connections),
        ("redis://10.0.0.5:6380", 20)
    );
    let error = CoordinatorConfig::from_toml("\"@type\" = ").unwrap_err();
    assert!(error.to_string().starts_with("not valid TOML"), "{error}");
    let error = CoordinatorConfig::from_json("{\"@type\": ").unwrap_err();
    assert!(
        error.to_string().starts_with("not valid JSON at line 1"),
        "{error}"
    );
}

#[test]
fn normalized_output_redacts_secrets_and_reads_back_the_same() {
    let config = CoordinatorConfig::from_value(json!({
        "@type": "RedisCluster", "authSecret": {"@type": "Value", "secret": "p4ss"}, "minRetryWait": 10,
        "clusterKey": {"@type": "EnvironmentVariable", "variableName": "CLUSTER_KEY"}
    })).unwrap();
    let text = config.to_json_pretty();
    assert!(!text.contains("p4ss"), "{text}");
    assert!(text.contains("\"@type\": \"RedisCluster\""), "{text}");
    assert!(text.contains("\"minRetryWait\": \"10ms\""), "{text}");
    let back = CoordinatorConfig::from_json(&text.replace("<redacted>", "p4ss")).unwrap();
    assert_eq!(back, config);
}

#[test]
fn node_id_is_derived_when_absent() {
    let config = ClusterConfig {
        node_id: Some(9),
        ..ClusterConfig::default()
    };
    assert_eq!(config.resolve_node_id().unwrap(), 9);
    assert_eq!(
        node_id_from_name("mx1.example.org"),
        node_id_from_name("mx1.example.org")
    );
    assert_ne!(
        node_id_from_name("mx1.example.org"),
        node_id_from_name("mx2.example.org")
    );
}

#[test]
fn check_secrets_names_every_unreadable_secret() {
    let config = CoordinatorConfig::from_value(json!({
        "@type": "Nats",
        "authUsername": "u",
        "authSecret": {"@type": "EnvironmentVariable", "variableName": "COORDINATOR_TEST_UNSET_PASSWORD"},
        "credentials": {"@type": "File", "filePath": "/nonexistent/user.creds"},
        "clusterKey": {"@type": "Value", "secret": "fine"}
    }))
    .unwrap();
    let found: Vec<String> = config
        .check_secrets()
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0]
            .starts_with("nats.authSecret: environment variable COORDINATOR_TEST_UNSET_PASSWORD"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("nats.credentials: cannot read file /nonexistent/user.creds"),
        "{found:#?}"
    );
}

#[test]
fn a_legacy_stalwart_jmap_yaml_file_maps_onto_native() {
    let text = "\
db-path: /var/lib/stalwart-jmap
jmap-url: https://localhost:8080
seed-nodes: 10.0.0.2:7911;10.0.0.3:7911
rpc-bind-addr: 10.0.0.1
rpc-advertise-addr: 10.0.0.1:7911
rpc-port: 7912
rpc-key: s3cret
rpc-cert-path: /etc/rpc.crt
rpc-key-path: /etc/rpc.key
rpc-tls-domain: example.org
rpc-inactivity-timeout: 60000
rpc-timeout: 2000
rpc-retries-max: 7
rpc-backoff-max: 90000
peer-ping-interval: 500
raft-election-timeout: 1000
nodeId: 3
";
    let config = CoordinatorConfig::from_yaml(text).unwrap();
    let CarrierConfig::Native(native) = &config.carrier else {
        panic!("{config:?}")
    };
    let expected = NativeConfig {
        bind_addr: "10.0.0.1".parse().unwrap(),
        port: 7912,
        cert_path: Some("/etc/rpc.crt".into()),
        key_path: Some("/etc/rpc.key".into()),
        tls_domain: Some("example.org".into()),
        inactivity_timeout: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
        retries_max: 7,
        backoff_max: Duration::from_secs(90),
        seed_nodes: vec!["10.0.0.2:7911".into(), "10.0.0.3:7911".into()],
        advertise_addr: Some("10.0.0.1:7911".into()),
    };
    assert_eq!(native, &expected);
    assert_eq!(config.cluster.node_id, Some(3));
    let key = config.cluster.cluster_key.resolve("clusterKey").unwrap();
    assert_eq!(key.as_ref().map(SecretString::expose), Some("s3cret"));
}

#[test]
fn legacy_keys_work_in_toml_and_rpc_tls_domain_false_means_none() {
    let config =
        CoordinatorConfig::from_toml("rpc-port = 7911\nrpc-tls-domain = false\nrpc-key = \"k\"\n")
            .unwrap();
    let CarrierConfig::Native(native) = config.carrier else {
        panic!()
    };
    assert_eq!((native.port, native.tls_domain), (7911, None));
}

#[test]
fn legacy_key_errors_name_the_key_the_user_wrote() {
    let found = CoordinatorConfig::from_yaml(
        "rpc-port: 70000\nrpc-timeout: soon\nrpc-prot: 1\nseed-nodes: 10.0.0.2\nrpc-retries-max: 2\nretriesMax: 3\n",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "rpc-port (native.port): must be at most 65535",
        "rpc-timeout (native.timeout): expected a duration",
        "rpc-prot: unknown legacy cluster key",
        "seed-nodes[0] (native.seedNodes[0]): expected host:port",
        "rpc-retries-max: is also given as \"retriesMax\"",
    ] {
        assert!(found.contains(expected), "{expected:?} not in:\n{found}");
    }
    let mixed = CoordinatorConfig::from_yaml("\"@type\": Nats\nrpc-port: 7911\n")
        .unwrap_err()
        .to_string();
    assert!(
        mixed.contains("@type: is \"Nats\", but the legacy key \"rpc-port\""),
        "{mixed}"
    );
    let bad = CoordinatorConfig::from_yaml("rpc-port: [")
        .unwrap_err()
        .to_string();
    assert!(bad.starts_with("not valid YAML"), "{bad}");
}

#[test]
fn from_file_reads_yaml_by_extension() {
    let dir = std::env::temp_dir().join(format!("coordinator-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    std::fs::write(&path, "\"@type\": Disabled\ncluster: mail\n").unwrap();
    let config = CoordinatorConfig::from_file(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        (config.carrier, config.cluster.cluster.as_str()),
        (CarrierConfig::Disabled, "mail")
    );
}

#[test]
fn kafka_latency_security_and_topic_fields() {
    let c = CoordinatorConfig::from_value(
        json!({"@type": "Kafka", "brokers": ["k:9092"], "groupId": "g"}),
    )
    .unwrap();
    let CarrierConfig::Kafka(k) = c.carrier else {
        panic!()
    };
    assert_eq!(k.fetch_wait_max, Duration::from_millis(5));
    assert_eq!(k.linger, Duration::ZERO);
    assert_eq!((k.partitions, k.replication_factor), (1, None));
    assert_eq!(k.retention, Duration::from_secs(3600));
    assert!(k.security_protocol.is_none() && k.properties.is_empty());

    let c = CoordinatorConfig::from_value(json!({
        "@type": "Kafka", "brokers": ["k:9093"], "groupId": "g",
        "securityProtocol": "SASL_SSL", "saslMechanism": "scram-sha-512",
        "saslUsername": "u", "saslPassword": {"@type": "Value", "secret": "p"},
        "fetchWaitMax": "5ms", "linger": 2, "partitions": 3, "replicationFactor": 3,
        "properties": {"socket.timeout.ms": 30000, "client.rack": "a"}
    }))
    .unwrap();
    let CarrierConfig::Kafka(k) = c.carrier else {
        panic!()
    };
    assert_eq!(k.security_protocol.as_deref(), Some("sasl_ssl"));
    assert_eq!(k.sasl_mechanism.as_deref(), Some("SCRAM-SHA-512"));
    assert_eq!(k.fetch_wait_max, Duration::from_millis(5));
    assert_eq!(k.linger, Duration::from_millis(2));
    assert_eq!((k.partitions, k.replication_factor), (3, Some(3)));
    assert_eq!(k.properties["socket.timeout.ms"], "30000");

    let found = errors(json!({
        "@type": "Kafka", "brokers": ["k"], "groupId": "g",
        "securityProtocol": "tls", "saslUsername": "u", "properties": {"a": [1]}
    }));
    for expected in [
        "kafka.securityProtocol: must be one of plaintext, ssl, sasl_plaintext, sasl_ssl, found \"tls\"",
        "kafka.securityProtocol: must be sasl_plaintext or sasl_ssl when saslMechanism or saslUsername is set",
        "kafka.saslPassword: and saslUsername go together: set both or neither",
        "kafka.properties.a: expected a string, found an array",
    ] {
        assert!(
            found.contains(&expected.to_string()),
            "{expected}\n{found:#?}"
        );
    }
}

#[test]
fn a_tls_authority_needs_a_tls_url() {
    let expected = "tlsCaPath: is set, but no URL is a TLS one (rediss://): it would not be used";
    let found = errors(json!({"@type": "Redis", "url": "redis://10.0.0.1", "tlsCaPath": "ca.pem"}));
    assert!(found.contains(&format!("redis.{expected}")), "{found:#?}");
    let found = errors(json!({
        "@type": "RedisCluster",
        "urls": ["redis://10.0.0.1", "redis://10.0.0.2"],
        "tlsCaPath": "ca.pem",
    }));
    assert!(
        found.contains(&format!("redisCluster.{expected}")),
        "{found:#?}"
    );
    let c = CoordinatorConfig::from_value(
        json!({"@type": "Redis", "url": "rediss://10.0.0.1", "tlsCaPath": "ca.pem"}),
    )
    .unwrap();
    let CarrierConfig::Redis(r) = c.carrier else {
        panic!()
    };
    assert_eq!(r.tls_ca_path.as_deref(), Some("ca.pem"));
}

#[test]
fn lists_also_take_stalwarts_set_form() {
    // As Stalwart writes its NATS, Kafka and Redis Cluster examples.
    let c = CoordinatorConfig::from_value(json!({
        "@type": "Nats",
        "addresses": {"nats2:4222": true, "nats1:4222": true, "old:4222": false}
    }))
    .unwrap();
    let CarrierConfig::Nats(n) = c.carrier else {
        panic!()
    };
    assert_eq!(n.addresses, vec!["nats1:4222", "nats2:4222"]);
    let c = CoordinatorConfig::from_value(
        json!({"@type": "Kafka", "brokers": {"k1:9092": true}, "groupId": "g"}),
    )
    .unwrap();
    let CarrierConfig::Kafka(k) = c.carrier else {
        panic!()
    };
    assert_eq!(k.brokers, vec!["k1:9092"]);
    // A set entry that is not true or false is named, with the list's path.
    let found = errors(json!({"@type": "Nats", "addresses": {"nats1:4222": "yes"}}));
    assert!(
        found
            .iter()
            .any(|e| e.contains("addresses.nats1:4222") && e.contains("expected true or false")),
        "{found:?}"
    );
    // A set with nothing in it is a list of none.
    let found = errors(json!({"@type": "Kafka", "brokers": {"k1:9092": false}, "groupId": "g"}));
    assert!(found.iter().any(|e| e.contains("brokers")), "{found:?}");
}

#[test]
fn a_nats_user_name_without_a_secret_is_ignored_with_a_warning() {
    // Stalwart's NATS defaults carry a user name and no secret.
    let config =
        CoordinatorConfig::from_value(json!({"@type": "Nats", "authUsername": "stalwart"}))
            .unwrap();
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec!["nats.authUsername: ignored: there is no authSecret to go with it"]
    );
    let config = CoordinatorConfig::from_value(json!({
        "@type": "Nats", "authUsername": "stalwart",
        "authSecret": {"@type": "Value", "secret": "pw"}
    }))
    .unwrap();
    assert!(config.warnings().is_empty());
}

#[test]
fn stalwarts_default_store_is_refused_by_name() {
    let found = errors(json!({"@type": "Default"}));
    assert!(found[0].contains("Stalwart's in-memory store"), "{found:?}");
}

#[test]
fn redis_sentinel_reads_stalwarts_fields_and_defaults() {
    let config = CoordinatorConfig::from_value(json!({
        "@type": "RedisSentinel",
        "urls": {"redis://10.0.0.1:26379": true, "redis://10.0.0.2:26379": true},
        "serviceName": "mail",
        "timeout": 2500,
        "authUsername": "app",
        "authSecret": {"@type": "Value", "secret": "pw"},
        "sentinelUsername": "watcher",
        "sentinelSecret": {"@type": "Value", "secret": "spw"},
        "protocolVersion": "resp3",
        "poolMaxConnections": 4
    }))
    .unwrap();
    let CarrierConfig::RedisSentinel(sentinel) = &config.carrier else {
        panic!("{:?}", config.carrier)
    };
    assert_eq!(
        sentinel.urls,
        vec!["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
    );
    assert_eq!(sentinel.service_name, "mail");
    assert_eq!(sentinel.timeout, Duration::from_millis(2500));
    assert_eq!(sentinel.protocol_version, RedisProtocol::Resp3);
    assert_eq!(sentinel.pool.pool_max_connections, 4);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    let secrets: Vec<String> = config.secrets().into_iter().map(|(path, _)| path).collect();
    assert!(secrets.contains(&"redisSentinel.sentinelSecret".to_string()));
    // Nothing given: Stalwart's defaults.
    let config = CoordinatorConfig::from_value(json!({"@type": "RedisSentinel"})).unwrap();
    let CarrierConfig::RedisSentinel(sentinel) = &config.carrier else {
        panic!("{:?}", config.carrier)
    };
    assert_eq!(sentinel.urls, vec!["redis://127.0.0.1:26379"]);
    assert_eq!(sentinel.service_name, "mymaster");
    assert_eq!(sentinel.timeout, Duration::from_secs(10));
    // A user name without its secret is ignored, with a warning.
    let config = CoordinatorConfig::from_value(
        json!({"@type": "RedisSentinel", "authUsername": "stalwart", "sentinelUsername": "s"}),
    )
    .unwrap();
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "redisSentinel.authUsername: ignored: there is no secret to go with it",
            "redisSentinel.sentinelUsername: ignored: there is no secret to go with it",
        ]
    );
}

#[test]
fn redis_sentinel_refuses_what_cannot_reach_a_sentinel() {
    let found = errors(json!({
        "@type": "RedisSentinel",
        "urls": ["redis+unix:///tmp/s.sock", "http://10.0.0.1"],
        "serviceName": ""
    }));
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("redisSentinel.urls[0]: a sentinel is reached over TCP")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("redisSentinel.urls[1]: expected a redis://")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e == "redisSentinel.serviceName: must not be empty"),
        "{found:?}"
    );
    let found = errors(json!({
        "@type": "RedisSentinel",
        "urls": ["redis://10.0.0.1:26379", "rediss://10.0.0.2:26379"]
    }));
    assert!(
        found[0].starts_with("redisSentinel.urls: mixes TLS"),
        "{found:?}"
    );
}

#[test]
fn nats_tokens_one_at_a_time_and_after_a_password() {
    // `credentials` is a token as `authToken` is: one of them, not both.
    let found = errors(json!({
        "@type": "Nats",
        "authToken": {"@type": "Value", "secret": "t1"},
        "credentials": {"@type": "Value", "secret": "t2"}
    }));
    assert_eq!(
        found,
        vec!["nats.credentials: is a token, as authToken is: set one of them, not both"]
    );
    // Beside a user name and its secret, a token is not used (Stalwart's order).
    let config = CoordinatorConfig::from_value(json!({
        "@type": "Nats", "authUsername": "u",
        "authSecret": {"@type": "Value", "secret": "pw"},
        "credentials": {"@type": "Value", "secret": "t"}
    }))
    .unwrap();
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "nats.credentials: ignored: authUsername and authSecret are used instead (as in Stalwart)"
        ]
    );
}

#[test]
fn heartbeats_can_be_turned_off_and_check_config_says_what_that_costs() {
    let config =
        CoordinatorConfig::from_value(json!({"@type": "Nats", "heartbeats": false})).unwrap();
    assert!(!config.cluster.heartbeats);
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("heartbeats: off: the Nats carrier has no failure detector")),
        "{warnings:?}"
    );
    // Native keeps its own detector: nothing to warn of.
    let config =
        CoordinatorConfig::from_value(json!({"@type": "Native", "heartbeats": false})).unwrap();
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    let config = CoordinatorConfig::from_value(json!({"@type": "Nats"})).unwrap();
    assert!(config.cluster.heartbeats);
    assert!(errors(json!({"@type": "Nats", "heartbeats": "no"}))[0].starts_with("heartbeats:"));
}
