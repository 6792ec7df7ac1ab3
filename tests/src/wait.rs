//! Waiting on events with a bound, never on a fixed sleep.

use coordinator_core::{Coordinator, Event, MemberChange, MemberEvent, NodeId, wait_for_members};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Fails the test with `what` if `future` does not finish within `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds (bounded by `limit`).
/// For counters, which have no event of their own.
pub async fn until(limit: Duration, what: &str, condition: impl FnMut() -> bool) {
    if !holds_within(limit, condition).await {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// As [`until`], but says whether `condition` came to hold instead of
/// failing the test: for a test that says more about what it found.
pub async fn holds_within(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(limit, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

/// Waits until every node sees every other one alive.
pub async fn converge(nodes: &[Arc<dyn Coordinator>], limit: Duration) {
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id()).collect();
    within(limit, &format!("nodes {ids:?} to see each other"), async {
        for node in nodes {
            assert!(
                wait_for_members(node.as_ref(), &ids).await,
                "node {} stopped",
                node.node_id()
            );
        }
    })
    .await
}

/// Waits for the first membership event about `id` that matches `wanted`.
pub async fn member_change(
    events: &mut coordinator_core::EventStream<MemberEvent>,
    id: NodeId,
    wanted: impl Fn(&MemberChange) -> bool,
) -> MemberEvent {
    loop {
        let event = events.next_event().await.expect("membership events ended");
        if event.member.id == id && wanted(&event.change) {
            return event;
        }
    }
}

/// Waits for the next diagnostic event matching `wanted`.
pub async fn event(
    events: &mut coordinator_core::EventStream<Event>,
    wanted: impl Fn(&Event) -> bool,
) -> Event {
    loop {
        let event = events.next_event().await.expect("events ended");
        if wanted(&event) {
            return event;
        }
    }
}

/// The broadcasts of node `from` reported lost by the events already queued
/// (waiting up to `quiet` for each next one).
pub async fn broadcasts_reported_lost(
    events: &mut coordinator_core::EventStream<Event>,
    from: NodeId,
    quiet: Duration,
) -> u64 {
    let mut lost = 0;
    while let Ok(Some(event)) = tokio::time::timeout(quiet, events.next_event()).await {
        if let Event::Gap {
            from: sender,
            stream: coordinator_core::StreamKind::Broadcast,
            count,
            ..
        } = event
            && sender == from
        {
            lost += count;
        }
    }
    lost
}
