//! The `Zenoh` carrier: Eclipse Zenoh sessions (peer or client of routers),
//! configured by the JSON5 text of a zenoh configuration.
//!
//! * Key expressions: `{cluster}/broadcast` carries broadcasts and
//!   heartbeats, `{cluster}/node/{id}` what is addressed to node `id`. The
//!   publishers and subscribers are declared once (a node's publisher to
//!   another node when it first sends to it), with `Block` congestion
//!   control, so that Zenoh never drops a message to make room.
//! * Requests go as Zenoh queries to the recipient's queryable on its node
//!   key; the recipient replies to the query on its own, concrete key (a reply
//!   on the query's wildcard would merge with other replies). A reply whose
//!   query is gone (its time-out passed) is put on the requester's key.
//! * Membership comes from liveliness tokens (see [`liveness`]): Zenoh itself
//!   reports a peer whose session is gone.
//! * The link is reported down when the session has no router and no peer
//!   left after having had one, and up when one is back; Zenoh reconnects by
//!   itself, as its configuration says.

#![forbid(unsafe_code)]

pub mod liveness;

use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::config::ZenohConfig;
use coordinator_core::envelope::{Kind, peek_kind, peek_request_id, peek_sender};
use coordinator_core::routes::Routes;
use coordinator_core::transport::{Inbound, InboundSender, Link, Transport};
use coordinator_core::{Error, NodeId, Settings, TransportError};
use liveness::{Action, Liveness, TokenChange};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use zenoh::Session;
use zenoh::bytes::ZBytes;
use zenoh::key_expr::KeyExpr;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, Query, Queryable};
use zenoh::sample::{Sample, SampleKind};

/// The `@type` name of this carrier.
pub const NAME: &str = "Zenoh";

/// Whether this build can run the carrier.
pub const IMPLEMENTED: bool = true;

/// How long a request's query waits for its reply (the engine's own request
/// time-out is what the caller sees; a later reply still arrives by `put`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the session's routers and peers are counted.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Opens a Zenoh session for node `settings.node_id` and declares its
/// subscribers, queryable and liveliness token. `settings.incarnation` must
/// be set: it names the token.
pub async fn connect(config: &ZenohConfig, settings: &Settings) -> Result<Link, Error> {
    connect_with_handle(config, settings)
        .await
        .map(|(link, _)| link)
}

/// What [`connect`] would refuse before opening a session: a `config` that
/// is not a Zenoh configuration.
pub fn check(config: &ZenohConfig) -> Result<(), Error> {
    zenoh::Config::from_json5(&config.config)
        .map(drop)
        .map_err(|error| Error::Start(format!("zenoh.config: {error}")))
}

/// [`connect`], also returning the transport (to see which members it knows).
pub async fn connect_with_handle(
    config: &ZenohConfig,
    settings: &Settings,
) -> Result<(Link, Arc<ZenohTransport>), Error> {
    let incarnation = settings.incarnation.ok_or_else(|| {
        Error::Start("zenoh: the node's incarnation must be set before connecting".into())
    })?;
    let zenoh_config = zenoh::Config::from_json5(&config.config)
        .map_err(|error| Error::Start(format!("zenoh.config: {error}")))?;
    let routes = Routes::with_separator(&settings.cluster, '/');
    let member_prefix = format!("{}/member", settings.cluster);
    let refused = |detail: String| {
        Error::Start(format!(
            "cluster: {:?} cannot name Zenoh keys ({detail})",
            settings.cluster
        ))
    };
    let key = |text: String| {
        KeyExpr::try_from(text.clone()).map_err(|error| refused(format!("{text:?}: {error}")))
    };
    let broadcast_key = key(routes.broadcast.clone())?;
    // A wildcard in the cluster name would read other clusters' traffic.
    if broadcast_key.is_wild() {
        return Err(refused("it holds a wildcard".into()));
    }
    let own_key = key(routes.node(settings.node_id))?;
    let members_key = key(format!("{member_prefix}/**"))?;
    let token_key = key(liveness::token_key(
        &member_prefix,
        settings.node_id,
        incarnation,
    ))?;

    let session = zenoh::open(zenoh_config)
        .await
        .map_err(|error| Error::Start(format!("zenoh.config: cannot open a session: {error}")))?;
    let (inbound, receiver) = coordinator_core::transport::inbound();
    let failed = |what: &str, error: zenoh::Error| Error::Start(format!("zenoh: {what}: {error}"));

    let deliver = {
        let inbound = inbound.clone();
        move |sample: Sample| {
            inbound.deliver(Inbound::Frame(frame_of(sample.payload().clone())));
        }
    };
    let broadcasts = session
        .declare_subscriber(broadcast_key.clone())
        .callback(deliver.clone())
        .await
        .map_err(|e| failed("cannot subscribe", e))?;
    let direct = session
        .declare_subscriber(own_key.clone())
        .callback(deliver)
        .await
        .map_err(|e| failed("cannot subscribe", e))?;
    let queries: Arc<Mutex<PendingQueries>> = Arc::default();
    let queryable = session
        .declare_queryable(own_key.clone())
        .callback({
            let queries = queries.clone();
            let inbound = inbound.clone();
            move |query: Query| {
                let Some(payload) = query.payload() else {
                    return;
                };
                let frame = Bytes::from(payload.to_bytes().into_owned());
                if let (Some(Kind::Request), Some(from), Some(id)) = (
                    peek_kind(&frame),
                    peek_sender(&frame),
                    peek_request_id(&frame),
                ) {
                    queries.lock().insert((from, id), query);
                }
                inbound.deliver(Inbound::Frame(frame));
            }
        })
        .await
        .map_err(|e| failed("cannot declare the queryable", e))?;

    let liveness = Arc::new(Mutex::new(Liveness::new(
        settings.node_id,
        settings.suspect_timeout,
        settings.dead_timeout,
    )));
    let runtime = Handle::current();
    let members = session
        .liveliness()
        .declare_subscriber(members_key)
        .history(true)
        .callback({
            let liveness = liveness.clone();
            let inbound = inbound.clone();
            let prefix = member_prefix.clone();
            move |sample: Sample| {
                let Some((id, incarnation)) = liveness::parse_token_key(&prefix, sample.key_expr())
                else {
                    return;
                };
                let change = match sample.kind() {
                    SampleKind::Put => TokenChange::Appeared,
                    SampleKind::Delete => TokenChange::Lost,
                };
                let actions = liveness.lock().token(id, incarnation, change);
                act(actions, &liveness, &inbound, &runtime);
            }
        })
        .await
        .map_err(|e| failed("cannot watch liveliness tokens", e))?;
    let token = session
        .liveliness()
        .declare_token(token_key)
        .await
        .map_err(|e| failed("cannot declare the liveliness token", e))?;
    let broadcast = session
        .declare_publisher(broadcast_key)
        .congestion_control(CongestionControl::Block)
        .await
        .map_err(|e| failed("cannot declare the broadcast publisher", e))?;

    let closed = Arc::new(AtomicBool::new(false));
    let span = tracing::info_span!("zenoh", node = settings.node_id);
    tokio::spawn(tracing::Instrument::instrument(
        watch_links(
            session.clone(),
            inbound.clone(),
            closed.clone(),
            connections(&session).await > 0,
        ),
        span,
    ));
    tracing::info!(zid = %session.zid(), broadcast = %routes.broadcast, "zenoh carrier connected");
    let transport = Arc::new(ZenohTransport {
        node_id: settings.node_id,
        session,
        routes,
        own_key,
        broadcast,
        publishers: RwLock::new(HashMap::new()),
        queries,
        liveness,
        replies_to_engine: inbound,
        replies_to_queries: AtomicU64::new(0),
        replies_put: AtomicU64::new(0),
        closed,
        declared: Mutex::new(Some(Declared {
            _broadcasts: broadcasts,
            _direct: direct,
            _queryable: queryable,
            _members: members,
            _token: token,
        })),
    });
    Ok((
        Link {
            transport: transport.clone(),
            inbound: receiver,
        },
        transport,
    ))
}

/// Carries out what [`Liveness`] decided: reports now, timers later.
fn act(
    actions: Vec<Action>,
    liveness: &Arc<Mutex<Liveness>>,
    inbound: &InboundSender,
    runtime: &Handle,
) {
    for action in actions {
        match action {
            Action::Report {
                id,
                incarnation,
                state,
            } => {
                inbound.deliver(Inbound::Member {
                    id,
                    incarnation,
                    state,
                });
            }
            Action::Timer {
                after,
                id,
                incarnation,
                generation,
                state,
            } => {
                let liveness = liveness.clone();
                let inbound = inbound.clone();
                let handle = runtime.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(after).await;
                    let next = liveness.lock().expired(id, incarnation, generation, state);
                    act(next, &liveness, &inbound, &handle);
                });
            }
        }
    }
}

/// Reports the link down when the session has no router and no peer left
/// (after having had one), and up when one is back.
async fn watch_links(
    session: Session,
    inbound: InboundSender,
    closed: Arc<AtomicBool>,
    mut had_any: bool,
) {
    let mut down = false;
    while !closed.load(Ordering::Acquire) {
        tokio::time::sleep(WATCH_EVERY).await;
        let connected = connections(&session).await > 0;
        if connected {
            had_any = true;
            if down {
                down = false;
                if !inbound.deliver(Inbound::LinkUp) {
                    return;
                }
            }
        } else if had_any && !down {
            down = true;
            if !inbound.deliver(Inbound::LinkDown(
                "Zenoh: no router or peer connected; reconnecting".into(),
            )) {
                return;
            }
        }
    }
}

/// How many routers and peers the session is connected to now.
async fn connections(session: &Session) -> usize {
    session.info().routers_zid().await.count() + session.info().peers_zid().await.count()
}

/// Requests received and not answered yet, by (requester, request id).
#[derive(Default)]
struct PendingQueries {
    queries: HashMap<(NodeId, u64), (Query, Instant)>,
    last_sweep: Option<Instant>,
}

impl PendingQueries {
    fn insert(&mut self, key: (NodeId, u64), query: Query) {
        let now = Instant::now();
        // Queries the engine never answers (refused frames, say) expire with
        // the requester's own time-out.
        if self
            .last_sweep
            .is_none_or(|last| now.duration_since(last) > Duration::from_secs(1))
        {
            self.queries
                .retain(|_, (_, since)| now.duration_since(*since) < QUERY_TIMEOUT);
            self.last_sweep = Some(now);
        }
        self.queries.insert(key, (query, now));
    }

    fn take(&mut self, key: (NodeId, u64)) -> Option<Query> {
        self.queries.remove(&key).map(|(query, _)| query)
    }
}

/// What stays declared while the carrier runs.
struct Declared {
    _broadcasts: Subscriber<()>,
    _direct: Subscriber<()>,
    _queryable: Queryable<()>,
    _members: Subscriber<()>,
    _token: LivelinessToken,
}

/// The `Zenoh` carrier of one node.
pub struct ZenohTransport {
    node_id: NodeId,
    session: Session,
    routes: Routes,
    own_key: KeyExpr<'static>,
    broadcast: Publisher<'static>,
    publishers: RwLock<HashMap<NodeId, Arc<Publisher<'static>>>>,
    queries: Arc<Mutex<PendingQueries>>,
    liveness: Arc<Mutex<Liveness>>,
    /// Where replies to this node's queries go.
    replies_to_engine: InboundSender,
    /// Replies sent as answers to their queries, and put on the requester's
    /// key because the query was gone.
    replies_to_queries: AtomicU64,
    replies_put: AtomicU64,
    closed: Arc<AtomicBool>,
    declared: Mutex<Option<Declared>>,
}

impl ZenohTransport {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether this node has seen node `id`'s liveliness token.
    pub fn sees(&self, id: NodeId) -> bool {
        self.liveness.lock().is_present(id)
    }

    /// Replies this node sent as answers to Zenoh queries, and put on the
    /// requester's key instead (because the query had expired).
    pub fn replies_sent(&self) -> (u64, u64) {
        (
            self.replies_to_queries.load(Ordering::Relaxed),
            self.replies_put.load(Ordering::Relaxed),
        )
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    async fn publisher(&self, node: NodeId) -> Result<Arc<Publisher<'static>>, TransportError> {
        if let Some(publisher) = self.publishers.read().get(&node) {
            return Ok(publisher.clone());
        }
        let publisher = self
            .session
            .declare_publisher(self.routes.node(node))
            .congestion_control(CongestionControl::Block)
            .await
            .map_err(|error| link_down(format!("cannot declare a publisher: {error}")))?;
        Ok(self
            .publishers
            .write()
            .entry(node)
            .or_insert_with(|| Arc::new(publisher))
            .clone())
    }
}

/// A received payload as a frame: without a copy when Zenoh holds it in one
/// piece (the usual case below its batch size), copied when it came in pieces.
fn frame_of(payload: ZBytes) -> Bytes {
    if payload.slices().nth(1).is_none() {
        Bytes::from_owner(Contiguous(payload))
    } else {
        Bytes::from(payload.to_bytes().into_owned())
    }
}

/// A payload in one piece, lent to `Bytes`.
struct Contiguous(ZBytes);

impl AsRef<[u8]> for Contiguous {
    fn as_ref(&self) -> &[u8] {
        self.0.slices().next().unwrap_or_default()
    }
}

fn link_down(detail: String) -> TransportError {
    TransportError::LinkDown {
        carrier: NAME,
        detail,
    }
}

#[async_trait]
impl Transport for ZenohTransport {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.broadcast
            .put(frame)
            .await
            .map_err(|error| link_down(format!("put failed: {error}")))
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        match peek_kind(&frame) {
            Some(Kind::Request) => {
                let inbound_for_replies = self.replies_to_engine.clone();
                return self
                    .session
                    .get(self.routes.node(node))
                    .payload(frame)
                    .consolidation(ConsolidationMode::None)
                    .timeout(QUERY_TIMEOUT)
                    .callback(move |reply| {
                        if let Ok(sample) = reply.into_result() {
                            let frame = frame_of(sample.payload().clone());
                            inbound_for_replies.deliver(Inbound::Frame(frame));
                        }
                    })
                    .await
                    .map_err(|error| link_down(format!("query failed: {error}")));
            }
            Some(Kind::Reply | Kind::ReplyError) => {
                let query =
                    peek_request_id(&frame).and_then(|id| self.queries.lock().take((node, id)));
                if let Some(query) = query {
                    self.replies_to_queries.fetch_add(1, Ordering::Relaxed);
                    return query
                        .reply(self.own_key.clone(), frame)
                        .await
                        .map_err(|error| link_down(format!("reply failed: {error}")));
                }
                self.replies_put.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.publisher(node)
            .await?
            .put(frame)
            .await
            .map_err(|error| link_down(format!("put failed: {error}")))
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.publishers.write().clear();
        drop(self.declared.lock().take());
        if let Err(error) = self.session.close().await {
            tracing::debug!(%error, "Zenoh session close");
        }
    }

    fn reports_membership(&self) -> bool {
        true
    }

    /// A reply answers its request's query (`send_to` finds the query by the
    /// frame's request id), so it goes in a frame of its own.
    fn replies_alone(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ZenohConfig {
        ZenohConfig {
            config: "{ mode: 'peer', scouting: { multicast: { enabled: false } } }".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_without_an_incarnation_or_with_a_wildcard_cluster_is_refused() {
        let error = connect(&config(), &Settings::new(1))
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("incarnation must be set"), "{error}");
        let settings = Settings::new(1).cluster("mail/*").incarnation(1);
        let error = connect(&config(), &settings)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("cluster: \"mail/*\" cannot name Zenoh keys"),
            "{error}"
        );
    }
}
