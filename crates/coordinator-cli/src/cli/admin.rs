//! A node's admin address (`coordinator node --admin ADDR`, also spelled
//! `--metrics`): `GET /metrics` answers the node's Prometheus metrics,
//! `GET /members` its view of the cluster as JSON, which `coordinator
//! members` reads. HTTP/1.1, one request per connection.

use coordinator::Coordinator;
use coordinator::metrics::{NodeMetrics, encode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read, and how long a client may take to send it.
const MAX_HEAD: usize = 8 * 1024;
const HEAD_WITHIN: Duration = Duration::from_secs(5);

/// A node's view of the cluster, as `/members` answers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub node: u64,
    pub carrier: String,
    /// Where member states come from: `Heartbeats`, `Carrier` or `Off`.
    pub failure_detection: String,
    pub members: Vec<MemberRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    pub id: u64,
    pub incarnation: u64,
    /// `alive`, `suspect` or `dead`.
    pub state: String,
    pub local: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    /// How long it has been in `state`.
    pub seconds_in_state: f64,
}

pub fn view(node: &dyn Coordinator) -> View {
    View {
        node: node.node_id(),
        carrier: node.carrier().to_string(),
        failure_detection: format!("{:?}", node.failure_detection()),
        members: node
            .members()
            .into_iter()
            .map(|member| MemberRow {
                id: member.id,
                incarnation: member.incarnation,
                state: format!("{:?}", member.state).to_lowercase(),
                local: member.local,
                address: member.address,
                seconds_in_state: member.since.elapsed().as_secs_f64(),
            })
            .collect(),
    }
}

/// Answers requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, node: Arc<dyn Coordinator>) {
    let registry = Arc::new(NodeMetrics::new(node.clone()).registry());
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (node, registry) = (node.clone(), registry.clone());
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &*node, &registry).await {
                tracing::debug!(%peer, %error, "admin request not answered");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    node: &dyn Coordinator,
    registry: &prometheus_client::registry::Registry,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_WITHIN, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(registry),
        ),
        ("GET", "/members") => (
            "200 OK",
            "application/json",
            serde_json::to_string(&view(node)).expect("a view serializes"),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "GET /metrics or /members\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head (`\r\n\r\n`), at most [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head over 8 KiB",
            ));
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `GET path` at `addr`: the body of a 200 answer.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no connection within 5 s"))?
        .map_err(|error| anyhow::anyhow!("{addr}: {error}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no answer within 10 s"))??;
    let answer = String::from_utf8(answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{addr}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        anyhow::bail!("{addr}{path}: {status}");
    }
    Ok(body.to_string())
}
