//! `RedisSentinel`: the `Redis` carrier on the master that Redis Sentinel
//! names.
//!
//! The sentinels are asked for the master of `serviceName`
//! (`SENTINEL get-master-addr-by-name`, on each sentinel in turn until one
//! answers; `ROLE` then checks that the server named is a master) whenever a
//! connection to it is made: the subscription, and the connection publishes
//! are written on. Over TLS, sentinels and master are dialed with this
//! library's configuration (see `tls.rs`).
//! One task listens to the sentinels' `+switch-master` announcements. When
//! the master of this service moves, every connection made before is left:
//! the subscription is opened again on the new master (`LinkDown`, then
//! `LinkUp`; what was published meanwhile is lost, and the engine reports it
//! as a gap), and the next publish connects to the new master. A master that
//! dies drops the subscription's connection at once; until the sentinels
//! have promoted a replica, the sentinels still name the dead master and
//! subscribing fails and is tried again with backoff (at once when the
//! failover is announced).

use crate::tls::{self, Server};
use crate::{Publisher, RedisTransport, Servers, read, redacted_list, subscribe};
use coordinator_core::config::{RedisProtocol, RedisSentinelConfig};
use coordinator_core::routes::{Routes, backoff};
use coordinator_core::transport::Link;
use coordinator_core::{Error, Settings};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    sentinels: Vec<Server>,
    /// The sentinel asked first: the last that answered.
    first: AtomicUsize,
    service: String,
    /// Credentials and protocol for the master.
    master: RedisConnectionInfo,
    /// The TLS configuration, when the sentinels (and so the master) speak TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Timeouts of the connections made to sentinels and master.
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
    /// The master's address as the first sentinel that answers names it.
    async fn ask(&self) -> redis::RedisResult<(String, u16)> {
        let count = self.sentinels.len();
        let start = self.first.load(Ordering::Relaxed);
        let mut last = None;
        for index in (start..start + count).map(|index| index % count) {
            let asked = async {
                let mut connection = self.sentinels[index].multiplexed(&self.connect).await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query_async::<Option<(String, u16)>>(&mut connection)
                    .await
            };
            match asked.await {
                Ok(Some(address)) => {
                    self.first.store(index, Ordering::Relaxed);
                    return Ok(address);
                }
                Ok(None) => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the sentinels know no master by that name",
                        format!("{:?}", self.service),
                    )))
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no sentinel to ask"))
        }))
    }

    /// The master the sentinels name now, and a connection to it on which
    /// `ROLE` said it is one.
    async fn checked_master(&self) -> redis::RedisResult<(Server, MultiplexedConnection)> {
        let (host, port) = self.ask().await?;
        let addr = match self.tls {
            Some(_) => ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: false,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(host.clone(), port),
        };
        let info = addr
            .into_connection_info()?
            .set_redis_settings(self.master.clone())
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let server = Server::new(
            info,
            self.tls.as_ref(),
            "redisSentinel",
            self.connect_timeout,
            self.response_timeout,
        )
        .map_err(|error| {
            redis::RedisError::from((redis::ErrorKind::Client, "master", error.to_string()))
        })?;
        let mut connection = server.multiplexed(&self.connect).await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut connection).await?;
        let role = match role.first() {
            Some(redis::Value::BulkString(role)) => String::from_utf8_lossy(role).into_owned(),
            Some(redis::Value::SimpleString(role)) => role.clone(),
            _ => String::new(),
        };
        if role != "master" {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the server the sentinels name is not a master (yet)",
                format!("{host}:{port} is {role:?}"),
            )));
        }
        *self.named.lock() = Some((host, port));
        Ok((server, connection))
    }

    /// The master the sentinels name now.
    pub(crate) async fn master(&self) -> redis::RedisResult<Server> {
        Ok(self.checked_master().await?.0)
    }

    /// A connection to the master the sentinels name now.
    pub(crate) async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        Ok(self.checked_master().await?.1)
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
            let index = strong.first.load(Ordering::Relaxed) % strong.sentinels.len();
            let sentinel = &strong.sentinels[(index + failures as usize) % strong.sentinels.len()];
            let mut pubsub = sentinel.pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            // A failover announced while no sentinel was listened to.
            let named: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&strong.service)
                .query_async(&mut sentinel.multiplexed(&strong.connect).await?)
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
    if config.urls.is_empty() {
        return Err(Error::Start("redisSentinel.urls: no sentinel given".into()));
    }
    let create = config.pool.pool_timeout_create.unwrap_or(config.timeout);
    let mut infos = Vec::new();
    for (index, url) in config.urls.iter().enumerate() {
        let info = crate::connection_info(url, &format!("redisSentinel.urls[{index}]"))?;
        // A user name without its secret is ignored, as Stalwart does (its
        // defaults carry one); `check-config` warns of it.
        let mut redis = info.redis_settings().clone();
        if let Some(password) = &sentinel_password {
            if let Some(user) = &config.sentinel_username {
                redis = redis.set_username(user);
            }
            redis = redis.set_password(password);
        }
        infos.push(info.set_redis_settings(redis));
    }
    // The master speaks TLS when the sentinels do.
    let tls = tls::config_for(&infos, roots.as_deref(), "redisSentinel.tlsCaPath")?;
    let mut sentinels = Vec::new();
    for (index, info) in infos.into_iter().enumerate() {
        sentinels.push(Server::new(
            info,
            tls.as_ref(),
            &format!("redisSentinel.urls[{index}]"),
            create,
            config.timeout,
        )?);
    }
    let mut master = RedisConnectionInfo::default().set_protocol(match config.protocol_version {
        RedisProtocol::Resp2 => redis::ProtocolVersion::RESP2,
        RedisProtocol::Resp3 => redis::ProtocolVersion::RESP3,
    });
    if let Some(password) = &password {
        if let Some(user) = &config.auth_username {
            master = master.set_username(user);
        }
        master = master.set_password(password);
    }
    let sentinel = Arc::new(Sentinel {
        sentinels,
        first: AtomicUsize::new(0),
        service: config.service_name.clone(),
        master,
        tls,
        connect_timeout: create,
        response_timeout: config.timeout,
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

#[cfg(test)]
mod tests {
    use super::*;
    use coordinator_core::config::{CarrierConfig, CoordinatorConfig};

    #[tokio::test]
    async fn an_empty_sentinel_list_is_refused_by_name() {
        // The configuration reader refuses it; a configuration built in code
        // reaches the carrier.
        let config = CoordinatorConfig::from_json(r#"{"@type": "RedisSentinel"}"#).unwrap();
        let CarrierConfig::RedisSentinel(mut sentinel) = config.carrier else {
            panic!("a RedisSentinel configuration");
        };
        sentinel.urls.clear();
        let Err(Error::Start(message)) = connect_sentinel(&sentinel, &Settings::new(1)).await
        else {
            panic!("no sentinel was accepted");
        };
        assert!(message.starts_with("redisSentinel.urls: "), "{message}");
    }
}
