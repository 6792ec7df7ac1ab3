//! `RedisCluster`: publishes through the redis-rs cluster client, reads on a
//! plain pub/sub connection to one node at a time (see the crate's docs).

use crate::shard::{OpenError, ShardedSender, ShardedSubscriber};
use crate::tls::{self, Server};
use crate::{CLUSTER_NAME, Publisher, RedisTransport, read, redacted_list, subscribe};
use coordinator_core::config::{RedisClusterConfig, RedisProtocol};
use coordinator_core::routes::Routes;
use coordinator_core::transport::Link;
use coordinator_core::{Error, Settings};
use redis::cluster::ClusterClientBuilder;
use std::sync::Arc;
use std::time::Duration;

/// The longest a `SPUBLISH` may take before the classic route is tried (a
/// copy that arrived after all is dropped by the engine as a duplicate).
const SPUBLISH_WAIT: Duration = Duration::from_millis(250);

/// Connects to the cluster of `config` and subscribes node
/// `settings.node_id`'s channels.
pub async fn connect_cluster(
    config: &RedisClusterConfig,
    settings: &Settings,
) -> Result<Link, Error> {
    let password = config
        .auth_secret
        .resolve("redisCluster.authSecret")
        .map_err(|error| Error::Start(error.to_string()))?
        .map(|secret| secret.expose().to_string());
    let roots = crate::tls_roots(config.tls_ca_path.as_deref(), "redisCluster.tlsCaPath")?;
    let create = config.pool.pool_timeout_create.unwrap_or(config.timeout);
    let mut builder = ClusterClientBuilder::new(config.urls.clone())
        .use_protocol(match config.protocol_version {
            RedisProtocol::Resp2 => redis::ProtocolVersion::RESP2,
            RedisProtocol::Resp3 => redis::ProtocolVersion::RESP3,
        })
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
        .connection_timeout(create)
        .response_timeout(config.timeout);
    if let Some(user) = &config.auth_username {
        builder = builder.username(user);
    }
    if let Some(password) = &password {
        builder = builder.password(password);
    }
    if let Some(retries) = config.max_retries {
        builder = builder.retries(retries as u32);
    }
    if let Some(wait) = config.min_retry_wait {
        builder = builder.min_retry_wait(wait.as_millis() as u64);
    }
    if let Some(wait) = config.max_retry_wait {
        builder = builder.max_retry_wait(wait.as_millis() as u64);
    }
    // The servers of `urls`, with credentials.
    let mut servers = Vec::new();
    for (index, url) in config.urls.iter().enumerate() {
        let info = crate::connection_info(url, &format!("redisCluster.urls[{index}]"))?;
        let mut redis = info.redis_settings().clone();
        if let Some(user) = &config.auth_username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &password {
            redis = redis.set_password(password);
        }
        servers.push(info.set_redis_settings(redis));
    }
    // TLS with this library's configuration, for the cluster client too (no
    // certificates are given to redis-rs, which would make its own).
    let tls = if servers
        .iter()
        .any(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }))
    {
        Some(tls::cluster_config(
            roots.as_deref(),
            "redisCluster.tlsCaPath",
            create,
        )?)
    } else {
        None
    };
    if config.read_from_replicas {
        builder = builder.read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
    }
    let client = builder
        .build()
        .map_err(|error| Error::Start(format!("redisCluster.urls: {error}")))?;
    let servers_named = redacted_list(&config.urls);
    let unreachable = |error: &dyn std::fmt::Display| {
        Error::Start(format!(
            "redisCluster.urls: cannot reach {servers_named}: {error}"
        ))
    };
    let connection = tokio::time::timeout(
        config.timeout,
        client.get_async_generic_connection::<tls::NodeConnection>(),
    )
    .await
    .map_err(|_| unreachable(&"timed out"))?
    .map_err(|error| unreachable(&error))?;

    // One plain pub/sub connection to a server of `urls`, tried in turn.
    let mut subscribers = Vec::new();
    for (index, info) in servers.iter().enumerate() {
        subscribers.push(Server::new(
            info.clone(),
            tls.as_ref(),
            &format!("redisCluster.urls[{index}]"),
            create,
            config.timeout,
        )?);
    }
    let channels = Routes::new(&settings.cluster);
    let own = channels.node(settings.node_id);
    let mut first = None;
    let mut last_error = None;
    for (index, subscriber) in subscribers.iter().enumerate() {
        match tokio::time::timeout(
            config.timeout,
            subscribe(subscriber, &channels.broadcast, &own),
        )
        .await
        {
            Ok(Ok(pubsub)) => {
                first = Some(pubsub);
                subscribers.rotate_left(index);
                break;
            }
            Ok(Err(error)) => last_error = Some(error.to_string()),
            Err(_) => last_error = Some("timed out".into()),
        }
    }
    let Some(first) = first else {
        return Err(unreachable(&format!(
            "no node accepted a subscription ({})",
            last_error.unwrap_or_default()
        )));
    };
    let (inbound, receiver) = coordinator_core::transport::inbound();
    let span = tracing::info_span!("redis-cluster", node = settings.node_id);
    // `subscribers` was rotated: the first is the server subscribed on.
    let home: crate::Home = Arc::new(parking_lot::Mutex::new(
        subscribers[0]
            .multiplexed(&redis::AsyncConnectionConfig::new())
            .await
            .ok(),
    ));
    let mut readers = Vec::new();
    if config.sharded_pub_sub {
        let subscriber = ShardedSubscriber::new(servers, tls.clone(), own.clone(), config.timeout);
        let first = match tokio::time::timeout(config.timeout, subscriber.open(None)).await {
            Ok(Ok(subscription)) => Some(subscription),
            // `run` tries once more, says so and stops.
            Ok(Err(OpenError::Refused(_))) => None,
            Ok(Err(OpenError::Failed(detail))) => {
                tracing::warn!(%detail, "no sharded subscription yet; messages to this node take the classic route until there is");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "no sharded subscription yet (timed out); messages to this node take the classic route until there is"
                );
                None
            }
        };
        readers.push(tokio::spawn(tracing::Instrument::instrument(
            subscriber.run(first, inbound.clone()),
            span.clone(),
        )));
    }
    readers.push(tokio::spawn(tracing::Instrument::instrument(
        read(
            crate::Servers::Listed(subscribers),
            first,
            0,
            channels.broadcast.clone(),
            own,
            inbound,
            Some(home.clone()),
        ),
        span,
    )));
    tracing::info!(%servers_named, broadcast = %channels.broadcast, sharded = config.sharded_pub_sub, "redis cluster carrier connected");
    let sharded = config
        .sharded_pub_sub
        .then(|| ShardedSender::new((config.timeout / 4).min(SPUBLISH_WAIT)));
    Ok(Link {
        transport: Arc::new(RedisTransport {
            publisher: Publisher::Cluster {
                home,
                cluster: connection,
                sharded,
                _tls: tls,
            },
            carrier: CLUSTER_NAME,
            channels,
            timeout: config.timeout,
            readers,
        }),
        inbound: receiver,
    })
}
