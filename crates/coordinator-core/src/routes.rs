//! What broker carriers share: where frames go on a broker, and how long to
//! wait before trying a lost link again.

use crate::api::NodeId;
use rand::Rng;
use std::time::Duration;

/// The broker names (subjects, channels, topics) of one cluster: one for
/// broadcasts and heartbeats, one per node for what is addressed to it, all
/// prefixed by the cluster name so that clusters can share a broker.
#[derive(Clone, Debug)]
pub struct Routes {
    /// `{cluster}.broadcast`
    pub broadcast: String,
    prefix: String,
}

impl Routes {
    pub fn new(cluster: &str) -> Self {
        Self::with_separator(cluster, '.')
    }

    /// The same names with another separator (`/` for Zenoh key expressions).
    pub fn with_separator(cluster: &str, separator: char) -> Self {
        Self {
            broadcast: format!("{cluster}{separator}broadcast"),
            prefix: format!("{cluster}{separator}node{separator}"),
        }
    }

    /// `{cluster}.node.{id}`: what is addressed to node `id`.
    pub fn node(&self, id: NodeId) -> String {
        format!("{}{id}", self.prefix)
    }
}

/// Truncated exponential backoff with jitter: a random wait between half and
/// all of `base × 2^attempt`, at most `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(20)).min(max);
    rand::rng().random_range(ceiling / 2..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_prefixed_by_the_cluster() {
        let routes = Routes::new("mail");
        assert_eq!(routes.broadcast, "mail.broadcast");
        assert_eq!(routes.node(7), "mail.node.7");
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_ceiling() {
        let (base, max) = (Duration::from_millis(50), Duration::from_secs(5));
        for attempt in 0..40 {
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(max);
            let wait = backoff(attempt, base, max);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{attempt}: {wait:?}"
            );
        }
    }
}
