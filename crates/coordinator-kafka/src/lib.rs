//! The `Kafka` carrier: Apache Kafka, or any broker that speaks its API,
//! through rdkafka (librdkafka 2.12, built from source).
//!
//! * Topics: `{cluster}.broadcast` for broadcasts and heartbeats, and one
//!   `{cluster}.node.{id}` per node for what is addressed to it (requests and
//!   replies included: the reply path of a request is its sender's topic, the
//!   correlation id is the request id in the envelope). See [`topics`].
//! * Every node reads every broadcast. Stalwart gives all nodes one
//!   `group.id`, so Kafka hands each message to one node of the group. Here
//!   each node has its own group, `{groupId}-node-{id}`, used only to commit
//!   its offsets every few seconds (so each node's lag shows in Kafka's
//!   tools): the carrier assigns the partitions itself, so no group
//!   rebalance ever delays a start or a restart.
//! * A new node reads from the end of each topic (what was sent before it
//!   started is not for it). Across a broker restart or a lost connection the
//!   consumer resumes from its position, so nothing the broker kept is lost;
//!   when the broker no longer has that position (retention, or a broker that
//!   lost its log) it resumes from the earliest message the broker has. The
//!   engine removes duplicates and reports what is missing as gaps.
//! * The link is reported down when librdkafka finds no broker reachable,
//!   and up when a metadata request succeeds again. From a failed broker
//!   connection until then the consumer is paused; then a new consumer
//!   replaces it, where the old one stood, and topics the broker lost are
//!   created again and read from their beginning (see `Watcher`).
//! * A client that is dropped closes on a thread of its own: librdkafka can
//!   wait forever to destroy one, and nothing here waits for it (see
//!   `closing`).
//! * Latency settings are in [`options`].

#![forbid(unsafe_code)]

mod closing;
mod context;
pub mod options;
pub mod topics;

use async_trait::async_trait;
use bytes::Bytes;
use closing::Detached;
use context::{LinkContext, LinkState};
use coordinator_core::config::KafkaConfig;
use coordinator_core::routes::Routes;
use coordinator_core::transport::{Inbound, Link, Transport};
use coordinator_core::{Error, NodeId, Settings, TransportError};
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The `@type` name of this carrier.
pub const NAME: &str = "Kafka";

/// Whether this build can run the carrier.
pub const IMPLEMENTED: bool = true;

/// How often the watcher asks the brokers for metadata while the link is up,
/// and while it is down.
const WATCH_UP: Duration = Duration::from_secs(2);
const WATCH_DOWN: Duration = Duration::from_millis(200);

/// A node's consumer, closed on a thread of its own (see [`closing`]).
type NodeConsumer = Detached<StreamConsumer<LinkContext>>;

/// What [`connect`] would refuse before reaching a broker: the cluster name
/// as a topic name, the secrets, and the librdkafka properties of each client
/// (the carrier's own with `properties` over them), which librdkafka checks
/// when a client is made.
pub fn check(config: &KafkaConfig, settings: &Settings) -> Result<(), Error> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;
    topics::check_cluster_name(&settings.cluster)?;
    let refused = |client: &str, error: rdkafka::error::KafkaError| {
        Error::Start(format!(
            "kafka.properties: the {client} refuses them: {}",
            topics::describe(error)
        ))
    };
    options::producer(config, settings)?
        .create::<BaseProducer>()
        .map_err(|error| refused("producer", error))?;
    options::consumer(config, settings)?
        .create::<BaseConsumer>()
        .map_err(|error| refused("consumer", error))?;
    options::admin(config, settings)?
        .create::<AdminClient<DefaultClientContext>>()
        .map_err(|error| refused("admin client", error))?;
    Ok(())
}

/// Connects node `settings.node_id` to the brokers of `config`: creates the
/// topics it needs, and starts reading at their current end.
pub async fn connect(config: &KafkaConfig, settings: &Settings) -> Result<Link, Error> {
    topics::check_cluster_name(&settings.cluster)?;
    let routes = Routes::new(&settings.cluster);
    let own_topic = routes.node(settings.node_id);
    let (inbound, receiver) = coordinator_core::transport::inbound();
    let state = LinkState::new(inbound);
    let context = LinkContext {
        state: state.clone(),
    };
    let fail = |what: &str, detail: String| {
        Error::Start(format!(
            "kafka.brokers: {what} at {}: {detail}",
            config.brokers.join(", ")
        ))
    };
    let admin = Detached::new(
        options::admin(config, settings)?
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|error| fail("cannot create a client", topics::describe(error)))?,
        "admin client",
    );
    let producer = Detached::new(
        options::producer(config, settings)?
            .create_with_context::<_, ThreadedProducer<LinkContext>>(context.clone())
            .map_err(|error| fail("cannot create a producer", topics::describe(error)))?,
        "producer",
    );
    let consumer_config = options::consumer(config, settings)?;
    let consumer: Arc<NodeConsumer> = Arc::new(Detached::new(
        consumer_config
            .create_with_context(context.clone())
            .map_err(|error| fail("cannot create a consumer", topics::describe(error)))?,
        "consumer",
    ));
    let wanted = [
        (routes.broadcast.clone(), config.partitions as i32),
        (own_topic.clone(), 1),
    ];
    let setup = async {
        topics::ensure(&admin, config, &wanted).await?;
        topics::read_from(
            &consumer,
            &[&routes.broadcast, &own_topic],
            topics::Start::End,
            config.timeout_session,
        )
        .await
    };
    let assigned = tokio::time::timeout(config.timeout_session * 3, setup)
        .await
        .map_err(|_| {
            fail(
                "no answer",
                format!("timed out after {:?}", config.timeout_session * 3),
            )
        })?
        .map_err(|detail| fail("cannot set up the topics", detail))?;

    let (stop, stopped) = watch::channel(false);
    let span = tracing::info_span!("kafka", node = settings.node_id);
    let (replace, replacements) = mpsc::channel(1);
    let reader = tokio::spawn(tracing::Instrument::instrument(
        read(
            consumer.clone(),
            replacements,
            state.clone(),
            stopped.clone(),
        ),
        span.clone(),
    ));
    let watcher = tokio::spawn(tracing::Instrument::instrument(
        Watcher {
            admin,
            consumer,
            assigned,
            consumer_config,
            context,
            replace,
            state: state.clone(),
            config: config.clone(),
            wanted,
            paused: false,
            troubled: false,
        }
        .run(stopped),
        span,
    ));
    tracing::info!(brokers = %config.brokers.join(","), broadcast = %routes.broadcast,
        group = %options::group_id(config, settings.node_id), "kafka carrier connected");
    Ok(Link {
        transport: Arc::new(KafkaTransport {
            producer,
            key: settings.node_id.to_be_bytes(),
            routes,
            send_within: config.timeout_message,
            stop,
            tasks: Mutex::new(vec![reader, watcher]),
        }),
        inbound: receiver,
    })
}

/// Hands what arrives to the engine, until told to stop; takes the new
/// consumer when the watcher replaces it (the old one closes on a thread of
/// its own once the watcher lets it go too).
async fn read(
    mut consumer: Arc<NodeConsumer>,
    mut replacements: mpsc::Receiver<Arc<NodeConsumer>>,
    state: Arc<LinkState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            Some(new) = replacements.recv() => {
                consumer = new;
                continue;
            }
            _ = stop.changed() => break,
        };
        match message {
            Ok(message) => {
                let Some(payload) = message.payload() else {
                    continue;
                };
                if !state
                    .inbound()
                    .deliver(Inbound::Frame(Bytes::copy_from_slice(payload)))
                {
                    break;
                }
            }
            Err(error) => {
                let code = error.rdkafka_error_code();
                tracing::debug!(error = %topics::describe(error), "Kafka consumer");
                if code == Some(RDKafkaErrorCode::AllBrokersDown) {
                    state.went_down("Kafka: no broker reachable".into());
                }
            }
        }
    }
}

/// Watches the brokers: a metadata request every few seconds, often while
/// the link is down.
///
/// A consumer must never fetch a topic the broker no longer has under the
/// id the consumer knows: a broker that restarted without its log (Tansu in
/// memory) answers such a fetch with a topic that has neither id nor name,
/// and librdkafka 2.12 crashes the process on that answer (a NULL topic name
/// in its metadata cache). Another node, or a producer's first send, may
/// create the topics again under new ids before this node looks. So as soon
/// as a broker connection fails the consumer is paused (a paused partition
/// is not fetched), and when a metadata request succeeds again a new
/// consumer replaces it: from the beginning of topics that were missing
/// (created again first), elsewhere from where the old one stood (when that
/// offset is past the end of a topic made again, the broker's earliest
/// message, by `auto.offset.reset`). Nothing the broker kept is read twice
/// or skipped; what the brokers lost the engine reports as gaps.
struct Watcher {
    admin: Detached<AdminClient<DefaultClientContext>>,
    consumer: Arc<NodeConsumer>,
    /// Where `consumer` was assigned to start, per partition.
    assigned: topics::Offsets,
    consumer_config: rdkafka::ClientConfig,
    context: LinkContext,
    replace: mpsc::Sender<Arc<NodeConsumer>>,
    state: Arc<LinkState>,
    config: KafkaConfig,
    wanted: [(String, i32); 2],
    paused: bool,
    /// A broker connection failed since the consumer was made.
    troubled: bool,
}

impl Watcher {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let pause = if self.state.is_down() || self.troubled {
                WATCH_DOWN
            } else {
                WATCH_UP
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.state.wake.notified() => {}
                _ = stop.changed() => return,
            }
            if self.state.take_trouble() || self.state.is_down() {
                self.troubled = true;
            }
            if self.troubled && !self.paused {
                self.pause();
            }
            let probe = {
                let consumer = self.consumer.clone();
                let names: Vec<String> = self.wanted.iter().map(|(t, _)| t.clone()).collect();
                tokio::task::spawn_blocking(move || topics::listed(&consumer, &names))
            };
            match probe.await {
                Ok(Ok(counts)) => self.brokers_answer(&counts).await,
                Ok(Err(error)) => self.state.went_down(format!(
                    "Kafka: the brokers do not answer: {}",
                    topics::describe(error)
                )),
                Err(_) => return,
            }
        }
    }

    async fn brokers_answer(&mut self, counts: &[i32]) {
        let missing: Vec<(String, i32)> = self
            .wanted
            .iter()
            .zip(counts)
            .filter(|(_, count)| **count == 0)
            .map(|(wanted, _)| wanted.clone())
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "Kafka: the broker lost topics; creating them again"
            );
            self.pause();
            if let Err(error) = topics::ensure(&self.admin, &self.config, &missing).await {
                self.state.went_down(format!("Kafka: {error}"));
                return;
            }
        }
        if !missing.is_empty() || self.troubled {
            let lost: Vec<&str> = missing.iter().map(|(topic, _)| topic.as_str()).collect();
            let at = topics::resume_at(&self.consumer, &self.assigned, &lost);
            if let Err(error) = self.new_consumer(topics::Start::At(at)).await {
                self.state.went_down(format!("Kafka: {error}"));
                return;
            }
        }
        self.state.came_up();
        // Each node's progress shows in Kafka's tools as its group's lag.
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(error = %topics::describe(error), "Kafka offset commit");
        }
    }

    /// A consumer of every wanted topic from `start`, handed to the reader in
    /// place of the paused one.
    async fn new_consumer(&mut self, start: topics::Start) -> Result<(), String> {
        let consumer: Arc<NodeConsumer> = Arc::new(Detached::new(
            self.consumer_config
                .create_with_context(self.context.clone())
                .map_err(topics::describe)?,
            "consumer",
        ));
        let names: Vec<&str> = self.wanted.iter().map(|(t, _)| t.as_str()).collect();
        self.assigned =
            topics::read_from(&consumer, &names, start, self.config.timeout_session).await?;
        self.consumer = consumer.clone();
        self.paused = false;
        self.troubled = false;
        self.replace
            .send(consumer)
            .await
            .map_err(|_| "the reader has stopped".to_string())
    }

    fn pause(&mut self) {
        let result = self
            .consumer
            .assignment()
            .and_then(|assignment| self.consumer.pause(&assignment));
        match result {
            Ok(()) => self.paused = true,
            Err(error) => tracing::debug!(error = %topics::describe(error), "Kafka pause"),
        }
    }
}

struct KafkaTransport {
    producer: Detached<ThreadedProducer<LinkContext>>,
    /// This node's id: the key of what it sends, so that one partition
    /// carries all of one sender's broadcasts, in order.
    key: [u8; 8],
    routes: Routes,
    /// How long a full producer queue may hold a send back.
    send_within: Duration,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl KafkaTransport {
    async fn produce(&self, topic: &str, frame: &Bytes) -> Result<(), TransportError> {
        let started = Instant::now();
        let mut wait = Duration::from_micros(200);
        loop {
            let record = BaseRecord::to(topic).key(&self.key).payload(&frame[..]);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((error, _))
                    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                        && started.elapsed() < self.send_within =>
                {
                    // The producer's queue is full (the brokers are slow or
                    // gone): wait for room, up to `timeoutMessage`.
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(20));
                }
                Err((error, _)) => {
                    return Err(TransportError::LinkDown {
                        carrier: NAME,
                        detail: format!("cannot produce to {topic}: {}", topics::describe(error)),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.produce(&self.routes.broadcast, &frame).await
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        self.produce(&self.routes.node(node), &frame).await
    }

    async fn close(&self) {
        // Delivers what is queued (a departure, say) before closing.
        let producer = ThreadedProducer::clone(&self.producer);
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(error) = producer.flush(Duration::from_secs(2)) {
                tracing::debug!(%error, "Kafka flush on close");
            }
        })
        .await;
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
