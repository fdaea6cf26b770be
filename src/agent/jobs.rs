//! The leader's part in recurring jobs: each tick it proposes what the log's jobs need now
//! (fire a due slot, start waiting volumes, finish work that ended; the log decides and
//! refuses a slot that already ran), and removes backups beyond a job's `retain` from the
//! target, then from the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shorthorn_consensus::Error as LogError;
use shorthorn_dataplane::backup::BackupError;
use shorthorn_state::{Request, Timestamp};

use super::{Agent, now_millis};

#[derive(Default)]
pub(super) struct LeaderJobs {
    /// A removal of expired backups is going on.
    removing: Arc<AtomicBool>,
}

impl Agent {
    pub(super) async fn leader_job_tasks(&self) {
        let now = Timestamp(now_millis());
        let read = self
            .log
            .read(move |s| {
                let requests: Vec<Request> = s
                    .recurring_jobs
                    .values()
                    .flat_map(|job| shorthorn_state::next_requests(s, job, now))
                    .collect();
                let expired: Vec<(String, String, String)> = shorthorn_state::expired_backups(s)
                    .into_iter()
                    .filter_map(|name| s.backups.get(&name))
                    .map(|b| (b.name.clone(), b.volume.clone(), b.target.clone()))
                    .collect();
                (requests, expired)
            })
            .await;
        let Ok((requests, expired)) = read else {
            return;
        };
        for request in requests {
            match self.propose(request.clone()).await {
                Ok(()) => tracing::debug!(?request, "recurring job"),
                // The state moved between the read and the proposal (another leader, a
                // report): the next tick looks again.
                Err(LogError::Rejected { .. }) => {}
                Err(err) => {
                    tracing::warn!(?request, "recurring job: {err}");
                    return;
                }
            }
        }
        if !expired.is_empty() && !self.leader_jobs.removing.swap(true, Ordering::SeqCst) {
            let removing = self.leader_jobs.removing.clone();
            let stores: Vec<_> = expired
                .into_iter()
                .map(|(name, volume, target)| (self.open_target(&target), name, volume))
                .collect();
            let log = self.log.clone();
            let proposer = format!("agent/{}", self.config.node);
            tokio::spawn(async move {
                for (store, name, volume) in stores {
                    let removed = match store {
                        Ok(store) => match store.delete_backup(&volume, &name).await {
                            Ok(()) | Err(BackupError::BackupNotFound { .. }) => Ok(()),
                            Err(err) => Err(err.to_string()),
                        },
                        Err(err) => Err(err),
                    };
                    if let Err(err) = removed {
                        tracing::warn!(backup = %name, "removing a backup beyond its job's retain: {err}");
                        continue;
                    }
                    let command = shorthorn_state::Command::new(
                        Timestamp(now_millis()),
                        proposer.clone(),
                        Request::DeleteBackup { name: name.clone() },
                    );
                    match log.propose(command).await {
                        Ok(_) => {
                            tracing::info!(backup = %name, "backup beyond its job's retain removed")
                        }
                        Err(err) => {
                            tracing::warn!(backup = %name, "forgetting a removed backup: {err}")
                        }
                    }
                }
                removing.store(false, Ordering::SeqCst);
            });
        }
    }
}
