//! The `Redis`, `RedisCluster` and `RedisSentinel` carriers: Redis pub/sub
//! (`RedisSentinel`: see `sentinel.rs`).
//!
//! Channels are prefixed by the cluster name: `{cluster}.broadcast` carries
//! broadcasts and heartbeats to every node, `{cluster}.node.{id}` what is
//! addressed to node `id`. Frames are published with `PUBLISH` on a
//! multiplexed connection taken from a deadpool-redis pool built from the pool
//! settings (the pool creates and checks it; it is kept while it works, since
//! checking a connection out of the pool costs a round trip); each node reads its two
//! channels on a dedicated pub/sub connection, which is opened again with
//! truncated exponential backoff and jitter when it drops. Redis pub/sub is
//! at-most-once: what is published while a subscriber is away is lost for it,
//! and the engine reports it as a gap.
//!
//! `RedisCluster` reads broadcasts on a plain RESP2 pub/sub connection to
//! one server of `urls` (the first that answers), moving to the next one when
//! it drops (a killed master, say), and publishes them on that same server: a
//! classic `PUBLISH` reaches every subscriber of the cluster, but one taken by
//! another server crosses the cluster bus. That works whatever the protocol
//! version, where redis-rs's cluster subscriptions need RESP3 and are not
//! restored after a failover. Each node's own channel is sharded as well
//! (`SSUBSCRIBE` on the master of its slot, `SPUBLISH` there), with the
//! classic channel of the same name as the fallback: see `shard.rs`. Other
//! commands go through a redis-rs cluster client (RESP2 or RESP3 as
//! configured, with its retries).

use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::config::RedisConfig;
use coordinator_core::routes::{Routes, backoff};
use coordinator_core::transport::{Inbound, InboundSender, Link, Transport};
use coordinator_core::{Error, NodeId, Settings, TransportError};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use redis::IntoConnectionInfo;
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The `@type` name of this carrier.
pub const NAME: &str = "Redis";

/// Whether this build can run the `Redis` carrier.
pub const IMPLEMENTED: bool = true;

/// Whether this build can run the `RedisCluster` carrier.
pub const CLUSTER_IMPLEMENTED: bool = true;

/// The `@type` name of the cluster carrier.
pub const CLUSTER_NAME: &str = "RedisCluster";

/// First and largest wait before the subscription connection is opened again.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Connects to the Redis server of `config` and subscribes node
/// `settings.node_id`'s channels.
pub async fn connect(config: &RedisConfig, settings: &Settings) -> Result<Link, Error> {
    let roots = tls_roots(config.tls_ca_path.as_deref(), "redis.tlsCaPath")?;
    let info = connection_info(&config.url, "redis.url")?;
    let tls = tls::config_for([&info], roots.as_deref(), "redis.tlsCaPath")?;
    let create = config.pool.pool_timeout_create.unwrap_or(config.timeout);
    let server = Server::new(
        info.clone(),
        tls.as_ref(),
        "redis.url",
        create,
        config.timeout,
    )?;
    let publisher = match &server {
        Server::Tls(dialer) => Publisher::Tls {
            dialer: dialer.clone(),
            kept: parking_lot::Mutex::new(None),
        },
        Server::Plain(_) => Publisher::Pool {
            pool: pool(config, info)?,
            kept: parking_lot::Mutex::new(None),
        },
    };
    let servers = Servers::Listed(vec![server]);
    let channels = Routes::new(&settings.cluster);
    let own = channels.node(settings.node_id);
    // The first subscription is made here, so that a wrong URL or a server
    // that is down stops the start with a clear error.
    let (subscription, _) = tokio::time::timeout(
        config.timeout,
        servers.subscribe(0, &channels.broadcast, &own),
    )
    .await
    .map_err(|_| unreachable(config, "timed out"))?
    .map_err(|error| unreachable(config, error))?;
    let (inbound, receiver) = coordinator_core::transport::inbound();
    let span = tracing::info_span!("redis", node = settings.node_id);
    let reader = tokio::spawn(tracing::Instrument::instrument(
        read(
            servers,
            subscription,
            0,
            channels.broadcast.clone(),
            own,
            inbound,
            None,
        ),
        span,
    ));
    tracing::info!(url = %redacted(&config.url), broadcast = %channels.broadcast, "redis carrier connected");
    Ok(Link {
        transport: Arc::new(RedisTransport {
            publisher,
            carrier: NAME,
            channels,
            timeout: config.timeout,
            readers: vec![reader],
        }),
        inbound: receiver,
    })
}

fn unreachable(config: &RedisConfig, error: impl std::fmt::Display) -> Error {
    Error::Start(format!(
        "redis.url: cannot subscribe at {}: {error}",
        redacted(&config.url)
    ))
}

/// The URL without its password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<credentials>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// URLs without their passwords, comma-separated, for messages.
pub(crate) fn redacted_list(urls: &[String]) -> String {
    urls.iter()
        .map(|url| redacted(url))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `url` (named `field` in errors) into connection settings with
/// `TCP_NODELAY` on. redis-rs leaves Nagle's algorithm on by default: two
/// commands written back to back on one connection (two requests at once,
/// as Raft sends) then wait for the server's delayed ACK, 40 ms on Linux.
pub fn connection_info(url: &str, field: &str) -> Result<redis::ConnectionInfo, Error> {
    let info = url
        .into_connection_info()
        .map_err(|error| Error::Start(format!("{field}: {error}")))?;
    Ok(info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// The certificate authorities of `tlsCaPath` (named `field` in errors):
/// a PEM file with one certificate or more.
pub(crate) fn tls_roots(path: Option<&str>, field: &str) -> Result<Option<Vec<u8>>, Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let Some(path) = path else {
        return Ok(None);
    };
    let failed = |detail: String| Error::Start(format!("{field}: {path}: {detail}"));
    let pem = std::fs::read(path).map_err(|error| failed(format!("cannot read it: {error}")))?;
    let mut certificates = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|error| failed(format!("not PEM: {error}")))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(failed("no certificate in it (expected PEM)".into()));
    }
    Ok(Some(pem))
}

fn pool(config: &RedisConfig, info: redis::ConnectionInfo) -> Result<Pool, Error> {
    let failed = |error: &dyn std::fmt::Display| {
        Error::Start(format!("redis: cannot make the connection pool: {error}"))
    };
    let manager = deadpool_redis::Manager::new(info).map_err(|error| failed(&error))?;
    let pool = PoolConfig {
        max_size: config.pool.pool_max_connections as usize,
        timeouts: Timeouts {
            wait: config.pool.pool_timeout_wait,
            create: config.pool.pool_timeout_create,
            recycle: config.pool.pool_timeout_recycle,
        },
        ..PoolConfig::default()
    };
    Pool::builder(manager)
        .config(pool)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| failed(&error))
}

pub(crate) async fn subscribe(
    server: &Server,
    broadcast: &str,
    own: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = server.pubsub().await?;
    pubsub.subscribe(&[broadcast, own]).await?;
    Ok(pubsub)
}

/// For a cluster: a connection to the server this node subscribes on, where
/// it also publishes (see [`Publisher::Cluster`]); `None` while there is none.
pub(crate) type Home = Arc<parking_lot::Mutex<Option<MultiplexedConnection>>>;

/// Where the subscription is opened (again).
pub(crate) enum Servers {
    /// These servers, tried in turn: one for `Redis`, the cluster's for
    /// `RedisCluster`.
    Listed(Vec<Server>),
    /// The master the sentinels name at the time, left when they announce a
    /// failover.
    Sentinel(Arc<sentinel::Sentinel>),
}

impl Servers {
    /// Subscribes `broadcast` and `own` at the server of the `attempt`-th
    /// try; with that server.
    async fn subscribe(
        &self,
        attempt: usize,
        broadcast: &str,
        own: &str,
    ) -> redis::RedisResult<(redis::aio::PubSub, Server)> {
        let server = match self {
            Servers::Listed(servers) => servers[attempt % servers.len()].clone(),
            Servers::Sentinel(sentinel) => sentinel.master().await?,
        };
        let pubsub = subscribe(&server, broadcast, own).await?;
        Ok((pubsub, server))
    }

    /// Resolves when the subscription should move though its connection
    /// still works: the sentinels failed the master over.
    async fn moved(&self, generation: u64) {
        match self {
            Servers::Listed(_) => std::future::pending().await,
            Servers::Sentinel(sentinel) => sentinel.failed_over_since(generation).await,
        }
    }

    fn generation(&self) -> u64 {
        match self {
            Servers::Listed(_) => 0,
            Servers::Sentinel(sentinel) => sentinel.generation(),
        }
    }
}

/// Hands what arrives on this node's channels to the engine, and opens the
/// subscription again whenever its connection drops (on the next server of
/// `servers`, for a cluster, whose `home` then moves there too; on the master
/// of the moment, for a sentinel-watched one). `first` was opened in
/// failover generation `first_generation` of `servers`.
pub(crate) async fn read(
    servers: Servers,
    first: redis::aio::PubSub,
    first_generation: u64,
    broadcast: String,
    own: String,
    inbound: InboundSender,
    home: Option<Home>,
) {
    let mut subscription = Some((first, first_generation));
    let mut failures: u32 = 0;
    let mut next = 0;
    loop {
        let (pubsub, generation) = match subscription.take() {
            Some(open) => open,
            None => {
                let generation = servers.generation();
                match servers.subscribe(next, &broadcast, &own).await {
                    Ok((pubsub, server)) => {
                        failures = 0;
                        if let Some(home) = &home {
                            *home.lock() = server
                                .multiplexed(&redis::AsyncConnectionConfig::new())
                                .await
                                .ok();
                        }
                        tracing::info!("redis subscription open again");
                        if !inbound.deliver(Inbound::LinkUp) {
                            return;
                        }
                        (pubsub, generation)
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        next += 1;
                        let wait = backoff(failures, BACKOFF_BASE, BACKOFF_MAX);
                        tracing::debug!(%error, ?wait, "redis subscription still down");
                        // A failover announced meanwhile is worth trying at once.
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = servers.moved(generation) => {}
                        }
                        continue;
                    }
                }
            }
        };
        let mut messages = pubsub.into_on_message();
        let moved = servers.moved(generation);
        tokio::pin!(moved);
        let why = loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        let frame = Bytes::copy_from_slice(message.get_payload_bytes());
                        if !inbound.deliver(Inbound::Frame(frame)) {
                            return;
                        }
                    }
                    None => break "the subscription connection dropped",
                },
                () = &mut moved => {
                    break "the sentinels failed the master over";
                }
            }
        };
        tracing::warn!("redis: {why}; subscribing again");
        if let Some(home) = &home {
            *home.lock() = None;
        }
        next += 1;
        if !inbound.deliver(Inbound::LinkDown(format!("Redis: {why}; reconnecting"))) {
            return;
        }
    }
}

/// Where publishes go.
pub(crate) enum Publisher {
    /// A single server: the connection taken from the pool is kept while it works.
    Pool {
        pool: Pool,
        kept: parking_lot::Mutex<Option<MultiplexedConnection>>,
    },
    /// The master the sentinels name: the connection is kept while it works
    /// and no failover was announced since it was made (the generation of
    /// [`sentinel::Sentinel`] it was made in).
    Sentinel {
        sentinel: Arc<sentinel::Sentinel>,
        kept: parking_lot::Mutex<Option<(u64, MultiplexedConnection)>>,
    },
    /// One server over this library's own TLS: the connection is kept while
    /// it works.
    Tls {
        dialer: Arc<tls::TlsDialer>,
        kept: parking_lot::Mutex<Option<MultiplexedConnection>>,
    },
    /// A cluster. A classic `PUBLISH` reaches every subscriber of the cluster
    /// whichever server takes it, but one taken by another server than the
    /// subscribers' crosses the cluster bus, where back-to-back messages can
    /// wait 40 ms (seen with Redis 7.0). So it goes to the server this node
    /// subscribes on (`home`; the nodes of one cluster pick the same, the
    /// first of `urls` that answers), and through the cluster client while
    /// there is no such connection.
    Cluster {
        home: Home,
        cluster: tls::ClusterConnection,
        /// The TLS configuration its cluster client dials with, kept while
        /// the carrier runs (see [`tls::cluster_config`]).
        _tls: Option<Arc<rustls::ClientConfig>>,
        /// Node channels are sharded too (see [`shard`]), unless
        /// `shardedPubSub` is off.
        sharded: Option<shard::ShardedSender>,
    },
}

pub(crate) struct RedisTransport {
    pub(crate) publisher: Publisher,
    pub(crate) carrier: &'static str,
    pub(crate) channels: Routes,
    pub(crate) timeout: Duration,
    /// The subscription tasks: classic, and sharded for a cluster.
    pub(crate) readers: Vec<JoinHandle<()>>,
}

impl RedisTransport {
    async fn publish_to(&self, channel: &str, frame: Bytes) -> Result<(), TransportError> {
        let down = |detail: String| TransportError::LinkDown {
            carrier: self.carrier,
            detail,
        };
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(frame.as_ref());
        let failed = |error: redis::RedisError| format!("PUBLISH failed: {error}");
        let publish = async {
            match &self.publisher {
                Publisher::Pool { .. } | Publisher::Sentinel { .. } | Publisher::Tls { .. } => {
                    let mut connection = self.kept_connection().await?;
                    command
                        .query_async::<i64>(&mut connection)
                        .await
                        .map_err(failed)
                }
                Publisher::Cluster { home, cluster, .. } => {
                    let at_home = home.lock().clone();
                    match at_home {
                        Some(mut connection) => {
                            match command.query_async::<i64>(&mut connection).await {
                                Ok(count) => Ok(count),
                                Err(error) => {
                                    tracing::debug!(%error, "PUBLISH at the subscription's server failed");
                                    command
                                        .query_async::<i64>(&mut cluster.clone())
                                        .await
                                        .map_err(failed)
                                }
                            }
                        }
                        None => command
                            .query_async::<i64>(&mut cluster.clone())
                            .await
                            .map_err(failed),
                    }
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, publish).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(format!("PUBLISH took over {:?}", self.timeout)),
        };
        if result.is_err() {
            // The next publish takes a fresh connection (from the pool, or
            // to the master the sentinels name then).
            match &self.publisher {
                Publisher::Pool { kept, .. } => *kept.lock() = None,
                Publisher::Sentinel { kept, .. } => *kept.lock() = None,
                Publisher::Tls { kept, .. } => *kept.lock() = None,
                Publisher::Cluster { .. } => {}
            }
        }
        result.map_err(down)
    }

    async fn kept_connection(&self) -> Result<MultiplexedConnection, String> {
        match &self.publisher {
            Publisher::Pool { pool, kept } => {
                if let Some(connection) = kept.lock().clone() {
                    return Ok(connection);
                }
                let pooled = pool
                    .get()
                    .await
                    .map_err(|error| format!("no connection: {error}"))?;
                let connection = deadpool_redis::Connection::take(pooled);
                *kept.lock() = Some(connection.clone());
                Ok(connection)
            }
            Publisher::Sentinel { sentinel, kept } => {
                let generation = sentinel.generation();
                if let Some((made_in, connection)) = kept.lock().clone()
                    && made_in == generation
                {
                    return Ok(connection);
                }
                let connection = sentinel
                    .connection()
                    .await
                    .map_err(|error| format!("no connection to the master: {error}"))?;
                *kept.lock() = Some((generation, connection.clone()));
                Ok(connection)
            }
            Publisher::Tls { dialer, kept } => {
                if let Some(connection) = kept.lock().clone() {
                    return Ok(connection);
                }
                let connection = dialer
                    .multiplexed()
                    .await
                    .map_err(|error| format!("no connection: {error}"))?;
                *kept.lock() = Some(connection.clone());
                Ok(connection)
            }
            Publisher::Cluster { .. } => unreachable!("a cluster keeps no single connection"),
        }
    }
}

#[async_trait]
impl Transport for RedisTransport {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.publish_to(&self.channels.broadcast, frame).await
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        let channel = self.channels.node(node);
        if let Publisher::Cluster {
            cluster,
            sharded: Some(sharded),
            ..
        } = &self.publisher
            && sharded.publish(cluster, node, &channel, &frame).await
        {
            return Ok(());
        }
        self.publish_to(&channel, frame).await
    }

    async fn close(&self) {
        for reader in &self.readers {
            reader.abort();
        }
        match &self.publisher {
            Publisher::Pool { pool, .. } => pool.close(),
            Publisher::Sentinel { sentinel, .. } => sentinel.close(),
            Publisher::Tls { .. } | Publisher::Cluster { .. } => {}
        }
    }
}

mod cluster;
mod sentinel;
mod shard;
mod tls;
pub use cluster::connect_cluster;
pub use sentinel::{SENTINEL_NAME, connect_sentinel};
use tls::Server;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_credentials() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.5:6379/0"),
            "redis://<credentials>@10.0.0.5:6379/0"
        );
        assert_eq!(redacted("redis://10.0.0.5"), "redis://10.0.0.5");
    }
}
