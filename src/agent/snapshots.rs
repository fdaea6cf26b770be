//! The snapshot operations the log asks of an attached volume (create, delete by merge,
//! revert), carried out on its engine, each outcome reported back. It never decides what to
//! snapshot or revert, and never reports an operation done before the engine has done it.

use shorthorn_state::{Request, SnapshotState, Volume};

use super::Agent;
use super::engines::EngineClient;

impl Agent {
    /// Takes pending snapshots, merges deleted ones and reverts, as the log asks, on the
    /// engine of this attached volume; each outcome goes back to the log.
    pub(super) async fn carry_out_snapshots(&self, volume: &Volume, client: &mut EngineClient) {
        use shorthorn_dataplane::proto::SnapshotName;
        use tonic::Code;
        let name_of = |name: &str| SnapshotName {
            name: name.to_string(),
        };
        let (v, mut requests) = (volume.name.clone(), Vec::new());
        for snapshot in volume.snapshots.values() {
            let name = snapshot.name.clone();
            match snapshot.state {
                SnapshotState::Pending => {
                    let taken = client.create_snapshot(name_of(&name)).await;
                    tracing::info!(volume = %v, snapshot = %name, ok = taken.is_ok(), "snapshot create");
                    requests.push(match taken {
                        Ok(_) => Request::ReportSnapshotTaken {
                            volume: v.clone(),
                            name,
                        },
                        Err(status) if status.code() == Code::AlreadyExists => {
                            Request::ReportSnapshotTaken {
                                volume: v.clone(),
                                name,
                            }
                        }
                        Err(status) => Request::ReportSnapshotFailed {
                            volume: v.clone(),
                            name,
                            reason: status.message().to_string(),
                        },
                    });
                }
                SnapshotState::Deleting => match client.delete_snapshot(name_of(&name)).await {
                    Err(status) if status.code() != Code::NotFound => {
                        // Tried again next tick: a merge that failed half-way is redone.
                        tracing::warn!(volume = %v, snapshot = %name, "deleting the snapshot: {}", status.message());
                    }
                    _ => requests.push(Request::ReportSnapshotRemoved {
                        volume: v.clone(),
                        name,
                    }),
                },
                SnapshotState::Ready => {}
            }
        }
        if let Some(name) = volume.revert_to.clone() {
            let reverted = client.revert_snapshot(name_of(&name)).await;
            tracing::info!(volume = %v, snapshot = %name, ok = reverted.is_ok(), "snapshot revert");
            requests.push(match reverted {
                Ok(_) => Request::ReportRevertDone {
                    volume: v.clone(),
                    name,
                },
                Err(status) => Request::ReportRevertFailed {
                    volume: v.clone(),
                    name,
                    reason: status.message().to_string(),
                },
            });
        }
        for request in requests {
            if let Err(err) = self.propose(request).await {
                tracing::warn!(volume = %v, "reporting a snapshot operation: {err}");
            }
        }
    }
}
