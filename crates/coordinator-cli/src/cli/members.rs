//! `coordinator members --admin ADDR`: who is in the cluster, in what state,
//! since when, as a running node (`coordinator node --admin ADDR`) sees it,
//! whatever its carrier.

use super::admin::{View, get};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Prints the members once, or with `watch` every change from then on
/// (polling every `interval`) until interrupted.
pub async fn run(admin: &str, json: bool, watch: bool, interval: Duration) -> anyhow::Result<()> {
    let mut view = fetch(admin).await?;
    if json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        print_table(&view);
    }
    if !watch {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let now = match fetch(admin).await {
            Ok(now) => now,
            Err(error) => {
                eprintln!("{error:#}");
                continue;
            }
        };
        let changes = changes(&view, &now);
        if !changes.is_empty() {
            if json {
                println!("{}", serde_json::to_string(&now)?);
            } else {
                let at = started.elapsed().as_secs_f64();
                for change in changes {
                    println!("+{at:.1}s {change}");
                }
            }
        }
        view = now;
    }
}

async fn fetch(admin: &str) -> anyhow::Result<View> {
    let body = get(admin, "/members").await?;
    serde_json::from_str(&body).map_err(|error| anyhow::anyhow!("{admin}/members: {error}"))
}

fn print_table(view: &View) {
    println!(
        "node {} on {} (failure detection: {})",
        view.node, view.carrier, view.failure_detection
    );
    println!(
        "{:<8} {:<8} {:<20} {:<24} FOR",
        "ID", "STATE", "INCARNATION", "ADDRESS"
    );
    for member in &view.members {
        let id = if member.local {
            format!("{}*", member.id)
        } else {
            member.id.to_string()
        };
        println!(
            "{:<8} {:<8} {:<20} {:<24} {}",
            id,
            member.state,
            member.incarnation,
            member.address.as_deref().unwrap_or("-"),
            humantime::format_duration(Duration::from_secs(member.seconds_in_state as u64)),
        );
    }
}

/// What differs between two views, one line per member.
fn changes(before: &View, after: &View) -> Vec<String> {
    let key = |view: &View| {
        view.members
            .iter()
            .map(|m| (m.id, (m.state.clone(), m.incarnation)))
            .collect::<BTreeMap<_, _>>()
    };
    let (old, new) = (key(before), key(after));
    let mut lines = Vec::new();
    for (id, (state, incarnation)) in &new {
        match old.get(id) {
            None => lines.push(format!(
                "node {id}: joined ({state}, incarnation {incarnation})"
            )),
            Some((was, run)) if run != incarnation => lines.push(format!(
                "node {id}: restarted (incarnation {run} -> {incarnation}), {state}"
            )),
            Some((was, _)) if was != state => lines.push(format!("node {id}: {was} -> {state}")),
            Some(_) => {}
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(id)) {
        lines.push(format!("node {id}: gone (left, or forgotten)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::admin::MemberRow;

    fn view(members: &[(u64, &str, u64)]) -> View {
        View {
            node: 1,
            carrier: "Native".into(),
            failure_detection: "Carrier".into(),
            members: members
                .iter()
                .map(|&(id, state, incarnation)| MemberRow {
                    id,
                    incarnation,
                    state: state.into(),
                    local: id == 1,
                    address: None,
                    seconds_in_state: 0.0,
                })
                .collect(),
        }
    }

    #[test]
    fn changes_name_each_member_that_moved() {
        let before = view(&[(1, "alive", 1), (2, "alive", 1), (3, "alive", 1)]);
        let after = view(&[(1, "alive", 1), (2, "suspect", 1), (4, "alive", 7)]);
        assert_eq!(
            changes(&before, &after),
            vec![
                "node 2: alive -> suspect",
                "node 4: joined (alive, incarnation 7)",
                "node 3: gone (left, or forgotten)",
            ]
        );
        let restarted = view(&[(1, "alive", 1), (2, "alive", 9), (3, "alive", 1)]);
        assert_eq!(
            changes(&before, &restarted),
            vec!["node 2: restarted (incarnation 1 -> 9), alive"]
        );
        assert!(changes(&before, &before).is_empty());
    }
}
