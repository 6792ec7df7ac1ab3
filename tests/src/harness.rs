//! Running nodes of one carrier for a test.

use async_trait::async_trait;
use coordinator_core::config::NativeConfig;
use coordinator_core::testing::{Faults, LinkFaults, MemoryNetwork};
use coordinator_core::transport::Link;
use coordinator_core::{Coordinator, Node, NodeId, Settings, new_incarnation};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The cluster key every conformance cluster uses (so authentication is always on).
pub const CLUSTER_KEY: &str = "conformance-cluster-key";

/// Timing settings of test clusters: fast, so the suite is fast.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub suspect: Duration,
    pub dead: Duration,
    pub reorder: Duration,
    /// What the carrier may add to a delivery, for time bounds in assertions.
    pub delivery: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(50),
            suspect: Duration::from_millis(250),
            dead: Duration::from_millis(500),
            reorder: Duration::from_millis(100),
            delivery: Duration::from_millis(250),
        }
    }
}

/// Starts, kills and restarts the nodes of one test cluster.
#[async_trait]
pub trait Harness: Send + 'static {
    /// The carrier's name, as in test paths (`memory`, `nats`…).
    fn carrier(&self) -> &'static str;
    fn timing(&self) -> Timing;
    /// The cluster name the nodes run with (it keys envelopes and names subjects).
    fn cluster(&self) -> String;
    /// Faults applied to what every node receives.
    fn faults(&self) -> Arc<Faults>;
    /// Starts node `id` (again, after a kill: with a new incarnation).
    async fn start(&mut self, id: NodeId) -> Arc<dyn Coordinator>;
    /// Stops node `id` abruptly, without leaving.
    async fn kill(&mut self, id: NodeId);
    /// A connection that is not a node, to inject raw frames as an attacker would.
    async fn raw(&mut self, id: NodeId) -> Link;
}

/// Connects a node to a carrier; what a carrier adds to run the suite.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    fn carrier(&self) -> &'static str;
    /// Connects node `id`, which will run with `settings`; `faults` are the
    /// test's, for carriers that also apply partitions to their own traffic.
    async fn connect(&self, id: NodeId, settings: &Settings, faults: &Arc<Faults>) -> Link;
}

/// A harness for any carrier that plugs into the core engine.
pub struct EngineHarness<C: Connector> {
    connector: C,
    timing: Timing,
    cluster: String,
    faults: Arc<Faults>,
    nodes: HashMap<NodeId, Arc<Node>>,
    heartbeats: bool,
}

impl<C: Connector> EngineHarness<C> {
    pub fn new(connector: C, timing: Timing) -> Self {
        Self {
            connector,
            timing,
            cluster: "conformance".into(),
            faults: Faults::new(),
            nodes: HashMap::new(),
            heartbeats: true,
        }
    }

    /// Nodes started from now on send no heartbeats (`heartbeats: false`).
    pub fn without_heartbeats(mut self) -> Self {
        self.heartbeats = false;
        self
    }

    /// Faults on every link for the whole test (e.g. duplication and re-ordering).
    pub fn with_background_faults(self, faults: LinkFaults) -> Self {
        self.faults.set_everywhere(faults);
        self
    }

    /// Another cluster name, so that tests sharing an external broker stay apart.
    pub fn with_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// The carrier's connector (to reach a node's address, say).
    pub fn connector(&self) -> &C {
        &self.connector
    }

    pub fn settings(&self, id: NodeId) -> Settings {
        let t = self.timing;
        Settings::new(id)
            .cluster(&self.cluster)
            .cluster_key(CLUSTER_KEY)
            .timing(t.heartbeat, t.suspect, t.dead)
            .reorder_timeout(t.reorder)
            .heartbeats(self.heartbeats)
    }
}

#[async_trait]
impl<C: Connector> Harness for EngineHarness<C> {
    fn carrier(&self) -> &'static str {
        self.connector.carrier()
    }

    fn timing(&self) -> Timing {
        self.timing
    }

    fn cluster(&self) -> String {
        self.cluster.clone()
    }

    fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    async fn start(&mut self, id: NodeId) -> Arc<dyn Coordinator> {
        if let Some(old) = self.nodes.remove(&id) {
            old.abort();
        }
        let settings = self.settings(id).incarnation(new_incarnation());
        let link = self.connector.connect(id, &settings, &self.faults).await;
        let node = Node::builder(settings, self.connector.carrier(), link)
            .faults(self.faults.clone())
            .start()
            .expect("node starts");
        let node = Arc::new(node);
        self.nodes.insert(id, node.clone());
        node
    }

    async fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.abort();
        }
    }

    async fn raw(&mut self, id: NodeId) -> Link {
        let settings = self.settings(id).incarnation(new_incarnation());
        self.connector.connect(id, &settings, &self.faults).await
    }
}

/// Connects nodes to one in-process [`MemoryNetwork`].
pub struct MemoryConnector {
    network: Arc<MemoryNetwork>,
}

impl MemoryConnector {
    pub fn new() -> Self {
        Self {
            network: MemoryNetwork::new(),
        }
    }
}

impl Default for MemoryConnector {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Connector for MemoryConnector {
    fn carrier(&self) -> &'static str {
        "Memory"
    }

    async fn connect(&self, id: NodeId, _settings: &Settings, _faults: &Arc<Faults>) -> Link {
        self.network.connect(id)
    }
}

/// Starts `Native` carriers on 127.0.0.1, each on a free port, each joining
/// through the nodes started before it.
#[derive(Default)]
pub struct NativeConnector {
    addresses: Mutex<HashMap<NodeId, SocketAddr>>,
    transports: Mutex<Vec<std::sync::Weak<coordinator_native::NativeTransport>>>,
}

impl NativeConnector {
    /// Where node `id` listens (TCP and UDP).
    pub fn address(&self, id: NodeId) -> Option<SocketAddr> {
        self.addresses.lock().get(&id).copied()
    }

    /// The configuration node `id` starts with.
    pub fn config(&self, id: NodeId) -> NativeConfig {
        let addresses = self.addresses.lock();
        NativeConfig {
            bind_addr: [127, 0, 0, 1].into(),
            port: 0,
            seed_nodes: addresses
                .iter()
                .filter(|(other, _)| **other != id)
                .map(|(_, addr)| addr.to_string())
                .collect(),
            ..NativeConfig::default()
        }
    }
}

#[async_trait]
impl Connector for NativeConnector {
    fn carrier(&self) -> &'static str {
        coordinator_native::NAME
    }

    async fn connect(&self, id: NodeId, settings: &Settings, faults: &Arc<Faults>) -> Link {
        let config = self.config(id);
        let options = coordinator_native::NativeOptions {
            faults: Some(faults.clone()),
        };
        let (link, transport) = coordinator_native::connect(&config, settings, options)
            .await
            .expect("the native carrier starts");
        self.addresses.lock().insert(id, transport.local_addr());
        // Return once every running node's gossip lists the new one, so that a
        // test's next broadcast reaches it.
        let others: Vec<_> = {
            let mut transports = self.transports.lock();
            transports.retain(|t| t.upgrade().is_some_and(|t| !t.is_closed()));
            let others = transports.iter().filter_map(|t| t.upgrade()).collect();
            transports.push(Arc::downgrade(&transport));
            others
        };
        crate::wait::until(
            Duration::from_secs(10),
            &format!("every running node's gossip to list node {id}"),
            || others.iter().all(|t| t.is_closed() || t.knows(id)),
        )
        .await;
        link
    }
}

/// Node 1 over a carrier that `wrap` makes around its memory link (a test's
/// gated or counting carrier), and node 2 (gaps declared after 100 ms), on one
/// memory network, seeing each other. Returns the wrapper and both nodes.
pub async fn wrapped_memory_pair<T: coordinator_core::transport::Transport + 'static>(
    wrap: impl FnOnce(Arc<dyn coordinator_core::transport::Transport>) -> Arc<T>,
) -> (Arc<T>, Arc<Node>, Arc<Node>) {
    wrapped_memory_pair_with(Settings::new(1), wrap).await
}

/// [`wrapped_memory_pair`] with node 1's settings (its id must be 1).
pub async fn wrapped_memory_pair_with<T: coordinator_core::transport::Transport + 'static>(
    settings: Settings,
    wrap: impl FnOnce(Arc<dyn coordinator_core::transport::Transport>) -> Arc<T>,
) -> (Arc<T>, Arc<Node>, Arc<Node>) {
    assert_eq!(settings.node_id, 1, "the wrapped node is node 1");
    let network = MemoryNetwork::new();
    let Link { transport, inbound } = network.connect(1);
    let wrapped = wrap(transport);
    let link = Link {
        transport: wrapped.clone(),
        inbound,
    };
    let sender = Arc::new(Node::start(settings, "Memory", link).unwrap());
    let receiver = Arc::new(
        network
            .start(Settings::new(2).reorder_timeout(Duration::from_millis(100)))
            .unwrap(),
    );
    let nodes: Vec<Arc<dyn Coordinator>> = vec![sender.clone(), receiver.clone()];
    crate::wait::converge(&nodes, Duration::from_secs(10)).await;
    (wrapped, sender, receiver)
}

/// The `Native` carrier: TLS and gossip on loopback ports.
pub async fn native() -> EngineHarness<NativeConnector> {
    EngineHarness::new(NativeConnector::default(), Timing::default())
}

/// The `Memory` carrier with no background faults.
pub async fn memory() -> EngineHarness<MemoryConnector> {
    EngineHarness::new(MemoryConnector::new(), Timing::default())
}

/// The `Memory` carrier with duplication, re-ordering and delay on every link.
pub async fn memory_faulty() -> EngineHarness<MemoryConnector> {
    EngineHarness::new(MemoryConnector::new(), Timing::default()).with_background_faults(
        LinkFaults {
            drop: 0.0,
            duplicate: 0.2,
            reorder: 0.2,
            delay: Duration::from_millis(2),
        },
    )
}

/// Connects nodes to one broker: this test's own process on a free port, or
/// an external one named by an environment variable.
pub struct BrokerConnector {
    kind: crate::brokers::Kind,
    url: String,
    /// The authority that signs a TLS broker's certificate (`tlsCaPath`).
    ca: Option<String>,
    broker: Mutex<Option<crate::brokers::Broker>>,
}

impl BrokerConnector {
    /// A connector with a broker of its own (always: for kill and restart tests).
    pub fn own_broker(kind: crate::brokers::Kind) -> Self {
        let broker = crate::brokers::Broker::start(kind);
        let ca = matches!(kind, crate::brokers::Kind::RedisTls)
            .then(|| broker.dir().join("ca.pem").display().to_string());
        Self {
            kind,
            url: kind.url(broker.addr()),
            ca,
            broker: Mutex::new(Some(broker)),
        }
    }

    /// The external broker of the kind's variable (`COORDINATOR_TEST_NATS_URL`…),
    /// else one of its own.
    pub fn from_env(kind: crate::brokers::Kind) -> Self {
        match crate::brokers::external(kind.variable()) {
            Some(url) => Self {
                kind,
                url,
                ca: None,
                broker: Mutex::new(None),
            },
            None => Self::own_broker(kind),
        }
    }

    /// Kills this connector's broker (SIGKILL).
    pub fn kill_broker(&self) {
        self.with_broker(|broker| broker.kill());
    }

    /// Starts this connector's broker again on the same port.
    pub fn restart_broker(&self) {
        self.with_broker(|broker| broker.restart());
    }

    fn with_broker(&self, act: impl FnOnce(&mut crate::brokers::Broker)) {
        let mut broker = self.broker.lock();
        act(broker
            .as_mut()
            .expect("only a connector with its own broker can kill or restart it"));
    }

    /// The configuration nodes start with: this broker, quick time-outs.
    pub fn config(&self) -> coordinator_core::config::CarrierConfig {
        let text = match self.kind {
            crate::brokers::Kind::Nats => format!(
                r#"{{"@type": "Nats", "addresses": ["{}"], "timeoutConnection": "2s", "timeoutRequest": "2s", "pingInterval": "1s"}}"#,
                self.url
            ),
            crate::brokers::Kind::Redis | crate::brokers::Kind::RedisTls => format!(
                r#"{{"@type": "Redis", "url": "{}", "timeout": "2s", "poolTimeoutWait": "2s", "poolTimeoutCreate": "2s"{}}}"#,
                self.url,
                match &self.ca {
                    Some(ca) => format!(r#", "tlsCaPath": {ca:?}"#),
                    None => String::new(),
                }
            ),
            crate::brokers::Kind::Kafka => format!(
                r#"{{"@type": "Kafka", "brokers": ["{}"], "groupId": "conformance", "timeoutSession": "10s", "timeoutMessage": "5s"}}"#,
                self.url
            ),
            crate::brokers::Kind::RedisClusterNode
            | crate::brokers::Kind::RedisClusterTlsNode
            | crate::brokers::Kind::RedisSentinel
            | crate::brokers::Kind::ZenohRouter => {
                panic!("{:?} is not a broker for this connector", self.kind)
            }
        };
        coordinator_core::CoordinatorConfig::from_json(&text)
            .expect("a valid test configuration")
            .carrier
    }
}

#[async_trait]
impl Connector for BrokerConnector {
    fn carrier(&self) -> &'static str {
        match self.kind {
            crate::brokers::Kind::Nats => coordinator_nats::NAME,
            crate::brokers::Kind::Redis | crate::brokers::Kind::RedisTls => coordinator_redis::NAME,
            crate::brokers::Kind::RedisClusterNode | crate::brokers::Kind::RedisClusterTlsNode => {
                "RedisCluster"
            }
            crate::brokers::Kind::Kafka => coordinator_kafka::NAME,
            crate::brokers::Kind::ZenohRouter => "Zenoh",
            crate::brokers::Kind::RedisSentinel => coordinator_redis::SENTINEL_NAME,
        }
    }

    async fn connect(&self, _id: NodeId, settings: &Settings, _faults: &Arc<Faults>) -> Link {
        use coordinator_core::config::CarrierConfig;
        match self.config() {
            CarrierConfig::Nats(nats) => coordinator_nats::connect(&nats, settings).await,
            CarrierConfig::Redis(redis) => coordinator_redis::connect(&redis, settings).await,
            CarrierConfig::Kafka(kafka) => coordinator_kafka::connect(&kafka, settings).await,
            other => unreachable!("no test broker for {other:?}"),
        }
        .expect("the carrier connects to its broker")
    }
}

/// A connector whose broker a test can kill and restart.
pub trait BrokerControl: Connector {
    /// Kills the broker at once (SIGKILL: no goodbye to clients).
    fn kill_broker(&self);
    /// Starts it again on the same port and waits until it answers.
    fn restart_broker(&self);
}

impl BrokerControl for BrokerConnector {
    fn kill_broker(&self) {
        BrokerConnector::kill_broker(self)
    }

    fn restart_broker(&self) {
        BrokerConnector::restart_broker(self)
    }
}

impl BrokerControl for ZenohConnector {
    fn kill_broker(&self) {
        self.with_router(|router| router.kill())
    }

    fn restart_broker(&self) {
        self.with_router(|router| router.restart())
    }
}

/// A cluster name no other test uses, for tests that share an external broker.
fn unique_cluster() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "conformance-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A carrier on a real broker of `kind`.
async fn on_broker(kind: crate::brokers::Kind) -> EngineHarness<BrokerConnector> {
    let connector = tokio::task::spawn_blocking(move || BrokerConnector::from_env(kind))
        .await
        .expect("a broker");
    EngineHarness::new(connector, Timing::default()).with_cluster(unique_cluster())
}

/// The `Nats` carrier on a real NATS server.
pub async fn nats() -> EngineHarness<BrokerConnector> {
    on_broker(crate::brokers::Kind::Nats).await
}

/// The `Kafka` carrier on a real Kafka-API broker (Tansu), with timing that
/// allows for its fetch wait.
pub async fn kafka() -> EngineHarness<BrokerConnector> {
    let mut harness = on_broker(crate::brokers::Kind::Kafka).await;
    harness.timing = KAFKA_TIMING;
    harness
}

/// Kafka delivers through fetches: a message waits up to `fetchWaitMax` on a
/// broker that holds every fetch that long (Tansu), more under load.
pub const KAFKA_TIMING: Timing = Timing {
    heartbeat: Duration::from_millis(100),
    suspect: Duration::from_millis(600),
    dead: Duration::from_millis(1200),
    reorder: Duration::from_millis(300),
    delivery: Duration::from_millis(600),
};

/// The `Redis` carrier on a real Redis server.
pub async fn redis() -> EngineHarness<BrokerConnector> {
    on_broker(crate::brokers::Kind::Redis).await
}

/// Connects nodes to one Redis Cluster (3 masters, 3 replicas): this test's
/// own, or the one in `COORDINATOR_TEST_REDIS_CLUSTER_URLS` (comma-separated).
pub struct RedisClusterConnector {
    urls: Vec<String>,
    protocol: &'static str,
    cluster: Mutex<Option<crate::brokers::RedisCluster>>,
    /// `shardedPubSub` of the nodes started from now on.
    sharded: std::sync::atomic::AtomicBool,
    /// `tlsCaPath`, for a cluster that speaks TLS.
    ca: Option<String>,
    /// `authUsername` and `authSecret` of the nodes started from now on.
    user: Mutex<Option<(String, String)>>,
}

impl RedisClusterConnector {
    /// A connector with a cluster of its own, speaking `protocol` (`resp2` or `resp3`).
    pub fn own_cluster(protocol: &'static str) -> Self {
        Self::with(crate::brokers::RedisCluster::start(), protocol)
    }

    /// A connector with a cluster of its own that speaks only TLS.
    pub fn own_tls_cluster(protocol: &'static str) -> Self {
        Self::with(crate::brokers::RedisCluster::start_tls(), protocol)
    }

    fn with(cluster: crate::brokers::RedisCluster, protocol: &'static str) -> Self {
        Self {
            urls: cluster.urls(),
            protocol,
            ca: cluster.tls_ca().map(String::from),
            cluster: Mutex::new(Some(cluster)),
            sharded: true.into(),
            user: Mutex::new(None),
        }
    }

    pub fn from_env(protocol: &'static str) -> Self {
        match crate::brokers::external(crate::brokers::Kind::RedisClusterNode.variable()) {
            Some(urls) => Self {
                urls: urls.split(',').map(|url| url.trim().to_string()).collect(),
                protocol,
                cluster: Mutex::new(None),
                sharded: true.into(),
                ca: None,
                user: Mutex::new(None),
            },
            None => Self::own_cluster(protocol),
        }
    }

    /// Acts on this connector's own cluster (to kill a master, say).
    pub fn with_cluster<T>(&self, act: impl FnOnce(&mut crate::brokers::RedisCluster) -> T) -> T {
        act(self
            .cluster
            .lock()
            .as_mut()
            .expect("only a connector with its own cluster can change it"))
    }

    /// Whether the nodes started from now on use sharded pub/sub for their
    /// own channels (`shardedPubSub`, on by default).
    pub fn set_sharded(&self, sharded: bool) {
        self.sharded
            .store(sharded, std::sync::atomic::Ordering::Relaxed);
    }

    /// The ACL user the nodes started from now on log in as.
    pub fn set_user(&self, user: &str, password: &str) {
        *self.user.lock() = Some((user.into(), password.into()));
    }

    pub fn config(&self) -> coordinator_core::config::RedisClusterConfig {
        let urls: Vec<String> = self.urls.iter().map(|url| format!("{url:?}")).collect();
        let mut extra = String::new();
        if let Some(ca) = &self.ca {
            extra += &format!(r#", "tlsCaPath": {ca:?}"#);
        }
        if let Some((user, password)) = &*self.user.lock() {
            extra += &format!(
                r#", "authUsername": {user:?}, "authSecret": {{"@type": "Value", "secret": {password:?}}}"#
            );
        }
        let text = format!(
            r#"{{"@type": "RedisCluster", "urls": [{}], "protocolVersion": "{}", "timeout": "2s", "maxRetries": 3, "minRetryWait": 10, "maxRetryWait": 100, "shardedPubSub": {}{extra}}}"#,
            urls.join(", "),
            self.protocol,
            self.sharded.load(std::sync::atomic::Ordering::Relaxed),
        );
        match coordinator_core::CoordinatorConfig::from_json(&text)
            .expect("a valid Redis Cluster test configuration")
            .carrier
        {
            coordinator_core::config::CarrierConfig::RedisCluster(cluster) => cluster,
            other => unreachable!("parsed as {other:?}"),
        }
    }
}

#[async_trait]
impl Connector for RedisClusterConnector {
    fn carrier(&self) -> &'static str {
        coordinator_redis::CLUSTER_NAME
    }

    async fn connect(&self, _id: NodeId, settings: &Settings, _faults: &Arc<Faults>) -> Link {
        coordinator_redis::connect_cluster(&self.config(), settings)
            .await
            .expect("the Redis Cluster carrier connects")
    }
}

async fn on_redis_cluster(protocol: &'static str) -> EngineHarness<RedisClusterConnector> {
    let connector = tokio::task::spawn_blocking(move || RedisClusterConnector::from_env(protocol))
        .await
        .expect("a Redis Cluster");
    EngineHarness::new(connector, Timing::default()).with_cluster(unique_cluster())
}

/// The `RedisCluster` carrier speaking RESP2 (Stalwart's default).
pub async fn redis_cluster_resp2() -> EngineHarness<RedisClusterConnector> {
    on_redis_cluster("resp2").await
}

/// The `RedisCluster` carrier speaking RESP3.
pub async fn redis_cluster_resp3() -> EngineHarness<RedisClusterConnector> {
    on_redis_cluster("resp3").await
}

/// Connects nodes to a master found through Redis Sentinel: this test's own
/// (one master, two replicas, three sentinels), or the sentinels in
/// `COORDINATOR_TEST_REDIS_SENTINEL_URLS` (comma-separated; the service in
/// `COORDINATOR_TEST_REDIS_SENTINEL_SERVICE`, `mymaster` by default).
pub struct RedisSentinelConnector {
    urls: Vec<String>,
    service: String,
    sentinels: Mutex<Option<crate::brokers::RedisSentinels>>,
}

impl RedisSentinelConnector {
    /// A connector with sentinels and servers of its own.
    pub fn own() -> Self {
        let sentinels = crate::brokers::RedisSentinels::start();
        Self {
            urls: sentinels.urls(),
            service: crate::brokers::SENTINEL_SERVICE.into(),
            sentinels: Mutex::new(Some(sentinels)),
        }
    }

    pub fn from_env() -> Self {
        match crate::brokers::external(crate::brokers::Kind::RedisSentinel.variable()) {
            Some(urls) => Self {
                urls: urls.split(',').map(|url| url.trim().to_string()).collect(),
                service: crate::brokers::external("COORDINATOR_TEST_REDIS_SENTINEL_SERVICE")
                    .unwrap_or_else(|| crate::brokers::SENTINEL_SERVICE.into()),
                sentinels: Mutex::new(None),
            },
            None => Self::own(),
        }
    }

    /// Acts on this connector's own servers and sentinels (to kill the master, say).
    pub fn with_sentinels<T>(
        &self,
        act: impl FnOnce(&mut crate::brokers::RedisSentinels) -> T,
    ) -> T {
        act(self
            .sentinels
            .lock()
            .as_mut()
            .expect("only a connector with its own sentinels can change them"))
    }

    pub fn config(&self) -> coordinator_core::config::RedisSentinelConfig {
        let urls: Vec<String> = self.urls.iter().map(|url| format!("{url:?}")).collect();
        let text = format!(
            r#"{{"@type": "RedisSentinel", "urls": [{}], "serviceName": {:?}, "timeout": "2s", "poolTimeoutCreate": "2s"}}"#,
            urls.join(", "),
            self.service,
        );
        match coordinator_core::CoordinatorConfig::from_json(&text)
            .expect("a valid Redis Sentinel test configuration")
            .carrier
        {
            coordinator_core::config::CarrierConfig::RedisSentinel(sentinel) => sentinel,
            other => unreachable!("parsed as {other:?}"),
        }
    }
}

#[async_trait]
impl Connector for RedisSentinelConnector {
    fn carrier(&self) -> &'static str {
        coordinator_redis::SENTINEL_NAME
    }

    async fn connect(&self, _id: NodeId, settings: &Settings, _faults: &Arc<Faults>) -> Link {
        coordinator_redis::connect_sentinel(&self.config(), settings)
            .await
            .expect("the Redis Sentinel carrier connects")
    }
}

/// The `RedisSentinel` carrier on a master found through three sentinels.
pub async fn redis_sentinel() -> EngineHarness<RedisSentinelConnector> {
    let connector = tokio::task::spawn_blocking(RedisSentinelConnector::from_env)
        .await
        .expect("Redis servers and sentinels");
    EngineHarness::new(connector, Timing::default()).with_cluster(unique_cluster())
}

/// Connects nodes over Zenoh on loopback, with multicast scouting off: as
/// peers that each listen on a free port and connect to the peers already
/// running (gossip scouting finds the rest), or as clients of one router
/// (`zenohd`), this test's own or the one in `COORDINATOR_TEST_ZENOH_ROUTER`.
pub struct ZenohConnector {
    router: Option<String>,
    own_router: Mutex<Option<crate::brokers::Broker>>,
    peers: Mutex<Vec<(String, std::sync::Weak<coordinator_zenoh::ZenohTransport>)>>,
}

impl ZenohConnector {
    /// Peers connected to each other, no router.
    pub fn peers() -> Self {
        Self {
            router: None,
            own_router: Mutex::new(None),
            peers: Mutex::new(Vec::new()),
        }
    }

    /// Clients of a router of this connector's own (always: for restart tests).
    pub fn own_router() -> Self {
        let router = crate::brokers::Broker::start(crate::brokers::Kind::ZenohRouter);
        Self {
            router: Some(crate::brokers::Kind::ZenohRouter.url(router.addr())),
            own_router: Mutex::new(Some(router)),
            peers: Mutex::new(Vec::new()),
        }
    }

    /// Clients of the router in `COORDINATOR_TEST_ZENOH_ROUTER` (`tcp/host:port`),
    /// else of one of its own.
    pub fn router_from_env() -> Self {
        match crate::brokers::external(crate::brokers::Kind::ZenohRouter.variable()) {
            Some(endpoint) => Self {
                router: Some(endpoint),
                own_router: Mutex::new(None),
                peers: Mutex::new(Vec::new()),
            },
            None => Self::own_router(),
        }
    }

    /// Kills or restarts this connector's router.
    pub fn with_router(&self, act: impl FnOnce(&mut crate::brokers::Broker)) {
        act(self
            .own_router
            .lock()
            .as_mut()
            .expect("only a connector with its own router can kill or restart it"))
    }

    /// The carrier of running node `id`.
    pub fn transport(&self, id: NodeId) -> Option<Arc<coordinator_zenoh::ZenohTransport>> {
        self.peers
            .lock()
            .iter()
            .filter_map(|(_, t)| t.upgrade())
            .find(|t| t.node_id() == id && !t.is_closed())
    }

    /// The zenoh configuration (JSON5) of a node listening on `port`.
    pub fn zenoh_config(&self, port: u16) -> String {
        match &self.router {
            Some(router) => format!(
                r#"{{ mode: "client", connect: {{ endpoints: ["{router}"] }},
                     scouting: {{ delay: 0, multicast: {{ enabled: false }} }} }}"#
            ),
            None => {
                let others: Vec<String> = self
                    .peers
                    .lock()
                    .iter()
                    .filter(|(_, t)| t.upgrade().is_some_and(|t| !t.is_closed()))
                    .map(|(endpoint, _)| format!("{endpoint:?}"))
                    .collect();
                format!(
                    r#"{{ mode: "peer", listen: {{ endpoints: ["tcp/127.0.0.1:{port}"] }},
                         connect: {{ endpoints: [{}] }},
                         scouting: {{ delay: 0, multicast: {{ enabled: false }}, gossip: {{ enabled: true }} }} }}"#,
                    others.join(", ")
                )
            }
        }
    }
}

#[async_trait]
impl Connector for ZenohConnector {
    fn carrier(&self) -> &'static str {
        coordinator_zenoh::NAME
    }

    async fn connect(&self, id: NodeId, settings: &Settings, _faults: &Arc<Faults>) -> Link {
        let port = crate::brokers::free_port();
        let config = coordinator_core::config::ZenohConfig {
            config: self.zenoh_config(port),
        };
        let (link, transport) = coordinator_zenoh::connect_with_handle(&config, settings)
            .await
            .expect("the Zenoh carrier starts");
        // Return once the new node and every running one see each other's
        // liveliness tokens: from then on they also reach each other.
        let others: Vec<_> = {
            let mut peers = self.peers.lock();
            peers.retain(|(_, t)| t.upgrade().is_some_and(|t| !t.is_closed()));
            let others: Vec<_> = peers.iter().filter_map(|(_, t)| t.upgrade()).collect();
            peers.push((format!("tcp/127.0.0.1:{port}"), Arc::downgrade(&transport)));
            others
        };
        let ids: Vec<NodeId> = others.iter().map(|t| t.node_id()).collect();
        crate::wait::until(
            Duration::from_secs(10),
            &format!("node {id} and the running nodes {ids:?} to see each other's tokens"),
            || {
                others
                    .iter()
                    .all(|t| t.is_closed() || (t.sees(id) && transport.sees(t.node_id())))
            },
        )
        .await;
        link
    }
}

/// The `Zenoh` carrier between peers, no router.
pub async fn zenoh_peers() -> EngineHarness<ZenohConnector> {
    EngineHarness::new(ZenohConnector::peers(), Timing::default()).with_cluster(unique_cluster())
}

/// The `Zenoh` carrier between clients of a router (`zenohd`).
pub async fn zenoh_router() -> EngineHarness<ZenohConnector> {
    let connector = tokio::task::spawn_blocking(ZenohConnector::router_from_env)
        .await
        .expect("a Zenoh router");
    EngineHarness::new(connector, Timing::default()).with_cluster(unique_cluster())
}
