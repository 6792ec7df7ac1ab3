//! After TLS, both sides prove they hold the cluster key, bound to the TLS
//! session, and learn each other's node id from that proof.
//!
//! ```text
//! client → Hello  magic "CRDN" | version u8 | node id u64 | run u64 | addr | nonce 32
//! server → Hello  (the same fields)
//! client → Proof  HMAC-SHA256(K, "client" | exporter | client hello | server hello)
//! server → Proof  HMAC-SHA256(K, "server" | exporter | client hello | server hello)
//! ```
//!
//! `K` is derived from the cluster key with HKDF-SHA256 (salt: the cluster
//! name). `exporter` is 32 bytes of TLS keying material (RFC 8446 §7.5,
//! label `EXPORTER-coordinator-native`), the same on both ends of one TLS
//! session and different on any other, so a proof cannot be relayed. The
//! server checks the client's proof (in constant time) before it sends its
//! own, so a client without the key learns nothing.

use crate::frame::{FrameError, FrameType, read_frame, write_frame};
use crate::wire::{Reader, encode_addr};
use coordinator_core::NodeId;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 4] = b"CRDN";
/// Protocol version spoken on the TCP side (2: envelopes go unsealed, the
/// connection authenticates them; version 1 sealed each one).
pub const PROTOCOL_VERSION: u8 = 2;
/// Label of the TLS exporter the proofs are bound to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-coordinator-native";
/// Largest handshake frame.
const MAX_HANDSHAKE_FRAME: usize = 128;

/// What a side says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub id: NodeId,
    pub run: u64,
    /// Where it listens (for the gossip layer).
    pub addr: SocketAddr,
    pub nonce: [u8; 32],
}

impl Hello {
    pub fn new(id: NodeId, run: u64, addr: SocketAddr) -> Self {
        let mut nonce = [0; 32];
        rand::rng().fill_bytes(&mut nonce);
        Self {
            id,
            run,
            addr,
            nonce,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        out.extend_from_slice(MAGIC);
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.run.to_be_bytes());
        encode_addr(&self.addr, &mut out);
        out.extend_from_slice(&self.nonce);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let mut reader = Reader::new(bytes);
        let malformed = |_| HandshakeError::Malformed("hello");
        if &reader.take::<4>().map_err(malformed)? != MAGIC {
            return Err(HandshakeError::Malformed("hello"));
        }
        let version = reader.u8().map_err(malformed)?;
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version(version));
        }
        let hello = Hello {
            id: reader.u64().map_err(malformed)?,
            run: reader.u64().map_err(malformed)?,
            addr: reader.addr().map_err(malformed)?,
            nonce: reader.take().map_err(malformed)?,
        };
        reader.finish().map_err(malformed)?;
        Ok(hello)
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("protocol version {0} is not spoken here (this node speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: FrameType, got: FrameType },
    #[error("the peer does not hold the cluster key")]
    WrongKey,
    #[error("TLS keying material unavailable: {0}")]
    Exporter(String),
}

impl HandshakeError {
    /// The peer failed authentication (as opposed to speaking garbage).
    pub fn is_wrong_key(&self) -> bool {
        matches!(self, HandshakeError::WrongKey)
    }
}

/// The secret both sides prove they hold.
#[derive(Clone)]
pub struct AuthKey([u8; 32]);

impl AuthKey {
    pub fn derive(cluster_key: &[u8], cluster: &str) -> Self {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(cluster.as_bytes()), cluster_key);
        let mut key = [0; 32];
        hkdf.expand(b"coordinator-native/1 handshake", &mut key)
            .expect("32 bytes is a valid HKDF length");
        Self(key)
    }

    /// The key of the gossip datagrams.
    pub fn gossip_key(cluster_key: &[u8], cluster: &str) -> [u8; 32] {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(cluster.as_bytes()), cluster_key);
        let mut key = [0; 32];
        hkdf.expand(b"coordinator-native/1 gossip", &mut key)
            .expect("32 bytes is a valid HKDF length");
        key
    }

    fn mac(&self, role: &[u8], exporter: &[u8], client: &[u8], server: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        for part in [role, exporter, client, server] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    kind: FrameType,
    body: &[u8],
) -> Result<(), HandshakeError> {
    write_frame(stream, kind, body)
        .await
        .map_err(FrameError::from)?;
    stream.flush().await.map_err(FrameError::from)?;
    Ok(())
}

async fn expect<S: AsyncRead + Unpin>(
    stream: &mut S,
    expected: FrameType,
) -> Result<bytes::Bytes, HandshakeError> {
    let (got, body) = read_frame(stream, MAX_HANDSHAKE_FRAME).await?;
    if got != expected {
        return Err(HandshakeError::Unexpected { expected, got });
    }
    Ok(body)
}

/// The dialing side. `exporter`: the TLS session's keying material.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &AuthKey,
    exporter: &[u8],
    hello: &Hello,
) -> Result<Hello, HandshakeError> {
    let mine = hello.encode();
    send(stream, FrameType::Hello, &mine).await?;
    let theirs = expect(stream, FrameType::Hello).await?;
    let peer = Hello::decode(&theirs)?;
    let proof = key
        .mac(b"client", exporter, &mine, &theirs)
        .finalize()
        .into_bytes();
    send(stream, FrameType::Proof, &proof).await?;
    let their_proof = expect(stream, FrameType::Proof).await?;
    key.mac(b"server", exporter, &mine, &theirs)
        .verify_slice(&their_proof)
        .map_err(|_| HandshakeError::WrongKey)?;
    Ok(peer)
}

/// The accepting side.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &AuthKey,
    exporter: &[u8],
    hello: &Hello,
) -> Result<Hello, HandshakeError> {
    let theirs = expect(stream, FrameType::Hello).await?;
    let mine = hello.encode();
    let peer = match Hello::decode(&theirs) {
        Ok(peer) => peer,
        Err(HandshakeError::Version(version)) => {
            // Told, not only refused: the peer learns from this Hello which
            // version is spoken here (it would have had it next anyway).
            let _ = send(stream, FrameType::Hello, &mine).await;
            return Err(HandshakeError::Version(version));
        }
        Err(error) => return Err(error),
    };
    send(stream, FrameType::Hello, &mine).await?;
    let their_proof = expect(stream, FrameType::Proof).await?;
    key.mac(b"client", exporter, &theirs, &mine)
        .verify_slice(&their_proof)
        .map_err(|_| HandshakeError::WrongKey)?;
    let proof = key
        .mac(b"server", exporter, &theirs, &mine)
        .finalize()
        .into_bytes();
    send(stream, FrameType::Proof, &proof).await?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:7911".parse().unwrap()
    }

    async fn run(
        client_key: &AuthKey,
        server_key: &AuthKey,
        client_exporter: &[u8],
        server_exporter: &[u8],
    ) -> (Result<Hello, HandshakeError>, Result<Hello, HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let client_hello = Hello::new(1, 10, addr());
        let server_hello = Hello::new(2, 20, addr());
        let client = client(&mut a, client_key, client_exporter, &client_hello);
        let server = async {
            let result = server(&mut b, server_key, server_exporter, &server_hello).await;
            drop(b);
            result
        };
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn both_sides_learn_each_other_when_they_share_the_key_and_session() {
        let key = AuthKey::derive(b"secret", "c");
        let (client, server) = run(&key, &key, b"session", b"session").await;
        assert_eq!(client.unwrap().id, 2);
        let server = server.unwrap();
        assert_eq!((server.id, server.run, server.addr), (1, 10, addr()));
    }

    #[tokio::test]
    async fn a_wrong_key_fails_on_the_server_before_it_proves_anything() {
        let (client, server) = run(
            &AuthKey::derive(b"wrong", "c"),
            &AuthKey::derive(b"secret", "c"),
            b"session",
            b"session",
        )
        .await;
        assert!(server.unwrap_err().is_wrong_key());
        assert!(client.is_err(), "the client got no proof");
    }

    #[tokio::test]
    async fn another_cluster_name_or_session_does_not_verify() {
        let (_, server) = run(
            &AuthKey::derive(b"secret", "a"),
            &AuthKey::derive(b"secret", "b"),
            b"session",
            b"session",
        )
        .await;
        assert!(server.unwrap_err().is_wrong_key());
        let key = AuthKey::derive(b"secret", "c");
        let (_, server) = run(&key, &key, b"session one", b"session two").await;
        assert!(server.unwrap_err().is_wrong_key(), "a relayed proof fails");
    }

    #[tokio::test]
    async fn a_client_of_another_version_is_told_the_version_spoken_here() {
        let key = AuthKey::derive(b"secret", "c");
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut newer = Hello::new(2, 20, addr()).encode();
        newer[4] = PROTOCOL_VERSION + 1;
        let here = Hello::new(1, 10, addr());
        let server = async {
            let result = server(&mut b, &key, b"session", &here).await;
            // Closed after the refusal: the client reads what was sent, or the end.
            drop(b);
            result
        };
        let client = async {
            send(&mut a, FrameType::Hello, &newer).await.unwrap();
            read_frame(&mut a, MAX_HANDSHAKE_FRAME)
                .await
                .expect("the server answers before it closes")
        };
        let (refused, (kind, answer)) = tokio::join!(server, client);
        assert!(matches!(refused, Err(HandshakeError::Version(v)) if v == PROTOCOL_VERSION + 1));
        assert_eq!(kind, FrameType::Hello);
        // What a newer client decodes: this node's version.
        assert_eq!(answer[4], PROTOCOL_VERSION);
        assert!(matches!(
            Hello::decode(&answer),
            Ok(hello) if hello.id == 1
        ));
    }

    #[test]
    fn hello_round_trips_and_refuses_other_versions() {
        let hello = Hello::new(u64::MAX, 3, "[::1]:1".parse().unwrap());
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let mut other = hello.encode();
        other[4] = 1;
        assert!(matches!(
            Hello::decode(&other),
            Err(HandshakeError::Version(1))
        ));
        assert!(Hello::decode(b"GET / HTTP/1.1").is_err());
    }
}
