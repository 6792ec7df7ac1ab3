//! The replicated key-value map, with a fingerprint of everything applied so
//! that nodes can prove they applied the same commands in the same order.

use crate::{Applied, Command, KvConfig};
use futures_util::TryStreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a node has applied: the last log index, how many commands, and a
/// hash chain over (index, command) in application order. Two nodes with
/// equal fingerprints applied the same commands at the same indexes in the
/// same order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub last_index: u64,
    pub commands: u64,
    pub chain: [u8; 32],
}

impl Fingerprint {
    fn add(&mut self, index: u64, command: &Command) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.chain);
        hasher.update(&index.to_le_bytes());
        postcard::to_io(command, &mut hasher).expect("a command encodes");
        self.chain = *hasher.finalize().as_bytes();
        self.commands += 1;
    }
}

/// The state machine; clones share it (as a restarted process would find it
/// on disk).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<State>>,
    /// The fingerprint after each batch applied or snapshot installed.
    applied: Arc<watch::Sender<Fingerprint>>,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            applied: Arc::new(watch::Sender::new(Fingerprint::default())),
        }
    }
}

#[derive(Default)]
struct State {
    last_applied: Option<LogIdOf<KvConfig>>,
    membership: StoredMembershipOf<KvConfig>,
    body: Body,
    /// The last snapshot built or installed.
    snapshot: Option<(SnapshotMetaOf<KvConfig>, Vec<u8>)>,
    snapshots_built: u64,
    snapshots_installed: u64,
}

/// What a snapshot holds besides its metadata.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Body {
    data: BTreeMap<String, String>,
    fingerprint: Fingerprint,
}

impl StateMachine {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.state().body.data.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.state().body.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.state().body.fingerprint
    }

    /// Waits until at least `commands` commands have been applied; what was
    /// applied then.
    pub async fn applied_at_least(&self, commands: u64) -> Fingerprint {
        let mut applied = self.applied.subscribe();
        let reached = applied
            .wait_for(|print| print.commands >= commands)
            .await
            .expect("the sender lives as long as this state machine");
        *reached
    }

    /// How many snapshots from a leader this state machine installed.
    pub fn snapshots_installed(&self) -> u64 {
        self.state().snapshots_installed
    }
}

fn apply_command(body: &mut Body, index: u64, command: Command) -> Applied {
    body.fingerprint.add(index, &command);
    body.fingerprint.last_index = index;
    let previous = match command {
        Command::Set { key, value } => body.data.insert(key, value),
        Command::Delete { key } => body.data.remove(&key),
    };
    Applied { previous }
}

impl RaftStateMachine<KvConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<KvConfig>>, StoredMembershipOf<KvConfig>), io::Error> {
        let state = self.state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<KvConfig>, io::Error>> + Unpin + Send,
    {
        // The fingerprint is published once for the batch, also when the
        // stream fails part-way through it.
        let outcome = loop {
            let (entry, responder) = match entries.try_next().await {
                Ok(Some(next)) => next,
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            };
            let applied = {
                let mut state = self.state();
                state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Applied::default(),
                    EntryPayload::Normal(command) => {
                        apply_command(&mut state.body, entry.log_id.index, command)
                    }
                    EntryPayload::Membership(membership) => {
                        state.membership =
                            StoredMembershipOf::<KvConfig>::new(Some(entry.log_id), membership);
                        Applied::default()
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        };
        self.applied.send_replace(self.fingerprint());
        outcome
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<KvConfig>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let body: Body = postcard::from_bytes(&bytes).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot {meta} does not decode: {error}"),
            )
        })?;
        let mut state = self.state();
        state.body = body;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        state.snapshots_installed += 1;
        self.applied.send_replace(state.body.fingerprint);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<KvConfig, Cursor<Vec<u8>>>>, io::Error> {
        Ok(self
            .state()
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Cursor::new(bytes.clone()),
            }))
    }
}

impl RaftSnapshotBuilder<KvConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<KvConfig, Cursor<Vec<u8>>>, io::Error> {
        let mut state = self.state();
        let bytes = postcard::to_stdvec(&state.body)
            .map_err(|error| io::Error::other(format!("snapshot does not encode: {error}")))?;
        state.snapshots_built += 1;
        let meta = SnapshotMetaOf::<KvConfig> {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
        };
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(bytes),
        })
    }
}
