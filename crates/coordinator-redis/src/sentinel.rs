//! `RedisSentinel`: the `Redis` carrier on the master that Redis Sentinel
//! names.
//!
//! The sentinels are asked for the master of `serviceName` (redis-rs checks
//! with `ROLE` that the server named is a master) whenever a connection to it
//! is made: the subscription, and the connection publishes are written on.
//! One task listens to the sentinels' `+switch-master` announcements. When
//! the master of this service moves, every connection made before is left:
//! the subscription is opened again on the new master (`LinkDown`, then
//! `LinkUp`; what was published meanwhile is lost, and the engine reports it
//! as a gap), and the next publish connects to the new master. A master that
//! dies drops the subscription's connection at once; until the sentinels
//! have promoted a replica, the sentinels still name the dead master and
//! subscribing fails and is tried again with backoff (at once when the
//! failover is announced).

use crate::{Publisher, RedisTransport, Servers, read, redacted_list, subscribe};
use coordinator_core::config::{RedisProtocol, RedisSentinelConfig};
use coordinator_core::routes::{Routes, backoff};
use coordinator_core::transport::Link;
use coordinator_core::{Error, Settings};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, TlsCertificates, TlsMode};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `@type` name of this carrier.
pub const SENTINEL_NAME: &str = "RedisSentinel";

/// The sentinels' announcement of a new master:
/// `<service> <old host> <old port> <new host> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

const WATCH_BACKOFF_BASE: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The sentinels of one service, and the failovers they announced.
pub(crate) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    service: String,
    /// Timeouts of the connections made to the master.
    connect: AsyncConnectionConfig,
    /// Counts the failovers announced since the start: a connection made in
    /// an earlier generation is left.
    generation: watch::Sender<u64>,
    /// The master's address as last named, to tell whether a failover was
    /// missed while the watch was away.
    named: parking_lot::Mutex<Option<(String, u16)>>,
    watcher: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Sentinel {
    /// A client for the master the sentinels name now.
    pub(crate) async fn master(&self) -> redis::RedisResult<redis::Client> {
        let client = self.client.lock().await.async_get_client().await?;
        *self.named.lock() = address(client.get_connection_info().addr());
        Ok(client)
    }

    /// A connection to the master the sentinels name now.
    pub(crate) async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        self.master()
            .await?
            .get_multiplexed_async_connection_with_config(&self.connect)
            .await
    }

    /// How many failovers have been announced.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Resolves once a failover is announced after `generation`.
    pub(crate) async fn failed_over_since(&self, generation: u64) {
        let mut changes = self.generation.subscribe();
        // The sender lives as long as `self`: this ends only on a change.
        let _ = changes.wait_for(|now| *now != generation).await;
    }

    fn failed_over(&self, to: Option<(String, u16)>) {
        tracing::warn!(service = %self.service, master = ?to, "the sentinels failed the master over");
        *self.named.lock() = to;
        self.generation.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn close(&self) {
        if let Some(watcher) = self.watcher.lock().take() {
            watcher.abort();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.close();
    }
}

fn address(addr: &ConnectionAddr) -> Option<(String, u16)> {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}

/// Follows the sentinels' `+switch-master` announcements for `sentinel`'s
/// service, on one sentinel at a time, until `sentinel` is dropped.
async fn watch(sentinel: Weak<Sentinel>) {
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let Some(strong) = sentinel.upgrade() else {
            return;
        };
        let opened = async {
            let client = strong
                .client
                .lock()
                .await
                .async_get_sentinel_client()
                .await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            // A failover announced while no sentinel was listened to.
            let named: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&strong.service)
                .query_async(&mut client.get_multiplexed_async_connection().await?)
                .await?;
            redis::RedisResult::Ok((pubsub, named))
        }
        .await;
        let mut messages = match opened {
            Ok((pubsub, named)) => {
                failures = 0;
                let known = strong.named.lock().clone();
                if !first && named.is_some() && named != known {
                    strong.failed_over(named);
                }
                first = false;
                pubsub.into_on_message()
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, WATCH_BACKOFF_BASE, WATCH_BACKOFF_MAX);
                tracing::debug!(%error, ?wait, "no sentinel to listen to for failovers yet");
                drop(strong);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let service = strong.service.clone();
        drop(strong);
        while let Some(message) = messages.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            let mut words = text.split_whitespace();
            if words.next() != Some(service.as_str()) {
                continue;
            }
            let to = words
                .nth(2)
                .zip(words.next().and_then(|port| port.parse().ok()))
                .map(|(host, port)| (host.to_string(), port));
            let Some(strong) = sentinel.upgrade() else {
                return;
            };
            strong.failed_over(to);
        }
        tracing::debug!("the sentinel listened to for failovers went away; trying the others");
    }
}

/// Connects to the master that the sentinels of `config` name and subscribes
/// node `settings.node_id`'s channels there.
pub async fn connect_sentinel(
    config: &RedisSentinelConfig,
    settings: &Settings,
) -> Result<Link, Error> {
    let secret = |secret: &coordinator_core::config::Secret, field: &str| {
        secret
            .resolve(field)
            .map(|found| found.map(|secret| secret.expose().to_string()))
            .map_err(|error| Error::Start(error.to_string()))
    };
    let password = secret(&config.auth_secret, "redisSentinel.authSecret")?;
    let sentinel_password = secret(&config.sentinel_secret, "redisSentinel.sentinelSecret")?;
    let roots = crate::tls_roots(config.tls_ca_path.as_deref(), "redisSentinel.tlsCaPath")?;
    let mut sentinels = Vec::new();
    for (index, url) in config.urls.iter().enumerate() {
        let info = crate::connection_info(url, &format!("redisSentinel.urls[{index}]"))?;
        sentinels.push(info.addr().clone());
    }
    let tls = sentinels
        .iter()
        .any(|addr| matches!(addr, ConnectionAddr::TcpTls { .. }));
    let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let start = |error: redis::RedisError| Error::Start(format!("redisSentinel: {error}"));
    let mut builder =
        SentinelClientBuilder::new(sentinels, &config.service_name, SentinelServerType::Master)
            .map_err(start)?
            .set_client_to_redis_tcp_settings(nodelay.clone())
            .set_client_to_sentinel_tcp_settings(nodelay)
            .set_client_to_redis_protocol(match config.protocol_version {
                RedisProtocol::Resp2 => redis::ProtocolVersion::RESP2,
                RedisProtocol::Resp3 => redis::ProtocolVersion::RESP3,
            });
    // A user name without its secret is ignored, as Stalwart does (its
    // defaults carry one); `check-config` warns of it.
    if let Some(password) = &password {
        if let Some(user) = &config.auth_username {
            builder = builder.set_client_to_redis_username(user);
        }
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = &sentinel_password {
        if let Some(user) = &config.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        builder = builder.set_client_to_sentinel_password(password);
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(roots) = &roots {
            let certificates = || TlsCertificates {
                client_tls: None,
                root_cert: Some(roots.clone()),
            };
            builder = builder
                .set_client_to_redis_certificates(certificates())
                .set_client_to_sentinel_certificates(certificates());
        }
    }
    let client = builder.build().map_err(start)?;
    let create = config.pool.pool_timeout_create.unwrap_or(config.timeout);
    let sentinel = Arc::new(Sentinel {
        client: tokio::sync::Mutex::new(client),
        service: config.service_name.clone(),
        connect: AsyncConnectionConfig::new()
            .set_connection_timeout(Some(create))
            .set_response_timeout(Some(config.timeout)),
        generation: watch::Sender::new(0),
        named: parking_lot::Mutex::new(None),
        watcher: parking_lot::Mutex::new(None),
    });
    let named = redacted_list(&config.urls);
    let unreachable = |error: &dyn std::fmt::Display| {
        Error::Start(format!(
            "redisSentinel.urls: no master {:?} to subscribe on through {named}: {error}",
            config.service_name
        ))
    };
    let channels = Routes::new(&settings.cluster);
    let own = channels.node(settings.node_id);
    // The first subscription is made here, so that wrong sentinels, a wrong
    // service name or a master that is down stop the start with a clear error.
    // (No failover can be announced before the watch below starts.)
    let generation = sentinel.generation();
    let first = tokio::time::timeout(config.timeout, async {
        let master = sentinel.master().await?;
        subscribe(&master, &channels.broadcast, &own).await
    })
    .await
    .map_err(|_| unreachable(&"timed out"))?
    .map_err(|error| unreachable(&error))?;
    let span = tracing::info_span!("redis-sentinel", node = settings.node_id);
    *sentinel.watcher.lock() = Some(tokio::spawn(tracing::Instrument::instrument(
        watch(Arc::downgrade(&sentinel)),
        span.clone(),
    )));
    let (inbound, receiver) = coordinator_core::transport::inbound();
    let reader = tokio::spawn(tracing::Instrument::instrument(
        read(
            Servers::Sentinel(sentinel.clone()),
            first,
            generation,
            channels.broadcast.clone(),
            own,
            inbound,
            None,
        ),
        span,
    ));
    tracing::info!(
        sentinels = %named,
        service = %config.service_name,
        master = ?sentinel.named.lock().clone(),
        broadcast = %channels.broadcast,
        "redis sentinel carrier connected"
    );
    Ok(Link {
        transport: Arc::new(RedisTransport {
            publisher: Publisher::Sentinel {
                sentinel,
                kept: parking_lot::Mutex::new(None),
            },
            carrier: SENTINEL_NAME,
            channels,
            timeout: config.timeout,
            readers: vec![reader],
        }),
        inbound: receiver,
    })
}
