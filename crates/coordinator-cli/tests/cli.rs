//! The `coordinator` command as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn coordinator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coordinator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_config_prints_the_normalized_config_with_secrets_redacted() {
    let path = file(
        "ok.json",
        r#"{"@type":"Nats","addresses":["127.0.0.1:4222"],"authUsername":"u",
            "authSecret":{"@type":"Value","secret":"hunter2"},"clusterKey":{"@type":"Value","secret":"k3y"}}"#,
    );
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let printed: serde_json::Value = serde_json::from_str(&text).expect("JSON on stdout");
    assert_eq!(printed["@type"], "Nats");
    assert_eq!(printed["capacityClient"], 2048, "defaults filled in");
    assert_eq!(printed["timeoutRequest"], "10s");
    assert_eq!(printed["heartbeatInterval"], "250ms");
    assert!(
        !text.contains("hunter2") && !text.contains("k3y"),
        "a secret was printed:\n{text}"
    );
}

#[test]
fn check_config_takes_stalwarts_sets_and_warns_of_a_user_name_without_a_secret() {
    let path = file(
        "stalwart-nats.json",
        r#"{"@type":"Nats","addresses":{"nats1:4222":true,"nats2:4222":true},"authUsername":"stalwart"}"#,
    );
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(
        printed["addresses"],
        serde_json::json!(["nats1:4222", "nats2:4222"])
    );
    assert!(
        stderr(&output).contains("warning: nats.authUsername: ignored"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_config_exits_2_with_every_error_and_its_path() {
    let path = file(
        "bad.json",
        r#"{"@type":"Nats","capacityClient":0,"noEcho":"yes","colour":"blue"}"#,
    );
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    assert!(errors.contains("3 errors"), "{errors}");
    assert!(
        errors.contains("nats.capacityClient: must be at least 1, found 0"),
        "{errors}"
    );
    assert!(
        errors.contains("nats.noEcho: expected true or false"),
        "{errors}"
    );
    assert!(errors.contains("colour: unknown field"), "{errors}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn check_config_catches_embedded_texts_that_would_fail_at_start() {
    for (name, text, expected) in [
        (
            "zenoh.json",
            r#"{"@type":"Zenoh","config":"{ mode: 'peer', listen: { endpoints: [ "}"#,
            "zenoh.config:",
        ),
        (
            "kafka.json",
            r#"{"@type":"Kafka","brokers":["127.0.0.1:9092"],"groupId":"g","properties":{"no.such.property":"1"}}"#,
            "kafka.properties: the producer refuses them",
        ),
        (
            "nats.json",
            r#"{"@type":"Nats","userCredentials":{"@type":"Value","secret":"not a creds document"}}"#,
            "nats.userCredentials: not a NATS user credentials (.creds) document",
        ),
    ] {
        let path = file(name, text);
        let output = coordinator(&["check-config", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{name}: {}", stdout(&output));
        assert!(
            stderr(&output).contains(expected),
            "{name}: {}",
            stderr(&output)
        );
    }
    // The same carriers with texts that parse pass.
    let path = file(
        "zenoh-ok.json",
        r#"{"@type":"Zenoh","config":"{ mode: 'peer' }"}"#,
    );
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn check_config_reads_toml_and_resolves_secrets_without_printing_them() {
    let path = file(
        "missing-secret.toml",
        "\"@type\" = \"Disabled\"\n[clusterKey]\n\"@type\" = \"EnvironmentVariable\"\nvariableName = \"COORDINATOR_CLI_TEST_UNSET\"\n",
    );
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stderr(&output)
            .contains("clusterKey: environment variable COORDINATOR_CLI_TEST_UNSET is not set")
    );
    let output = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["check-config", path.to_str().unwrap()])
        .env("COORDINATOR_CLI_TEST_UNSET", "the-real-key")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stdout(&output).contains("the-real-key"));
}

#[test]
fn check_config_maps_a_legacy_stalwart_jmap_yaml_file_onto_native() {
    let path = file(
        "config.yml",
        "jmap-url: https://localhost:8080\nrpc-port: 7912\nrpc-key: legacy-secret\nseed-nodes: 10.0.0.2:7911;10.0.0.3:7911\nrpc-timeout: 2000\n",
    );
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["@type"], "Native");
    assert_eq!(printed["port"], 7912);
    assert_eq!(printed["timeout"], "2s");
    assert_eq!(printed["seedNodes"][1], "10.0.0.3:7911");
    assert!(!stdout(&output).contains("legacy-secret"));
    let bad = file("bad.yml", "rpc-port: 70000\n");
    let output = coordinator(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("rpc-port (native.port): must be at most 65535"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_config_names_an_unreadable_file_and_broken_syntax() {
    let output = coordinator(&["check-config", "/nonexistent/coordinator.json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot read /nonexistent/coordinator.json"),
        "{}",
        stderr(&output)
    );
    let path = file("broken.json", "{\"@type\": \"Nats\",");
    let output = coordinator(&["check-config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not valid JSON at line 1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn demo_runs_a_cluster_and_detects_the_killed_node() {
    let output = coordinator(&["demo"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(&output));
    assert!(text.contains("all 3 nodes see each other"), "{text}");
    assert!(
        text.contains("node 2 received \"tls certificate renewed\" from node 1"),
        "{text}"
    );
    assert!(
        text.contains("reply \"quota of alice@example.org is 2 GiB\""),
        "{text}"
    );
    assert!(
        text.contains("node 1 declares node 3 dead")
            && text.contains("node 2 declares node 3 dead"),
        "{text}"
    );
    assert!(text.contains("no healthy node was suspected"), "{text}");
}

#[test]
fn gen_cert_writes_a_certificate_and_key_that_a_native_node_starts_with() {
    let dir = std::env::temp_dir().join(format!("coordinator-gen-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
    let args = [
        "gen-cert",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--name",
        "node.cluster.test",
    ];
    let output = coordinator(&args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let again = coordinator(&args);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("exists; pass --force"),
        "{}",
        stderr(&again)
    );
    // Two nodes that check the certificate's name against tlsDomain form a cluster.
    let config = |id: u64, seed: &str| {
        format!(
            r#"{{"@type":"Native","nodeId":{id},"clusterKey":{{"@type":"Value","secret":"k"}},
               "bindAddr":"127.0.0.1","port":0,"certPath":{cert:?},"keyPath":{key:?},
               "tlsDomain":"node.cluster.test","seedNodes":[{seed}]}}"#
        )
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use coordinator::{CarrierConfig, Coordinator, CoordinatorConfig, Node, Settings};
        let first = CoordinatorConfig::from_json(&config(1, "")).unwrap();
        let CarrierConfig::Native(native) = &first.carrier else {
            unreachable!()
        };
        let settings = Settings::from_config(&first.cluster)
            .unwrap()
            .incarnation(coordinator::new_incarnation());
        let (link, transport) = coordinator_native::connect(native, &settings, Default::default())
            .await
            .unwrap();
        let first = Node::start(settings, "Native", link).unwrap();
        let seed = format!("{:?}", transport.local_addr().to_string());
        let second = CoordinatorConfig::from_json(&config(2, &seed)).unwrap();
        let second = coordinator::start(&second).await.unwrap();
        for node in [&first, &second] {
            let formed = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                coordinator::wait_for_members(node, &[1, 2]),
            )
            .await;
            assert_eq!(
                formed,
                Ok(true),
                "node {} did not see the other",
                node.node_id()
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `coordinator node` as a service manager runs it: standard input closed,
/// stopped with SIGTERM.
#[test]
fn node_runs_with_stdin_closed_and_leaves_on_sigterm() {
    let path = file("alone.json", r#"{"@type":"Disabled","nodeId":7}"#);
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["node", "--config", path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Read};
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut up = String::new();
    out.read_line(&mut up).unwrap();
    assert!(up.contains("node 7 up on Disabled"), "{up:?}");
    // Reading a closed standard input ends at once: a node that did would be gone.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node stopped when standard input was closed"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("left the cluster"), "{rest}");
    // Asked to read standard input, it leaves at its end.
    let output = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["node", "--stdin", "--config", path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("left the cluster"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn node_with_unreachable_kafka_brokers_fails_with_an_error_naming_them() {
    let path = file(
        "kafka.json",
        r#"{"@type":"Kafka","brokers":["127.0.0.1:9"],"groupId":"g","nodeId":1,"timeoutSession":"300ms"}"#,
    );
    let output = coordinator(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("kafka.brokers: no answer at 127.0.0.1:9"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bench_measures_the_memory_carrier_as_json() {
    let output = coordinator(&[
        "bench",
        "--messages",
        "2000",
        "--samples",
        "50",
        "--raft-writes",
        "500",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).expect("JSON rows");
    let tests: Vec<_> = rows
        .iter()
        .map(|r| format!("{} / {}", r["subject"], r["test"]))
        .collect();
    assert_eq!(rows.len(), 11, "{tests:?}");
    // The Raft rows: every write committed, on the carrier and on the router.
    for subject in ["Memory raft", "openraft router"] {
        let throughput = rows
            .iter()
            .find(|r| r["subject"] == subject && r["test"] == "commit throughput")
            .unwrap_or_else(|| panic!("no {subject} throughput row in {tests:?}"));
        assert_eq!(
            (throughput["count"].as_u64(), throughput["lost"].as_u64()),
            (Some(500), Some(0))
        );
        assert!(throughput["cpu_us"].as_f64().unwrap() > 0.0, "{subject}");
        let latency = rows
            .iter()
            .find(|r| r["subject"] == subject && r["test"] == "commit latency")
            .unwrap_or_else(|| panic!("no {subject} latency row in {tests:?}"));
        assert_eq!(latency["count"].as_u64(), Some(50));
    }
    let row = |test: &str| {
        rows.iter()
            .find(|r| r["subject"] == "Memory" && r["test"] == test)
            .unwrap_or_else(|| panic!("no Memory {test} row in {tests:?}"))
    };
    // Every message of each throughput run arrived, the posted ones too.
    for test in ["broadcast throughput", "send throughput", "post throughput"] {
        let throughput = row(test);
        assert_eq!(
            (throughput["count"].as_u64(), throughput["lost"].as_u64()),
            (Some(2000), Some(0)),
            "{test}"
        );
        assert!(throughput["per_second"].as_f64().unwrap() > 0.0, "{test}");
        assert!(throughput["cpu_us"].as_f64().unwrap() > 0.0, "{test}");
    }
    let latency = row("broadcast latency");
    assert!(latency["p99_us"].as_f64().unwrap() >= latency["p50_us"].as_f64().unwrap());
}

/// With rounds, the Raft runs repeat on fresh nodes (the last round's have
/// left), the carrier's and the router's alternating, and each figure is
/// printed once, the median of its rounds.
#[test]
fn bench_repeats_the_raft_runs_in_rounds_on_fresh_native_nodes() {
    let output = coordinator(&[
        "bench",
        "--carrier",
        "native",
        "--samples",
        "20",
        "--raft-writes",
        "200",
        "--rounds",
        "2",
        "--only",
        "raft",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let progress = stderr(&output);
    let runs: Vec<&str> = progress
        .lines()
        // The progress lines (openraft may log errors of its own as nodes stop).
        .filter(|line| line.starts_with("measuring") && line.contains("openraft"))
        .collect();
    assert_eq!(runs.len(), 4, "{progress}");
    for (index, run) in runs.iter().enumerate() {
        let router = run.contains("in-process router");
        assert_eq!(router, index % 2 == 1, "runs out of turn: {runs:?}");
    }
    let table = stdout(&output);
    for (subject, test) in [
        ("Native raft", "commit throughput"),
        ("Native raft", "commit latency"),
        ("openraft router", "commit throughput"),
        ("openraft router", "commit latency"),
    ] {
        let rows: Vec<&str> = table
            .lines()
            .filter(|line| line.starts_with(subject) && line.contains(test))
            .collect();
        assert_eq!(rows.len(), 1, "{subject} / {test} in:\n{table}");
        if test == "commit throughput" {
            // count 200, all of them committed (lost 0), and the CPU time
            // per commit the run took.
            let fields: Vec<&str> = rows[0].split_whitespace().collect();
            assert_eq!(fields[fields.len() - 2], "0", "{}", rows[0]);
            assert!(fields.contains(&"200"), "{}", rows[0]);
            let cpu: f64 = fields[fields.len() - 1].parse().expect("CPU µs per commit");
            assert!(cpu > 0.0, "{}", rows[0]);
        }
    }
}

#[test]
fn bench_measures_native_beside_a_raw_tls_echo() {
    let output = coordinator(&[
        "bench",
        "--carrier",
        "native",
        "--messages",
        "2000",
        "--samples",
        "50",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).expect("JSON rows");
    let row = |subject: &str, test: &str| {
        rows.iter()
            .find(|r| r["subject"] == subject && r["test"] == test)
            .unwrap_or_else(|| panic!("no {subject} / {test} row in {rows:#?}"))
    };
    for test in ["broadcast throughput", "send throughput", "post throughput"] {
        assert_eq!(row("Native", test)["lost"].as_u64(), Some(0), "{test}");
    }
    assert_eq!(
        row("raw tokio-rustls", "one-way throughput")["lost"].as_u64(),
        Some(0)
    );
    let echo = row("raw tokio-rustls", "round trip (echo)");
    let native = row("Native", "request/reply latency");
    assert!(echo["p50_us"].as_f64().unwrap() > 0.0);
    assert!(native["p99_us"].as_f64().unwrap() >= native["p50_us"].as_f64().unwrap());
}

#[test]
fn simulate_replays_one_seed_and_searches_many() {
    let one = coordinator(&["simulate", "--seed", "11", "--nodes", "4"]);
    assert_eq!(one.status.code(), Some(0), "{}", stdout(&one));
    let again = coordinator(&["simulate", "--seed", "11", "--nodes", "4"]);
    assert!(
        stdout(&one).starts_with("seed 11: 4 nodes"),
        "{}",
        stdout(&one)
    );
    assert_eq!(stdout(&one), stdout(&again), "a seed replays exactly");
    let search = coordinator(&["simulate", "--seeds", "20", "--first", "100"]);
    assert_eq!(search.status.code(), Some(0), "{}", stdout(&search));
    assert!(
        stdout(&search).starts_with("20 seeds of 5 nodes passed"),
        "{}",
        stdout(&search)
    );
}
