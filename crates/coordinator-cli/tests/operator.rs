//! An operator's view of a running cluster: three `coordinator node`
//! processes on the Native carrier, each with an admin address; `coordinator
//! members` run against one of them, once, as JSON, and watching while a
//! node is killed; its Prometheus metrics scraped and parsed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// A loopback port free for TCP and UDP a moment ago (Native uses both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A `coordinator node` process, its standard output read line by line.
struct NodeProcess {
    child: Child,
    /// Kept so that the reading thread goes on (a node whose output pipe
    /// filled up would block).
    _lines: mpsc::Receiver<String>,
    admin: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Waits for a line `wanted` accepts, within `limit`.
fn wait_line(
    lines: &mpsc::Receiver<String>,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    while let Some(left) = limit.checked_sub(started.elapsed()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no such line within {limit:?}");
}

/// `coordinator node --config PATH --admin 127.0.0.1:0` with `env`, its
/// standard output read line by line until it prints its admin address.
fn spawn_node(path: &std::path::Path, env: &[(&str, &str)], stderr: Stdio) -> NodeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["node", "--config", path.to_str().unwrap()])
        .args(["--admin", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let lines = spawn_lines(&mut child);
    let line = wait_line(&lines, LONG, |line| line.starts_with("admin: http://"));
    let admin = line
        .trim_start_matches("admin: http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    NodeProcess {
        child,
        _lines: lines,
        admin,
    }
}

fn start_node(dir: &std::path::Path, id: u64, ports: &[u16]) -> NodeProcess {
    let seeds: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(index, _)| *index as u64 + 1 != id)
        .map(|(_, port)| format!("\"127.0.0.1:{port}\""))
        .collect();
    let path: PathBuf = dir.join(format!("node{id}.json"));
    std::fs::write(
        &path,
        format!(
            r#"{{"@type":"Native","nodeId":{id},"bindAddr":"127.0.0.1","port":{},
                "seedNodes":[{}],"clusterKey":{{"@type":"Value","secret":"operator-test"}}}}"#,
            ports[id as usize - 1],
            seeds.join(",")
        ),
    )
    .unwrap();
    spawn_node(&path, &[], Stdio::null())
}

fn members(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("members")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Sends `request` to the admin address; the answer's head and body (empty
/// when the node cut the connection off: a reset is no answer).
fn ask(admin: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    let _ = stream.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_string(), body.to_string())
}

fn scrape(admin: &str) -> prometheus_parse::Scrape {
    let (head, body) = ask(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_string())))
        .expect("Prometheus text")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> Option<f64> {
    let sample = scrape
        .samples
        .iter()
        .find(|sample| sample.metric == name && sample.labels.get(label.0) == Some(label.1))?;
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

#[test]
fn members_and_metrics_of_a_running_three_node_cluster() {
    let dir = std::env::temp_dir().join(format!("coordinator-operator-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut nodes: Vec<NodeProcess> = (1..=3).map(|id| start_node(&dir, id, &ports)).collect();
    let admin = nodes[0].admin.clone();

    // `--json` until node 1 sees all three alive.
    let started = Instant::now();
    let view = loop {
        let view: serde_json::Value =
            serde_json::from_str(&members(&["--admin", &admin, "--json"])).unwrap();
        let alive = view["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "alive")
            .count();
        if alive == 3 {
            break view;
        }
        assert!(started.elapsed() < LONG, "never three alive: {view}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(view["node"], 1);
    assert_eq!(view["carrier"], "Native");
    assert_eq!(view["failureDetection"], "Carrier");
    for (index, member) in view["members"].as_array().unwrap().iter().enumerate() {
        assert_eq!(member["id"], index as u64 + 1);
        assert_eq!(member["local"], index == 0);
        assert_eq!(
            member["address"],
            format!("127.0.0.1:{}", ports[index]),
            "{member}"
        );
        assert!(member["incarnation"].as_u64().unwrap() > 0);
        assert!(member["secondsInState"].as_f64().unwrap() >= 0.0);
    }
    // The table, as a person reads it.
    let table = members(&["--admin", &admin]);
    assert!(table.contains("failure detection: Carrier"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ID") && l.contains("STATE") && l.contains("ADDRESS")),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains(" alive ")).count(),
        3,
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("1* ")), "{table}");

    // Metrics, parsed by a Prometheus parser.
    let metrics = scrape(&admin);
    assert_eq!(
        value(&metrics, "coordinator_members", ("state", "alive")),
        Some(3.0)
    );
    let sample = metrics
        .samples
        .iter()
        .find(|s| s.metric == "coordinator_members")
        .unwrap();
    assert_eq!(sample.labels.get("node"), Some("1"));
    assert_eq!(sample.labels.get("carrier"), Some("Native"));
    for name in [
        "coordinator_messages_sent_total",
        "coordinator_bytes_total",
        "coordinator_dropped_total",
        "coordinator_link_changes_total",
        "coordinator_gaps_total",
    ] {
        assert!(
            metrics.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }
    assert!(
        value(
            &metrics,
            "coordinator_bytes_total",
            ("direction", "received")
        )
        .unwrap()
            > 0.0,
        "node 1 received nothing"
    );
    assert!(
        metrics
            .samples
            .iter()
            .any(|s| s.metric == "coordinator_request_duration_seconds"
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "no request histogram"
    );

    // What the admin address does not serve is refused, with a reason; a
    // request head that never ends is cut off, and the node goes on.
    let (head, _) = ask(&admin, "GET /nothing HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = ask(&admin, "DELETE /members HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let (head, body) = ask(&admin, &"X".repeat(64 * 1024));
    assert!(
        head.is_empty() && body.is_empty(),
        "answered an endless head: {head}"
    );
    assert!(
        scrape(&admin)
            .samples
            .iter()
            .any(|s| s.metric == "coordinator_members")
    );
    // `members` against an address where nothing listens names it.
    let closed = format!("127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["members", "--admin", &closed])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains(&closed), "{error}");

    // `--watch` while node 3 is killed: the change is printed.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
            "members",
            "--admin",
            &admin,
            "--watch",
            "--interval",
            "100ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watched = spawn_lines(&mut watch);
    wait_line(&watched, LONG, |line| line.starts_with("3 "));
    let mut third = nodes.pop().unwrap();
    let _ = third.child.kill();
    let line = wait_line(&watched, LONG, |line| line.contains("node 3: alive -> "));
    assert!(line.starts_with('+'), "{line}");
    let _ = watch.kill();
    let _ = watch.wait();
    drop(third);
    // And the metrics follow.
    let started = Instant::now();
    while value(&scrape(&admin), "coordinator_members", ("state", "dead")) != Some(1.0) {
        assert!(started.elapsed() < LONG, "node 3 never counted dead");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An outsider floods a node's port with junk datagrams and connections:
/// the node counts every one, its log warns a few times and says how many
/// it left out, and every line it logs names the node and its carrier.
#[test]
fn junk_from_outside_is_counted_but_cannot_flood_the_log() {
    let dir = std::env::temp_dir().join(format!("coordinator-junk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let path = dir.join("node.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"@type":"Native","nodeId":1,"bindAddr":"127.0.0.1","port":{port},
                "clusterKey":{{"@type":"Value","secret":"junk-test"}}}}"#
        ),
    )
    .unwrap();
    let mut node = spawn_node(&path, &[("RUST_LOG", "info")], Stdio::piped());
    let admin = node.admin.clone();
    // 2,000 junk datagrams and 50 junk connections.
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for i in 0..2_000u32 {
        let _ = socket.send_to(&i.to_be_bytes().repeat(16), (Ipv4Addr::LOCALHOST, port));
        // In bursts the socket's receive buffer holds (what overflows it is
        // lost before the node sees it).
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for _ in 0..50 {
        if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\nnot a TLS client hello");
        }
    }
    // Counted: wait until the drops show in the metrics.
    let started = Instant::now();
    let dropped = loop {
        let metrics = scrape(&admin);
        let dropped: f64 = ["malformed", "unauthenticated", "too_large"]
            .iter()
            .filter_map(|reason| value(&metrics, "coordinator_dropped_total", ("reason", reason)))
            .sum();
        if dropped >= 1_000.0 || started.elapsed() > LONG {
            break dropped;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(dropped >= 1_000.0, "only {dropped} drops counted");
    let killed = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut log = String::new();
    node.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = node.child.wait();
    let warnings = log.lines().filter(|l| l.contains("frame dropped")).count();
    eprintln!("{dropped} junk frames counted, {warnings} warnings logged");
    assert!(
        (1..=20).contains(&warnings),
        "{warnings} warnings for {dropped} junk frames:\n{log}"
    );
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        assert!(
            line.contains("node=1") && (line.contains("native") || line.contains("Native")),
            "a log line without its node and carrier: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
