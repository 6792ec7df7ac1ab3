//! TLS on the TCP side: the node's certificate (from `certPath`/`keyPath`, or
//! self-signed at start), and how a dialing node checks the other's.
//!
//! With `tlsDomain`, the server's certificate must be valid for that name and
//! chain to a certificate in `certPath` (the cluster's CA, or the shared
//! certificate itself). Without it any certificate is accepted: the cluster
//! key proof that follows the TLS handshake is what authenticates the peer.

use coordinator_core::Error;
use coordinator_core::config::NativeConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Name put in self-signed certificates and sent as SNI when no `tlsDomain` is set.
pub const DEFAULT_NAME: &str = "coordinator.invalid";

/// The TLS side of a node.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn start_error(field: &str, detail: impl std::fmt::Display) -> Error {
    Error::Start(format!("native.{field}: {detail}"))
}

/// A self-signed certificate and its key, in PEM (for `coordinator gen-cert`).
pub fn self_signed_pem(names: Vec<String>) -> Result<(String, String), Error> {
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|error| Error::Start(format!("cannot make a certificate: {error}")))?;
    Ok((certified.cert.pem(), certified.key_pair.serialize_pem()))
}

fn load(
    config: &NativeConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    match (&config.cert_path, &config.key_path) {
        (Some(cert_path), Some(key_path)) => {
            let certs = CertificateDer::pem_file_iter(cert_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|error| start_error("certPath", format!("{cert_path}: {error}")))?;
            if certs.is_empty() {
                return Err(start_error(
                    "certPath",
                    format!("{cert_path}: no certificate"),
                ));
            }
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|error| start_error("keyPath", format!("{key_path}: {error}")))?;
            Ok((certs, key))
        }
        _ => {
            let name = config
                .tls_domain
                .clone()
                .unwrap_or_else(|| DEFAULT_NAME.to_string());
            let certified = rcgen::generate_simple_self_signed(vec![name]).map_err(|error| {
                Error::Start(format!("cannot make a self-signed certificate: {error}"))
            })?;
            let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
            Ok((vec![certified.cert.der().clone()], key.into()))
        }
    }
}

/// Builds the acceptor and connector from the configuration.
pub fn build(config: &NativeConfig) -> Result<Tls, Error> {
    let (certs, key) = load(config)?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| Error::Start(format!("TLS: {error}")))?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key)
        .map_err(|error| {
            start_error(
                "keyPath",
                format!("does not match the certificate: {error}"),
            )
        })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| Error::Start(format!("TLS: {error}")))?;
    let (client, name) = match &config.tls_domain {
        Some(domain) => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(|error| {
                    start_error("certPath", format!("not a usable trust anchor: {error}"))
                })?;
            }
            let name = ServerName::try_from(domain.clone())
                .map_err(|error| start_error("tlsDomain", error))?;
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                name,
            )
        }
        None => {
            let verifier = AnyCertificate {
                algorithms: provider().signature_verification_algorithms,
            };
            let name = ServerName::try_from(DEFAULT_NAME).expect("a valid DNS name");
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth(),
                name,
            )
        }
    };
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        server_name: name,
    })
}

/// Accepts any server certificate, but checks that the server holds its key.
/// Safe here only because the cluster key proof authenticates the peer next.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
