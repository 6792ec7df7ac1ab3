//! Membership from Zenoh liveliness tokens.
//!
//! Every node declares the token `{cluster}/member/{id}/{incarnation}` for as
//! long as its session lives, and watches `{cluster}/member/**`. Zenoh itself
//! reports a lost token: at once when a peer's connection closes (a killed
//! process), after the transport lease when a peer stops answering.
//!
//! A token that appears makes its member alive. A lost token makes it suspect
//! once `suspectTimeout` has passed without the token coming back, and dead
//! at `deadTimeout`: a router restart or a short network cut that brings the
//! tokens back in time marks nobody. The verdicts go to the engine as
//! [`Inbound::Member`] reports; the decision is here, without IO, so that it
//! is tested without sessions and without sleeping.

use coordinator_core::{MemberState, NodeId};
use std::collections::HashMap;
use std::time::Duration;

/// What a liveliness sample says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenChange {
    Appeared,
    Lost,
}

/// The key of node `id`'s token in run `incarnation`.
pub fn token_key(prefix: &str, id: NodeId, incarnation: u64) -> String {
    format!("{prefix}/{id}/{incarnation}")
}

/// Reads `(id, incarnation)` from a token key under `prefix`.
pub fn parse_token_key(prefix: &str, key: &str) -> Option<(NodeId, u64)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (id, incarnation) = rest.split_once('/')?;
    Some((id.parse().ok()?, incarnation.parse().ok()?))
}

/// What the carrier does next about a member.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Tell the engine now.
    Report {
        id: NodeId,
        incarnation: u64,
        state: MemberState,
    },
    /// Call [`Liveness::expired`] with these after `after`.
    Timer {
        after: Duration,
        id: NodeId,
        incarnation: u64,
        generation: u64,
        state: MemberState,
    },
}

#[derive(Debug)]
struct Seen {
    incarnation: u64,
    present: bool,
    /// Bumped by every change, so that a timer set before it does nothing.
    generation: u64,
}

/// The members' tokens as this node sees them.
#[derive(Debug)]
pub struct Liveness {
    local: NodeId,
    suspect_after: Duration,
    dead_after: Duration,
    seen: HashMap<NodeId, Seen>,
}

impl Liveness {
    pub fn new(local: NodeId, suspect_after: Duration, dead_after: Duration) -> Self {
        Self {
            local,
            suspect_after,
            dead_after: dead_after.max(suspect_after),
            seen: HashMap::new(),
        }
    }

    /// A token appeared or was lost.
    pub fn token(&mut self, id: NodeId, incarnation: u64, change: TokenChange) -> Vec<Action> {
        if id == self.local {
            return Vec::new();
        }
        let seen = self.seen.entry(id).or_insert(Seen {
            incarnation,
            present: false,
            generation: 0,
        });
        if incarnation < seen.incarnation {
            // An earlier run's token: that run is over; the newer one counts.
            return Vec::new();
        }
        match change {
            TokenChange::Appeared => {
                seen.incarnation = incarnation;
                seen.present = true;
                seen.generation += 1;
                vec![Action::Report {
                    id,
                    incarnation,
                    state: MemberState::Alive,
                }]
            }
            TokenChange::Lost => {
                if incarnation > seen.incarnation || !seen.present {
                    return Vec::new();
                }
                seen.present = false;
                seen.generation += 1;
                vec![Action::Timer {
                    after: self.suspect_after,
                    id,
                    incarnation,
                    generation: seen.generation,
                    state: MemberState::Suspect,
                }]
            }
        }
    }

    /// Whether node `id`'s token is there now.
    pub fn is_present(&self, id: NodeId) -> bool {
        self.seen.get(&id).is_some_and(|seen| seen.present)
    }

    /// A timer set by an earlier action ran out.
    pub fn expired(
        &mut self,
        id: NodeId,
        incarnation: u64,
        generation: u64,
        state: MemberState,
    ) -> Vec<Action> {
        let Some(seen) = self.seen.get(&id) else {
            return Vec::new();
        };
        if seen.generation != generation || seen.incarnation != incarnation || seen.present {
            return Vec::new();
        }
        let mut actions = vec![Action::Report {
            id,
            incarnation,
            state,
        }];
        if state == MemberState::Suspect {
            actions.push(Action::Timer {
                after: self.dead_after - self.suspect_after,
                id,
                incarnation,
                generation,
                state: MemberState::Dead,
            });
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUSPECT: Duration = Duration::from_millis(250);
    const DEAD: Duration = Duration::from_millis(1000);

    fn alive(id: NodeId, incarnation: u64) -> Action {
        Action::Report {
            id,
            incarnation,
            state: MemberState::Alive,
        }
    }

    #[test]
    fn token_keys_round_trip_and_foreign_keys_are_refused() {
        let key = token_key("c/member", 7, 123);
        assert_eq!(key, "c/member/7/123");
        assert_eq!(parse_token_key("c/member", &key), Some((7, 123)));
        assert_eq!(parse_token_key("c/member", "c/member/x/1"), None);
        assert_eq!(parse_token_key("c/member", "d/member/7/1"), None);
        assert_eq!(parse_token_key("c/member", "c/member/7"), None);
    }

    #[test]
    fn a_lost_token_makes_a_suspect_then_a_dead_member() {
        let mut live = Liveness::new(1, SUSPECT, DEAD);
        assert_eq!(live.token(2, 10, TokenChange::Appeared), vec![alive(2, 10)]);
        let actions = live.token(2, 10, TokenChange::Lost);
        let [
            Action::Timer {
                after,
                generation,
                state: MemberState::Suspect,
                ..
            },
        ] = actions[..]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(after, SUSPECT);
        let actions = live.expired(2, 10, generation, MemberState::Suspect);
        assert_eq!(
            actions[0],
            Action::Report {
                id: 2,
                incarnation: 10,
                state: MemberState::Suspect
            }
        );
        let Action::Timer {
            after,
            state: MemberState::Dead,
            ..
        } = actions[1]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(after, DEAD - SUSPECT);
        assert_eq!(
            live.expired(2, 10, generation, MemberState::Dead),
            vec![Action::Report {
                id: 2,
                incarnation: 10,
                state: MemberState::Dead
            }]
        );
    }

    #[test]
    fn a_token_back_in_time_cancels_the_suspicion() {
        let mut live = Liveness::new(1, SUSPECT, DEAD);
        live.token(2, 10, TokenChange::Appeared);
        let Action::Timer { generation, .. } = live.token(2, 10, TokenChange::Lost)[0] else {
            panic!()
        };
        assert_eq!(live.token(2, 10, TokenChange::Appeared), vec![alive(2, 10)]);
        assert!(
            live.expired(2, 10, generation, MemberState::Suspect)
                .is_empty()
        );
    }

    #[test]
    fn a_restart_is_alive_at_once_and_the_old_run_leaving_changes_nothing() {
        let mut live = Liveness::new(1, SUSPECT, DEAD);
        live.token(2, 10, TokenChange::Appeared);
        // The new run's token may arrive before the old one is lost.
        assert_eq!(live.token(2, 11, TokenChange::Appeared), vec![alive(2, 11)]);
        assert!(live.token(2, 10, TokenChange::Lost).is_empty());
        assert!(live.token(2, 10, TokenChange::Appeared).is_empty());
    }

    #[test]
    fn its_own_token_is_not_a_member() {
        let mut live = Liveness::new(1, SUSPECT, DEAD);
        assert!(live.token(1, 10, TokenChange::Appeared).is_empty());
    }
}
