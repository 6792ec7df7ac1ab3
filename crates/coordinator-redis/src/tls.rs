//! TLS to a Redis server with this library's own rustls configuration (ring),
//! so that nothing depends on the process-wide default crypto provider.
//!
//! redis-rs makes its TLS configuration with `ClientConfig::builder()`, which
//! takes the process default provider: in a process that links both ring and
//! aws-lc-rs (an application on aws-lc-rs, say) and installed neither as the
//! default, that panics. So for a `rediss://` URL the `Redis` carrier opens
//! the TCP connection and the TLS session itself, and hands the stream to
//! redis-rs (`PubSub::new`, `MultiplexedConnection::new_with_config`), which
//! then speaks RESP on it as on its own.

use coordinator_core::Error;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo, RedisResult};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

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
    /// A dialer for `info` when it is a TLS address (`None` otherwise),
    /// trusting `roots` (PEM) or else the system's authorities. `field`
    /// names the URL in errors.
    pub(crate) fn new(
        info: &ConnectionInfo,
        roots: Option<&[u8]>,
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
        let mut store = rustls::RootCertStore::empty();
        match roots {
            Some(pem) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    let certificate =
                        certificate.map_err(|error| failed(format!("tlsCaPath: {error}")))?;
                    store
                        .add(certificate)
                        .map_err(|error| failed(format!("tlsCaPath: {error}")))?;
                }
                if store.is_empty() {
                    return Err(failed(
                        "tlsCaPath: no certificate in it (expected PEM)".into(),
                    ));
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
                        "no system certificate authority could be read ({:?}): give tlsCaPath",
                        found.errors.first()
                    )));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| failed(format!("TLS: {error}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|error| failed(format!("{host:?} cannot name a TLS server: {error}")))?;
        Ok(Some(Self {
            host: host.clone(),
            port: *port,
            server_name,
            redis: info.redis_settings().clone(),
            connector: TlsConnector::from(Arc::new(config)),
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
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(self.response_timeout));
        let (connection, driver) =
            MultiplexedConnection::new_with_config(&self.redis, self.stream().await?, config)
                .await?;
        tokio::spawn(driver);
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(url: &str, roots: Option<&[u8]>) -> Result<Option<TlsDialer>, Error> {
        let info = crate::connection_info(url, "redis.url")?;
        let second = Duration::from_secs(1);
        TlsDialer::new(&info, roots, "redis.url", second, second)
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
        assert!(message.starts_with("redis.url: "), "{message}");
    }
}
