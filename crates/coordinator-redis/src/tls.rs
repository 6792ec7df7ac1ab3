//! TLS to a Redis server with this library's own rustls configuration (ring),
//! so that nothing depends on the process-wide default crypto provider.
//!
//! redis-rs makes its TLS configuration with `ClientConfig::builder()`, which
//! takes the process default provider: in a process that links both ring and
//! aws-lc-rs (an application on aws-lc-rs, say) and installed neither as the
//! default, that panics. So for a `rediss://` URL every Redis carrier opens
//! the TCP connection and the TLS session itself, and hands the stream to
//! redis-rs (`PubSub::new`, `MultiplexedConnection::new_with_config`), which
//! then speaks RESP on it as on its own: `Redis` to its server, `RedisSentinel`
//! to the sentinels and the master they name, `RedisCluster` to the servers
//! it subscribes on and, through [`NodeConnection`], for redis-rs's cluster
//! client.

use coordinator_core::Error;
use futures_util::FutureExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    RedisFuture, RedisResult,
};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The library's TLS client configuration: ring, trusting the authorities
/// of `roots` (PEM; `field` names their setting in errors) or else the
/// system's.
pub(crate) fn client_config(roots: Option<&[u8]>, field: &str) -> Result<Arc<ClientConfig>, Error> {
    let failed = |detail: String| Error::Start(format!("{field}: {detail}"));
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Some(pem) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|error| failed(error.to_string()))?;
                store
                    .add(certificate)
                    .map_err(|error| failed(error.to_string()))?;
            }
            if store.is_empty() {
                return Err(failed("no certificate in it (expected PEM)".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for certificate in found.certs {
                // One unusable system certificate does not stop the others.
                let _ = store.add(certificate);
            }
            if store.is_empty() {
                return Err(failed(format!(
                    "not given, and no system certificate authority could be read ({:?})",
                    found.errors.first()
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| failed(format!("TLS: {error}")))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration for `infos` when one of them is a TLS address
/// (`rediss://`), with the authorities of `roots` (named `field`).
pub(crate) fn config_for<'a>(
    infos: impl IntoIterator<Item = &'a ConnectionInfo>,
    roots: Option<&[u8]>,
    field: &str,
) -> Result<Option<Arc<ClientConfig>>, Error> {
    let mut infos = infos.into_iter();
    if infos.any(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. })) {
        client_config(roots, field).map(Some)
    } else {
        Ok(None)
    }
}

/// Opens TLS connections to one Redis server.
pub(crate) struct TlsDialer {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    redis: RedisConnectionInfo,
    connector: TlsConnector,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl TlsDialer {
    /// A dialer for `info` when it is a TLS address (`None` otherwise), with
    /// `config`. `field` names the URL in errors.
    pub(crate) fn new(
        info: &ConnectionInfo,
        config: &Arc<ClientConfig>,
        field: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Option<Self>, Error> {
        let ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } = info.addr()
        else {
            return Ok(None);
        };
        let failed = |detail: String| Error::Start(format!("{field}: {detail}"));
        if *insecure {
            return Err(failed(
                "TLS without certificate checks (#insecure) is not supported: give the \
                 authority that signs the server's certificate in tlsCaPath instead"
                    .into(),
            ));
        }
        let server_name = ServerName::try_from(host.clone())
            .map_err(|error| failed(format!("{host:?} cannot name a TLS server: {error}")))?;
        Ok(Some(Self {
            host: host.clone(),
            port: *port,
            server_name,
            redis: info.redis_settings().clone(),
            connector: TlsConnector::from(config.clone()),
            connect_timeout,
            response_timeout,
        }))
    }

    async fn stream(&self) -> RedisResult<TlsStream<TcpStream>> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            // Two commands back to back must not wait for a delayed ACK.
            tcp.set_nodelay(true)?;
            self.connector.connect(self.server_name.clone(), tcp).await
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(stream) => Ok(stream?),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS connection within {:?}", self.connect_timeout),
            )
            .into()),
        }
    }

    /// A pub/sub connection.
    pub(crate) async fn pubsub(&self) -> RedisResult<PubSub> {
        PubSub::new(&self.redis, self.stream().await?).await
    }

    /// A multiplexed connection for commands; its driver runs on a task of
    /// its own until the connection is dropped.
    pub(crate) async fn multiplexed(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.response_timeout));
        self.multiplexed_with(config).await
    }

    /// A multiplexed connection made with `config` (push sender, timeouts).
    pub(crate) async fn multiplexed_with(
        &self,
        config: AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let (connection, driver) =
            MultiplexedConnection::new_with_config(&self.redis, self.stream().await?, config)
                .await?;
        tokio::spawn(driver);
        Ok(connection)
    }
}

/// One Redis server: reached by redis-rs over plain TCP, or over this
/// library's TLS.
#[derive(Clone)]
pub(crate) enum Server {
    Plain(Box<redis::Client>),
    Tls(Arc<TlsDialer>),
}

impl Server {
    /// The server of `info`; a TLS address needs `tls`. `field` names it in
    /// errors.
    pub(crate) fn new(
        info: ConnectionInfo,
        tls: Option<&Arc<ClientConfig>>,
        field: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, Error> {
        if let ConnectionAddr::TcpTls { .. } = info.addr() {
            let Some(config) = tls else {
                return Err(Error::Start(format!(
                    "{field}: a TLS address among servers reached without TLS"
                )));
            };
            let dialer = TlsDialer::new(&info, config, field, connect_timeout, response_timeout)?
                .expect("a TLS address");
            return Ok(Server::Tls(Arc::new(dialer)));
        }
        redis::Client::open(info)
            .map(|client| Server::Plain(Box::new(client)))
            .map_err(|error| Error::Start(format!("{field}: {error}")))
    }

    /// A pub/sub connection.
    pub(crate) async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Server::Plain(client) => client.get_async_pubsub().await,
            Server::Tls(dialer) => dialer.pubsub().await,
        }
    }

    /// A multiplexed connection made with `config`.
    pub(crate) async fn multiplexed(
        &self,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        match self {
            Server::Plain(client) => {
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
            }
            Server::Tls(dialer) => dialer.multiplexed_with(config.clone()).await,
        }
    }
}

/// The TLS configuration of the process's `RedisCluster` carriers, which
/// redis-rs's cluster client asks for through [`NodeConnection`] (a type,
/// not a value: it cannot carry one carrier's configuration).
struct ClusterTls {
    roots: Option<Vec<u8>>,
    config: Weak<ClientConfig>,
    connect_timeout: Duration,
}

static CLUSTER_TLS: parking_lot::Mutex<Option<ClusterTls>> = parking_lot::Mutex::new(None);

/// The TLS configuration a `RedisCluster` carrier's cluster client uses, for
/// authorities `roots` (PEM, from the setting `field`; `None`: the
/// system's). The carrier keeps it while it runs. Carriers of one process
/// that run at once share it, so they must trust the same authorities: a
/// second one with others is refused (rather than trusting the union).
pub(crate) fn cluster_config(
    roots: Option<&[u8]>,
    field: &str,
    connect_timeout: Duration,
) -> Result<Arc<ClientConfig>, Error> {
    let mut registered = CLUSTER_TLS.lock();
    if let Some(existing) = registered.as_ref()
        && let Some(config) = existing.config.upgrade()
    {
        if existing.roots.as_deref() == roots {
            return Ok(config);
        }
        return Err(Error::Start(format!(
            "{field}: another RedisCluster carrier of this process, still running, trusts other \
             certificate authorities; carriers of one process that run at once must share \
             tlsCaPath"
        )));
    }
    let config = client_config(roots, field)?;
    *registered = Some(ClusterTls {
        roots: roots.map(<[u8]>::to_vec),
        config: Arc::downgrade(&config),
        connect_timeout,
    });
    Ok(config)
}

/// A cluster client's connection to one node, made by redis-rs's cluster
/// client through [`redis::cluster_async::Connect`]: a TLS address is dialed
/// with the configuration of [`cluster_config`], not redis-rs's own (which
/// takes the process default crypto provider).
#[derive(Clone)]
pub(crate) struct NodeConnection(MultiplexedConnection);

/// The cluster client of `RedisCluster`.
pub(crate) type ClusterConnection = redis::cluster_async::ClusterConnection<NodeConnection>;

impl redis::aio::ConnectionLike for NodeConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

impl redis::cluster_async::Connect for NodeConnection {
    fn connect_with_config<'a, T>(info: T, config: AsyncConnectionConfig) -> RedisFuture<'a, Self>
    where
        T: IntoConnectionInfo + Send + 'a,
    {
        async move {
            let info = info.into_connection_info()?;
            if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
                return MultiplexedConnection::connect_with_config(info, config)
                    .await
                    .map(NodeConnection);
            }
            let registered = CLUSTER_TLS
                .lock()
                .as_ref()
                .and_then(|tls| Some((tls.config.upgrade()?, tls.connect_timeout)));
            let Some((tls, connect_timeout)) = registered else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no RedisCluster carrier's TLS configuration (the carrier has stopped)",
                )));
            };
            let dialer = TlsDialer::new(
                &info,
                &tls,
                "redisCluster.urls",
                connect_timeout,
                connect_timeout,
            )
            .map_err(|error| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "TLS",
                    error.to_string(),
                ))
            })?
            .expect("a TLS address");
            dialer.multiplexed_with(config).await.map(NodeConnection)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(url: &str, roots: Option<&[u8]>) -> Result<Option<TlsDialer>, Error> {
        let info = crate::connection_info(url, "redis.url")?;
        let config = client_config(roots, "redis.tlsCaPath")?;
        let second = Duration::from_secs(1);
        TlsDialer::new(&info, &config, "redis.url", second, second)
    }

    #[test]
    fn only_tls_addresses_get_a_dialer_and_unchecked_tls_is_refused_by_name() {
        assert!(dialer("redis://127.0.0.1:6379", None).unwrap().is_none());
        let Err(Error::Start(message)) = dialer("rediss://127.0.0.1:6379/#insecure", None) else {
            panic!("#insecure was accepted");
        };
        assert!(
            message.starts_with("redis.url: ") && message.contains("#insecure"),
            "{message}"
        );
        let Err(Error::Start(message)) = dialer("rediss://127.0.0.1:6379", Some(b"not PEM")) else {
            panic!("an authority file without a certificate was accepted");
        };
        assert!(message.starts_with("redis.tlsCaPath: "), "{message}");
    }

    fn authority() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[test]
    fn cluster_carriers_running_at_once_share_their_authorities_or_the_second_is_refused() {
        let (first, other) = (authority(), authority());
        let second = Duration::from_secs(1);
        let field = "redisCluster.tlsCaPath";
        let running = cluster_config(Some(&first), field, second).unwrap();
        let same = cluster_config(Some(&first), field, second).unwrap();
        assert!(
            Arc::ptr_eq(&running, &same),
            "the same authorities share one"
        );
        let Err(Error::Start(message)) = cluster_config(Some(&other), field, second) else {
            panic!("a carrier trusting other authorities was accepted beside a running one");
        };
        assert!(message.starts_with("redisCluster.tlsCaPath: "), "{message}");
        // Once the carriers that used it stopped, others may be trusted.
        drop((running, same));
        cluster_config(Some(&other), field, second).unwrap();
    }
}
