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
        (r.read_from_replicas, r.protocol_version),
        (true, RedisProtocol::Resp2)
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
            "@type: is required: one of Disabled, Kafka, Nats, Zenoh, Redis, RedisCluster, Native"
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
