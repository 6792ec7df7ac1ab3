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
//!   its offsets: the carrier assigns the partitions itself, so no group
//!   rebalance ever delays a start or a restart.
//! * A new node reads from the end of each topic (what was sent before it
//!   started is not for it). Across a broker restart or a lost connection the
//!   consumer resumes from its position, so nothing the broker kept is lost;
//!   when the broker no longer has that position (retention, or a broker that
//!   lost its log) it resumes from the earliest message the broker has. The
//!   engine removes duplicates and reports what is missing as gaps.
//! * The link is reported down when librdkafka finds no broker reachable, and
//!   up when a metadata request succeeds again; topics the broker lost are
//!   created again then.
//! * Latency settings are in [`options`].

#![forbid(unsafe_code)]

mod context;
pub mod options;
pub mod topics;

use async_trait::async_trait;
use bytes::Bytes;
use context::{LinkContext, LinkState};
use coordinator_core::config::KafkaConfig;
use coordinator_core::routes::Routes;
use coordinator_core::{Error, Inbound, Link, NodeId, Settings, Transport, TransportError};
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `@type` name of this carrier.
pub const NAME: &str = "Kafka";

/// Whether this build can run the carrier.
pub const IMPLEMENTED: bool = true;

/// How often the watcher asks the brokers for metadata while the link is up,
/// and while it is down.
const WATCH_UP: Duration = Duration::from_secs(2);
const WATCH_DOWN: Duration = Duration::from_millis(200);

type NodeConsumer = StreamConsumer<LinkContext>;

/// Connects node `settings.node_id` to the brokers of `config`: creates the
/// topics it needs, and starts reading at their current end.
pub async fn connect(config: &KafkaConfig, settings: &Settings) -> Result<Link, Error> {
    topics::check_cluster_name(&settings.cluster)?;
    let routes = Routes::new(&settings.cluster);
    let own_topic = routes.node(settings.node_id);
    let (inbound, receiver) = coordinator_core::inbound();
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
    let admin: AdminClient<DefaultClientContext> = options::admin(config, settings)?
        .create()
        .map_err(|error| fail("cannot create a client", topics::describe(error)))?;
    let producer: ThreadedProducer<LinkContext> = options::producer(config, settings)?
        .create_with_context(context.clone())
        .map_err(|error| fail("cannot create a producer", topics::describe(error)))?;
    let consumer: Arc<NodeConsumer> = Arc::new(
        options::consumer(config, settings)?
            .create_with_context(context)
            .map_err(|error| fail("cannot create a consumer", topics::describe(error)))?,
    );
    let partitions = config.partitions as i32;
    let wanted = [
        (routes.broadcast.as_str(), partitions),
        (own_topic.as_str(), 1),
    ];
    let setup = async {
        topics::ensure(&admin, config, &wanted).await?;
        let counts = topics::partitions(
            &consumer,
            &[&routes.broadcast, &own_topic],
            config.timeout_session,
        )
        .await?;
        let assignment = vec![
            (routes.broadcast.clone(), counts[0]),
            (own_topic.clone(), counts[1]),
        ];
        topics::assign_from_end(&consumer, &assignment, config.timeout_session).await
    };
    tokio::time::timeout(config.timeout_session * 3, setup)
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
    let reader = tokio::spawn(tracing::Instrument::instrument(
        read(consumer.clone(), state.clone(), stopped.clone()),
        span.clone(),
    ));
    let watcher = tokio::spawn(tracing::Instrument::instrument(
        watch_brokers(
            admin,
            consumer.clone(),
            state.clone(),
            config.clone(),
            [
                (routes.broadcast.clone(), partitions),
                (own_topic.clone(), 1),
            ],
            stopped,
        ),
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

/// Hands what arrives to the engine, until told to stop; then closes the
/// consumer off the runtime (closing commits offsets and may block).
async fn read(consumer: Arc<NodeConsumer>, state: Arc<LinkState>, mut stop: watch::Receiver<bool>) {
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
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
                // Partitions that vanished with a broker's log come back when
                // the watcher creates the topics again.
                let code = error.rdkafka_error_code();
                tracing::debug!(error = %topics::describe(error), "Kafka consumer");
                if code == Some(RDKafkaErrorCode::AllBrokersDown) {
                    state.went_down("Kafka: no broker reachable".into());
                }
            }
        }
    }
    tokio::task::spawn_blocking(move || drop(consumer));
}

/// Watches the brokers: a metadata request every few seconds (and often while
/// the link is down). When it succeeds after a failure the link is up again,
/// and topics the broker lost are created again.
async fn watch_brokers(
    admin: AdminClient<DefaultClientContext>,
    consumer: Arc<NodeConsumer>,
    state: Arc<LinkState>,
    config: KafkaConfig,
    wanted: [(String, i32); 2],
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let pause = if state.is_down() {
            WATCH_DOWN
        } else {
            WATCH_UP
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = state.wake.notified() => {}
            _ = stop.changed() => return,
        }
        let probe = {
            let consumer = consumer.clone();
            let names: Vec<String> = wanted.iter().map(|(t, _)| t.clone()).collect();
            tokio::task::spawn_blocking(move || {
                names
                    .iter()
                    .map(|name| {
                        consumer
                            .fetch_metadata(Some(name), Duration::from_millis(1000))
                            .map(|metadata| {
                                metadata.topics().iter().any(|t| {
                                    t.name() == name
                                        && t.error().is_none()
                                        && !t.partitions().is_empty()
                                })
                            })
                    })
                    .collect::<Result<Vec<bool>, KafkaError>>()
            })
        };
        match probe.await {
            Ok(Ok(present)) => {
                let missing: Vec<(&str, i32)> = wanted
                    .iter()
                    .zip(&present)
                    .filter(|(_, present)| !**present)
                    .map(|((topic, partitions), _)| (topic.as_str(), *partitions))
                    .collect();
                if !missing.is_empty() {
                    tracing::warn!(
                        ?missing,
                        "Kafka: the broker lost topics; creating them again"
                    );
                    if let Err(error) = topics::ensure(&admin, &config, &missing).await {
                        state.went_down(format!("Kafka: {error}"));
                        continue;
                    }
                }
                state.came_up();
                // Each node's progress shows in Kafka's tools as its group's lag.
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
                    tracing::debug!(error = %topics::describe(error), "Kafka offset commit");
                }
            }
            Ok(Err(error)) => state.went_down(format!(
                "Kafka: the brokers do not answer: {}",
                topics::describe(error)
            )),
            Err(_) => return,
        }
    }
}

struct KafkaTransport {
    producer: ThreadedProducer<LinkContext>,
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
        let producer = self.producer.clone();
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
