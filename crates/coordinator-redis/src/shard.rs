//! Sharded pub/sub for the node channels of a Redis Cluster.
//!
//! A classic `PUBLISH` on a cluster goes over the cluster bus to every
//! server, whatever channel it names. So each node's own channel,
//! `{cluster}.node.{id}`, is also a sharded channel (Redis 7): the node
//! subscribes to it with `SSUBSCRIBE` on the master that owns the channel's
//! slot, and a sender `SPUBLISH`es it there. A message to one node is then
//! handled by one shard only, and the nodes' channels spread over the masters.
//!
//! The node keeps its classic subscription to the same name (sharded and
//! classic channels are apart in Redis), and a sender falls back to a classic
//! `PUBLISH` when `SPUBLISH` fails or reaches nobody: the receiver's shard is
//! failing over, its slot moved, or the receiver does not subscribe sharded.
//! It keeps to the classic route for that receiver for [`HOLD`], then tries
//! again. The engine's per-pair sequence numbers put back in order, and drop
//! twice-delivered copies of, what a switch of route mixes up.
//!
//! Broadcasts and heartbeats stay classic. Every node reads them, so one
//! sharded broadcast channel would load one master as much as the classic
//! channel loads the server the nodes subscribe on; and failure detection
//! would hang on that one shard's failover (`cluster-node-timeout` plus an
//! election, 15 s and more by default), where a classic subscription moves to
//! any other server at once.
//!
//! The sharded subscription speaks RESP3 whatever `protocolVersion` says:
//! redis-rs reads sharded messages only as RESP3 pushes, and every server
//! with sharded pub/sub (Redis 7 and later) speaks RESP3.

use crate::tls::Server;
use bytes::Bytes;
use coordinator_core::NodeId;
use coordinator_core::routes::backoff;
use coordinator_core::transport::{Inbound, InboundSender};
use redis::aio::MultiplexedConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, PushInfo, PushKind, RedisError, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long a sender keeps to the classic route for a receiver after
/// `SPUBLISH` failed or reached nobody.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// How often the subscriber asks its server again whether it still owns the
/// channel's slot (and so learns of a half-open connection, too).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// `MOVED` redirections followed before trying the next server of `urls`.
const MAX_REDIRECTS: usize = 3;

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Whether `error` says the server will never take sharded pub/sub: an
/// unknown command (Redis before 7) or one the user may not run (ACL).
fn refused_for_good(error: &RedisError) -> bool {
    match error.kind() {
        ErrorKind::Server(redis::ServerErrorKind::NoPerm) => true,
        ErrorKind::Server(redis::ServerErrorKind::ResponseError) => error
            .detail()
            .is_some_and(|detail| detail.starts_with("unknown command")),
        _ => false,
    }
}

/// The sending side: `SPUBLISH` to a node's channel while that works.
pub(crate) struct ShardedSender {
    /// Off when the servers refused sharded pub/sub for good.
    enabled: AtomicBool,
    /// Receivers sent to on the classic route until then.
    held: parking_lot::Mutex<HashMap<NodeId, Instant>>,
    /// How long a `SPUBLISH` may take before the classic route is tried.
    wait: Duration,
}

impl ShardedSender {
    pub(crate) fn new(wait: Duration) -> Self {
        Self {
            enabled: AtomicBool::new(true),
            held: parking_lot::Mutex::new(HashMap::new()),
            wait,
        }
    }

    /// Whether the sharded route is worth trying for `node` now.
    fn open_for(&self, node: NodeId) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let mut held = self.held.lock();
        match held.get(&node) {
            Some(until) if Instant::now() < *until => false,
            Some(_) => {
                held.remove(&node);
                true
            }
            None => true,
        }
    }

    fn hold(&self, node: NodeId) {
        self.held.lock().insert(node, Instant::now() + HOLD);
    }

    /// Publishes `frame` on node `node`'s sharded `channel`, at the master
    /// that owns its slot. `true` when a subscriber took it; `false` when the
    /// caller must publish it on the classic route.
    pub(crate) async fn publish(
        &self,
        cluster: &crate::tls::ClusterConnection,
        node: NodeId,
        channel: &str,
        frame: &Bytes,
    ) -> bool {
        if !self.open_for(node) {
            return false;
        }
        let mut command = redis::cmd("SPUBLISH");
        command.arg(channel).arg(frame.as_ref());
        // redis-rs counts SPUBLISH as a read, which `readFromReplicas` would
        // send to a replica, where it reaches none of the master's subscribers.
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            channel,
            SlotAddr::Master,
        )));
        // `route_command` answers a refusal as a value, not as an error.
        let sent = tokio::time::timeout(self.wait, async {
            cluster
                .clone()
                .route_command(command, route)
                .await
                .and_then(Value::extract_error)
        })
        .await;
        match sent {
            Ok(Ok(Value::Int(receivers))) if receivers > 0 => true,
            Ok(Ok(_)) => {
                tracing::debug!(node, "SPUBLISH reached nobody; the classic route for now");
                self.hold(node);
                false
            }
            Ok(Err(error)) if refused_for_good(&error) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "the cluster refuses SPUBLISH; node channels use classic pub/sub");
                }
                false
            }
            Ok(Err(error)) => {
                tracing::debug!(node, %error, "SPUBLISH failed; the classic route for now");
                self.hold(node);
                false
            }
            Err(_) => {
                tracing::debug!(node, wait = ?self.wait, "SPUBLISH slow; the classic route for now");
                self.hold(node);
                false
            }
        }
    }
}

/// The receiving side: a node's `SSUBSCRIBE` to its own channel, kept on
/// the master that owns the channel's slot.
pub(crate) struct ShardedSubscriber {
    /// The servers of `urls`, with credentials, speaking RESP3.
    servers: Vec<ConnectionInfo>,
    /// The TLS configuration, when they speak TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    channel: String,
    timeout: Duration,
}

/// An open sharded subscription.
pub(crate) struct Subscription {
    connection: MultiplexedConnection,
    pushes: UnboundedReceiver<PushInfo>,
    server: ConnectionInfo,
}

/// Why no subscription could be opened.
pub(crate) enum OpenError {
    /// The servers will never take it (Redis before 7, or an ACL).
    Refused(String),
    /// Not now: no server answered, or the slot's master is failing over.
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(detail) | OpenError::Failed(detail) => f.write_str(detail),
        }
    }
}

/// Why one attempt on one server did not subscribe.
enum Attempt {
    Moved(String, u16),
    Refused(String),
    Failed(String),
}

fn server_name(server: &ConnectionInfo) -> String {
    match server.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}

/// `server`'s settings (credentials, TLS) for another server of the cluster.
fn at(server: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match server.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    server.clone().set_addr(addr)
}

impl ShardedSubscriber {
    /// `servers` are the cluster's `urls` with credentials; the subscriber
    /// reads `channel` on the master that owns its slot.
    pub(crate) fn new(
        servers: Vec<ConnectionInfo>,
        tls: Option<Arc<rustls::ClientConfig>>,
        channel: String,
        timeout: Duration,
    ) -> Self {
        let servers = servers
            .into_iter()
            .map(|server| {
                let redis = server
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                server.set_redis_settings(redis)
            })
            .collect();
        Self {
            servers,
            tls,
            channel,
            timeout,
        }
    }

    /// Subscribes on the master of the channel's slot: at `first` (where the
    /// last subscription was), else at each server of `urls` in turn,
    /// following its `MOVED` answer.
    pub(crate) async fn open(
        &self,
        first: Option<&ConnectionInfo>,
    ) -> Result<Subscription, OpenError> {
        let mut last = String::from("no server to try");
        for start in first.into_iter().chain(&self.servers) {
            let mut server = start.clone();
            for _ in 0..=MAX_REDIRECTS {
                match self.try_at(&server).await {
                    Ok(subscription) => return Ok(subscription),
                    Err(Attempt::Moved(host, port)) => server = at(&server, &host, port),
                    Err(Attempt::Refused(detail)) => return Err(OpenError::Refused(detail)),
                    Err(Attempt::Failed(detail)) => {
                        last = detail;
                        break;
                    }
                }
            }
        }
        Err(OpenError::Failed(last))
    }

    async fn try_at(&self, server: &ConnectionInfo) -> Result<Subscription, Attempt> {
        let name = server_name(server);
        let failed = |error: &dyn std::fmt::Display| Attempt::Failed(format!("{name}: {error}"));
        let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(sender);
        let client = Server::new(
            server.clone(),
            self.tls.as_ref(),
            &name,
            self.timeout,
            self.timeout,
        )
        .map_err(|error| failed(&error))?;
        let mut connection = client
            .multiplexed(&config)
            .await
            .map_err(|error| failed(&error))?;
        match ssubscribe(&mut connection, &self.channel).await {
            Ok(()) => {
                tracing::debug!(server = %name, channel = %self.channel, "sharded subscription open");
                Ok(Subscription {
                    connection,
                    pushes,
                    server: server.clone(),
                })
            }
            Err(error) => match error.redirect_node() {
                Some((addr, _slot)) => {
                    match addr
                        .rsplit_once(':')
                        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                    {
                        Some((host, port)) => Err(Attempt::Moved(
                            host.trim_matches(['[', ']']).to_string(),
                            port,
                        )),
                        None => Err(failed(&error)),
                    }
                }
                None if refused_for_good(&error) => {
                    Err(Attempt::Refused(format!("{name}: {error}")))
                }
                None => Err(failed(&error)),
            },
        }
    }

    /// Hands what arrives on the sharded channel to the engine, and opens
    /// the subscription again (on the slot's master as it is then) whenever
    /// it drops, its slot moves, or the server stops owning the slot.
    pub(crate) async fn run(self, first: Option<Subscription>, inbound: InboundSender) {
        let mut subscription = first;
        let mut last_server: Option<ConnectionInfo> = None;
        let mut failures: u32 = 0;
        loop {
            let open = match subscription.take() {
                Some(open) => open,
                None => match self.open(last_server.as_ref()).await {
                    Ok(open) => {
                        failures = 0;
                        tracing::info!(server = %server_name(&open.server), "sharded subscription open again");
                        open
                    }
                    Err(OpenError::Refused(detail)) => {
                        tracing::warn!(%detail, "the cluster refuses SSUBSCRIBE; this node's channel stays classic");
                        return;
                    }
                    Err(OpenError::Failed(detail)) => {
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures, BACKOFF_BASE, BACKOFF_MAX);
                        tracing::debug!(%detail, ?wait, "sharded subscription still down");
                        last_server = None;
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
            };
            last_server = Some(open.server.clone());
            match self.read(open, &inbound).await {
                Ended::Stopped => return,
                Ended::Lost(reason) => {
                    tracing::info!(%reason, "sharded subscription lost; senders use the classic route meanwhile");
                }
            }
        }
    }

    async fn read(&self, open: Subscription, inbound: &InboundSender) -> Ended {
        let Subscription {
            mut connection,
            mut pushes,
            ..
        } = open;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.reset();
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return Ended::Lost("the connection closed".into());
                    };
                    match push.kind {
                        PushKind::SMessage => {
                            let Some(frame) = push.data.into_iter().nth(1).and_then(payload) else {
                                continue;
                            };
                            if !inbound.deliver(Inbound::Frame(frame)) {
                                return Ended::Stopped;
                            }
                        }
                        // The server unsubscribes us when the slot leaves it.
                        PushKind::SUnsubscribe => {
                            return Ended::Lost("the channel's slot left the server".into());
                        }
                        PushKind::Disconnection => {
                            return Ended::Lost("the connection dropped".into());
                        }
                        _ => {}
                    }
                }
                _ = probe.tick() => {
                    // Subscribing again to a channel is harmless; a server
                    // that no longer owns the slot answers MOVED.
                    match ssubscribe(&mut connection, &self.channel).await {
                        Ok(()) => {}
                        Err(error) => return Ended::Lost(format!("the server answered {error}")),
                    }
                }
            }
        }
    }
}

enum Ended {
    /// The engine stopped.
    Stopped,
    Lost(String),
}

async fn ssubscribe(
    connection: &mut MultiplexedConnection,
    channel: &str,
) -> redis::RedisResult<()> {
    redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .query_async::<Value>(connection)
        .await
        .map(|_| ())
}

fn payload(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::from(bytes)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirection_keeps_the_credentials() {
        let server: ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info("redis://user:secret@10.0.0.1:7000/")
                .unwrap();
        let moved = at(&server, "10.0.0.2", 7001);
        assert_eq!(server_name(&moved), "10.0.0.2:7001");
        let settings = moved.redis_settings();
        assert_eq!(
            (settings.username(), settings.password()),
            (Some("user"), Some("secret"))
        );
    }

    #[test]
    fn a_sender_keeps_to_the_classic_route_for_a_while() {
        let sender = ShardedSender::new(Duration::from_millis(100));
        assert!(sender.open_for(2));
        sender.hold(2);
        assert!(!sender.open_for(2));
        assert!(sender.open_for(3));
        sender.held.lock().insert(2, Instant::now());
        assert!(sender.open_for(2));
        sender.enabled.store(false, Ordering::Relaxed);
        assert!(!sender.open_for(3));
    }
}
