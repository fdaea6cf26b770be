//! This node's replica processes, kept in step with the replicas the log places here:
//! starting them and reporting their addresses, stopping and deleting the ones the log
//! deletes or removes, reporting revision counters for salvage, and the orphaned replica
//! directories. It never decides placement, modes or which replica is salvaged: those come
//! from the log; and it never deletes a directory on its own judgement, only for a replica
//! the log dropped, or an orphan under the `orphanAutoDeletion` setting.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use anyhow::Context;
use shorthorn_state::{Replica, ReplicaMode, Request, Robustness, VolumeState};

use super::children::{
    Proc, Record, free_port, spawn_logged, still_running, wait_listening, write_record,
};
use super::{Agent, NodeView};

impl Agent {
    pub(super) async fn converge_replicas(&mut self, view: &NodeView) {
        for (replica, volume) in &view.replicas {
            let dir = self.replica_dir(&replica.id);
            if volume.state == VolumeState::Deleting {
                if let Some(mut proc) = self.replicas.remove(&replica.id) {
                    proc.stop();
                }
                let _ = fs::remove_dir_all(&dir);
                if let Err(err) = self
                    .propose(Request::RemoveReplica {
                        id: replica.id.clone(),
                    })
                    .await
                {
                    tracing::warn!(replica = %replica.id, "reporting the removal: {err}");
                }
                continue;
            }
            let (image, restart_now) = view
                .replica_images
                .get(&replica.id)
                .map_or(("", false), |(image, now)| (image.as_str(), *now));
            let mut running = self
                .replicas
                .get_mut(&replica.id)
                .is_some_and(|p| p.alive());
            if running && restart_now && self.replicas[&replica.id].record.image != image {
                // An engine upgrade is at this replica (or its volume is detached): it is
                // failed first, so that the engine stops writing to it and the rebuild
                // that follows is counted, then restarted from the new image.
                if volume.state != VolumeState::Detached {
                    let request = Request::ReportReplicaFailed {
                        id: replica.id.clone(),
                        reason: format!("restarting with engine image \"{image}\""),
                    };
                    if let Err(err) = self.propose(request).await {
                        tracing::warn!(replica = %replica.id, "reporting the restart: {err}");
                        continue;
                    }
                }
                tracing::info!(replica = %replica.id, image, "restarting the replica with a new engine image");
                if let Some(mut proc) = self.replicas.remove(&replica.id) {
                    proc.stop();
                }
                running = false;
            }
            if !running {
                let upgrading = restart_now && volume.state != VolumeState::Detached;
                match self.start_replica(replica, volume.size, &dir, image, upgrading) {
                    Ok(proc) => {
                        self.replicas.insert(replica.id.clone(), proc);
                    }
                    Err(err) => {
                        tracing::warn!(replica = %replica.id, image, "starting the replica: {err:#}");
                        if upgrading {
                            self.upgrade_failed(&volume.name, "a replica", &err).await;
                        }
                        continue;
                    }
                }
            }
            let address = self.replicas[&replica.id].record.address.clone();
            if replica.address.as_deref() != Some(address.as_str()) {
                let request = Request::ReportReplicaStarted {
                    id: replica.id.clone(),
                    address,
                };
                if let Err(err) = self.propose(request).await {
                    tracing::warn!(replica = %replica.id, "reporting the address: {err}");
                }
            }
            // Every replica of the volume failed: say how fresh this one is, so the log can
            // pick the one to salvage.
            if replica.mode == ReplicaMode::Error
                && volume.robustness == Robustness::Faulted
                && replica.revision.is_none()
            {
                match read_revision(&dir) {
                    Ok(revision) => {
                        tracing::info!(replica = %replica.id, revision, "volume faulted: reporting the revision for salvage");
                        let request = Request::ReportReplicaRevision {
                            id: replica.id.clone(),
                            revision,
                        };
                        if let Err(err) = self.propose(request).await {
                            tracing::warn!(replica = %replica.id, "reporting the revision: {err}");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(replica = %replica.id, "reading the revision counter: {err:#}")
                    }
                }
            }
        }
        let wanted: Vec<&str> = view.replicas.iter().map(|(r, _)| r.id.as_str()).collect();
        let gone: Vec<String> = self
            .replicas
            .keys()
            .filter(|id| !wanted.contains(&id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut proc) = self.replicas.remove(&id) {
                proc.stop();
            }
            tracing::info!(replica = %id, "replica removed from the log: its directory is deleted");
            let _ = fs::remove_dir_all(self.replica_dir(&id));
        }
        self.handle_orphans(&wanted, view.orphan_auto_deletion);
    }

    /// Replica directories no process of ours serves and the log does not place here: what
    /// a node that was down keeps of replicas replaced meanwhile. Deleted with the
    /// `orphanAutoDeletion` setting, else reported once each (a log that lost its state
    /// must not make agents wipe disks).
    fn handle_orphans(&mut self, wanted: &[&str], delete: bool) {
        let Ok(entries) = fs::read_dir(self.config.disk.join("replicas")) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if wanted.contains(&id.as_str()) || self.replicas.contains_key(&id) {
                continue;
            }
            if delete {
                tracing::info!(replica = %id, dir = %entry.path().display(), "orphaned replica directory deleted (orphanAutoDeletion)");
                let _ = fs::remove_dir_all(entry.path());
                self.orphans_reported.remove(&id);
            } else if self.orphans_reported.insert(id.clone()) {
                tracing::warn!(replica = %id, dir = %entry.path().display(), "orphaned replica directory: the log places no such replica on this node; kept (set orphanAutoDeletion to delete such directories)");
            }
        }
    }

    fn start_replica(
        &self,
        replica: &Replica,
        size: u64,
        dir: &Path,
        image: &str,
        upgrading: bool,
    ) -> anyhow::Result<Proc> {
        fs::create_dir_all(dir)?;
        let address = format!("{}:{}", self.config.host, free_port(&self.config.host)?);
        let mut process = Process::new(self.binary(image));
        process
            .arg("replica")
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("tcp:{address}"));
        // A new replica is created at the volume's size; an existing one opens at its own
        // (an engine grows it if the volume was expanded meanwhile).
        if !dir.join("volume.meta").exists() {
            process.arg("--size").arg(size.to_string());
        }
        let log = dir.join("replica.log");
        let mut child = spawn_logged(process, &log)?;
        let record = Record {
            pid: child.id() as i32,
            address,
            epoch: 0,
            control: String::new(),
            image: image.to_string(),
        };
        write_record(dir, &record)?;
        wait_listening(&record.address, Duration::from_secs(10));
        if upgrading {
            still_running(&mut child, &log)?;
        }
        tracing::info!(replica = %replica.id, address = %record.address, "replica started");
        Ok(Proc {
            record,
            child: Some(child),
            control: Default::default(),
        })
    }

    fn replica_dir(&self, id: &str) -> PathBuf {
        self.config.disk.join("replicas").join(id)
    }
}

/// The replica's revision counter (see dataplane/FORMAT.md); 0 for a replica that never
/// took a write.
fn read_revision(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("revision.counter");
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}
