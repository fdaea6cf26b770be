//! The engine processes of the volumes attached to this node: one per attachment at the
//! volume's epoch, stopped when fenced or detached, and watched: the engine's replica set
//! is compared with the log's to report failed and rebuilt replicas, to hand the engine
//! write-only replicas to rebuild, and to grow it when the volume was expanded. It never
//! decides epochs, attachments or replica modes: those come from the log, and what the
//! engine shows goes back to the log as reports.

use std::fs;
use std::path::PathBuf;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use shorthorn_dataplane::proto::ReplicaMode as EngineMode;
use shorthorn_state::{Replica, ReplicaMode, Request, Robustness, Volume, VolumeState};

use super::children::{
    Proc, Record, free_port, spawn_logged, still_running, wait_listening, write_record,
};
use super::{ADDRESS_GRACE, Agent, NodeView, RETRY_FAILED, now_millis};

impl Agent {
    pub(super) async fn converge_engines(&mut self, view: &NodeView) {
        for (volume, replicas) in &view.attached {
            let epoch = volume.epoch;
            // An engine that stopped answering (hung, SIGSTOPped) is killed and handled as
            // one that died: a new engine under a new epoch, behind the same device.
            let hung = self.engine_hung(&volume.name);
            // An engine of an older epoch is fenced by its replicas; stop it.
            if let Some(proc) = self.engines.get_mut(&volume.name)
                && (proc.record.epoch != epoch.0 || !proc.alive() || hung)
            {
                self.engine_silence.remove(&volume.name);
                if hung {
                    tracing::warn!(volume = %volume.name, pid = proc.record.pid, "the engine has not answered for {} s: killing it", engine_hang_timeout().as_secs());
                    crate::process::signal(proc.record.pid, libc::SIGKILL);
                }
                let mut proc = self.engines.remove(&volume.name).expect("present");
                let died = proc.record.epoch == epoch.0;
                proc.stop();
                if died && matches!(volume.state, VolumeState::Attached | VolumeState::Attaching) {
                    // The log gives the new engine a new epoch; it starts here at the next
                    // tick, behind the same device (and the same NBD port when free).
                    let deaths = self.engine_deaths.entry(volume.name.clone()).or_default();
                    deaths.died();
                    tracing::warn!(volume = %volume.name, epoch = epoch.0, in_a_row = deaths.count, "engine exited; restarting it under a new epoch");
                    self.last_nbd
                        .insert(volume.name.clone(), proc.record.address.clone());
                    let request = Request::ReportEngineDied {
                        name: volume.name.clone(),
                        epoch,
                    };
                    if let Err(err) = self.propose(request).await {
                        tracing::warn!("reporting the engine exit: {err}");
                    }
                    continue;
                }
            }
            match volume.state {
                VolumeState::Attaching | VolumeState::Attached => {
                    self.attach_seen
                        .entry(volume.name.clone())
                        .or_insert_with(Instant::now);
                    if !self.engines.contains_key(&volume.name) {
                        // An engine that keeps dying is started again less and less often.
                        if let Some(wait) = self
                            .engine_deaths
                            .get(&volume.name)
                            .and_then(Deaths::wait_before_start)
                        {
                            tracing::debug!(volume = %volume.name, ?wait, "the engine keeps dying; starting it later");
                            continue;
                        }
                        let image = view
                            .engine_images
                            .get(&volume.name)
                            .map_or("", String::as_str);
                        let upgrading = view.upgrading_engines.contains(&volume.name);
                        match self.start_engine(volume, replicas, image, upgrading) {
                            Ok(proc) => {
                                self.engines.insert(volume.name.clone(), proc);
                            }
                            Err(err) => {
                                tracing::warn!(volume = %volume.name, image, "starting the engine: {err:#}");
                                if upgrading {
                                    self.upgrade_failed(&volume.name, "the engine", &err).await;
                                }
                                continue;
                            }
                        }
                    }
                    let endpoint = self.engines[&volume.name].record.address.clone();
                    let wants_device = volume
                        .attachment
                        .as_ref()
                        .is_some_and(|a| a.frontend.wants_device());
                    let mut device = None;
                    // A restoring engine serves no frontend: the device comes after.
                    if wants_device && !endpoint.is_empty() {
                        match self.ensure_device(volume, &endpoint, &view.block_device_frontend) {
                            Ok(Some(ready)) => device = Some(ready),
                            Ok(None) => {
                                // Being set up: report at a later tick.
                                self.watch_and_time(volume, replicas, view).await;
                                continue;
                            }
                            Err(err) => {
                                let reason = format!("{err:#}");
                                let known = volume
                                    .attachment
                                    .as_ref()
                                    .is_some_and(|a| a.error.as_deref() == Some(reason.as_str()));
                                if known || volume.state != VolumeState::Attaching {
                                    self.watch_and_time(volume, replicas, view).await;
                                    continue;
                                }
                                tracing::warn!(volume = %volume.name, "setting up the block device: {reason}");
                                let request = Request::ReportDeviceFailed {
                                    name: volume.name.clone(),
                                    epoch,
                                    reason,
                                };
                                if let Err(err) = self.propose(request).await {
                                    tracing::warn!(volume = %volume.name, "reporting the device failure: {err}");
                                }
                                self.watch_and_time(volume, replicas, view).await;
                                continue;
                            }
                        }
                    }
                    let device_moved = device.as_ref().is_some_and(|d| {
                        volume.attachment.as_ref().and_then(|a| a.device.as_deref())
                            != Some(d.device.as_str())
                    });
                    if volume.state == VolumeState::Attaching || device_moved {
                        let (frontend, device) = match device {
                            Some(d) => (d.frontend, Some(d.device)),
                            None => (shorthorn_state::Frontend::None, None),
                        };
                        let request = Request::ReportEngineStarted {
                            name: volume.name.clone(),
                            epoch,
                            endpoint,
                            frontend,
                            device,
                        };
                        if let Err(err) = self.propose(request).await {
                            tracing::warn!(volume = %volume.name, "reporting the engine: {err}");
                        }
                    }
                    self.watch_and_time(volume, replicas, view).await;
                }
                VolumeState::Detaching => {
                    // The device first: it sends its last flush to the engine. One that
                    // is still mounted keeps its engine until it is unmounted.
                    if !self.stop_device(&volume.name, false) {
                        continue;
                    }
                    self.last_nbd.remove(&volume.name);
                    if let Some(mut proc) = self.engines.remove(&volume.name) {
                        proc.stop();
                        let _ = fs::remove_dir_all(self.engine_dir(&volume.name));
                    }
                    let request = Request::ReportEngineStopped {
                        name: volume.name.clone(),
                        epoch,
                    };
                    if let Err(err) = self.propose(request).await {
                        tracing::warn!(volume = %volume.name, "reporting the detach: {err}");
                    }
                }
                _ => {}
            }
        }
        let wanted: Vec<&str> = view.attached.iter().map(|(v, _)| v.name.as_str()).collect();
        self.attach_seen.retain(|v, _| wanted.contains(&v.as_str()));
        let gone: Vec<String> = self
            .engines
            .keys()
            .filter(|v| !wanted.contains(&v.as_str()))
            .cloned()
            .collect();
        let devices_gone: Vec<String> = self
            .devices
            .keys()
            .filter(|v| !wanted.contains(&v.as_str()))
            .cloned()
            .collect();
        for volume in devices_gone {
            self.stop_device(&volume, true);
        }
        self.last_nbd.retain(|v, _| wanted.contains(&v.as_str()));
        self.engine_silence
            .retain(|v, _| wanted.contains(&v.as_str()));
        self.engine_deaths
            .retain(|v, _| wanted.contains(&v.as_str()));
        for volume in gone {
            if let Some(mut proc) = self.engines.remove(&volume) {
                tracing::info!(volume = %volume, "volume no longer attached here: stopping its engine");
                proc.stop();
            }
            let _ = fs::remove_dir_all(self.engine_dir(&volume));
        }
    }

    fn start_engine(
        &self,
        volume: &Volume,
        replicas: &[Replica],
        image: &str,
        upgrading: bool,
    ) -> anyhow::Result<Proc> {
        let read_write: Vec<&Replica> = replicas
            .iter()
            .filter(|r| r.mode == ReplicaMode::ReadWrite)
            .collect();
        let healthy: Vec<&str> = read_write
            .iter()
            .filter_map(|r| r.address.as_deref())
            .collect();
        anyhow::ensure!(
            !healthy.is_empty(),
            "no read-write replica has reported its address yet"
        );
        // An engine started without a read-write replica would never write to it: wait for
        // every one to report its address; one that has not within the grace period is
        // reported failed by `watch_engine` and rebuilt later.
        let waited = self
            .attach_seen
            .get(&volume.name)
            .map_or(Duration::ZERO, Instant::elapsed);
        anyhow::ensure!(
            healthy.len() == read_write.len() || waited >= ADDRESS_GRACE,
            "waiting for {} of {} read-write replicas to report their address",
            read_write.len() - healthy.len(),
            read_write.len()
        );
        let dir = self.engine_dir(&volume.name);
        fs::create_dir_all(&dir)?;
        // An engine restoring a volume serves no frontend: nobody reads a half-restored
        // volume. A restarted engine takes its predecessor's NBD port when it is free, so
        // that userspace clients find it where they were.
        let previous = self
            .last_nbd
            .get(&volume.name)
            .and_then(|uri| uri.strip_prefix("nbd://"))
            .and_then(|rest| rest.split_once('/'))
            .map(|(address, _)| address.to_string())
            .filter(|address| std::net::TcpListener::bind(address.as_str()).is_ok());
        // An internal attachment (snapshot or backup work on a detached volume) serves none
        // either.
        let internal = volume.attachment.as_ref().is_some_and(|a| a.internal);
        let nbd = match (volume.restoring() || internal || volume.standby, previous) {
            (true, _) => None,
            (false, Some(address)) => Some(address),
            (false, None) => Some(format!(
                "{}:{}",
                self.config.host,
                free_port(&self.config.host)?
            )),
        };
        let control = format!("{}:{}", self.config.host, free_port(&self.config.host)?);
        let mut process = Process::new(self.binary(image));
        process
            .arg("engine")
            .arg("serve")
            .arg("--volume")
            .arg(&volume.name)
            .arg("--size")
            .arg(volume.size.to_string())
            .arg("--epoch")
            .arg(volume.epoch.0.to_string())
            .arg("--control")
            .arg(format!("tcp:{control}"));
        if let Some(nbd) = &nbd {
            process.arg("--nbd").arg(format!("tcp:{nbd}"));
        }
        for address in &healthy {
            process.arg("--replica").arg(format!("tcp:{address}"));
        }
        let log = dir.join("engine.log");
        let mut child = spawn_logged(process, &log)?;
        let endpoint = nbd
            .as_ref()
            .map_or_else(String::new, |nbd| format!("nbd://{nbd}/{}", volume.name));
        let record = Record {
            pid: child.id() as i32,
            address: endpoint,
            epoch: volume.epoch.0,
            control,
            image: image.to_string(),
        };
        write_record(&dir, &record)?;
        wait_listening(
            nbd.as_ref().unwrap_or(&record.control),
            Duration::from_secs(15),
        );
        // An upgrade's engine that exits at once fails the upgrade (the old image comes
        // back) instead of being restarted as a dead engine.
        if upgrading && let Err(err) = still_running(&mut child, &log) {
            let _ = fs::remove_file(dir.join("process.json"));
            return Err(err);
        }
        tracing::info!(volume = %volume.name, epoch = volume.epoch.0, nbd = ?nbd, image, "engine started");
        Ok(Proc {
            record,
            child: Some(child),
            control: Default::default(),
        })
    }

    /// Reads the engine's replica list: reports replicas it dropped, adds write-only
    /// replicas for rebuild, and reports finished rebuilds.
    /// [`Agent::watch_engine`], timing how long the engine has not answered.
    async fn watch_and_time(&mut self, volume: &Volume, replicas: &[Replica], view: &NodeView) {
        if self.watch_engine(volume, replicas, view).await {
            self.engine_silence.remove(&volume.name);
        } else {
            let silence = self
                .engine_silence
                .entry(volume.name.clone())
                .or_insert((Instant::now(), 0));
            silence.1 += 1;
        }
    }

    /// Whether `volume`'s engine has failed every probe for [`engine_hang_timeout`].
    fn engine_hung(&self, volume: &str) -> bool {
        self.engine_silence
            .get(volume)
            .is_some_and(|(since, probes)| {
                *probes >= HUNG_PROBES && since.elapsed() >= engine_hang_timeout()
            })
    }

    /// Reports what the engine says of its replicas and carries out the volume's work on
    /// it; whether the engine answered (no engine here counts as answered).
    async fn watch_engine(&self, volume: &Volume, replicas: &[Replica], view: &NodeView) -> bool {
        let scrub_every = view.scrub_interval_secs;
        let Some(proc) = self.engines.get(&volume.name) else {
            return true;
        };
        let connect = async {
            let address = proc
                .record
                .control
                .parse::<shorthorn_dataplane::address::Address>()
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(
                Duration::from_secs(2),
                shorthorn_dataplane::control::connect(&address),
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        };
        let Ok(client) = proc.control.get_or_try_init(|| connect).await else {
            return false;
        };
        let mut client = client.clone();
        let Ok(Ok(list)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.list_replicas(shorthorn_dataplane::proto::Empty {}),
        )
        .await
        else {
            return false;
        };
        let seen = list.into_inner().replicas;
        let find = |addr: &str| {
            seen.iter()
                .find(|i| i.address.trim_start_matches("tcp:") == addr)
        };
        // Not while nothing is left to rebuild from (salvage decides then), and not more
        // often than every RETRY_FAILED for one replica: a replica that fails its rebuild
        // again is not hammered.
        let faulted = volume.robustness == Robustness::Faulted;
        let retry_due = |replica: &Replica| {
            !faulted
                && replica.failed_at.is_none_or(|at| {
                    now_millis().saturating_sub(at.0) >= RETRY_FAILED.as_millis() as u64
                })
        };
        for replica in replicas {
            let Some(addr) = replica.address.as_deref() else {
                continue;
            };
            let info = find(addr);
            let request = match (replica.mode, info.map(|i| i.mode())) {
                (ReplicaMode::ReadWrite | ReplicaMode::WriteOnly, Some(EngineMode::Err)) => {
                    let reason = info.map(|i| i.error.clone()).unwrap_or_default();
                    Some(Request::ReportReplicaFailed {
                        id: replica.id.clone(),
                        reason,
                    })
                }
                (ReplicaMode::ReadWrite, None) => Some(Request::ReportReplicaFailed {
                    id: replica.id.clone(),
                    reason: "not in the engine's replica set (no address when the engine started)"
                        .into(),
                }),
                (ReplicaMode::WriteOnly, Some(EngineMode::Rw)) => {
                    Some(Request::ReportReplicaRebuilt {
                        id: replica.id.clone(),
                    })
                }
                // A failed replica that is serving again at an address the engine does not
                // know (its process was restarted): rebuild it by delta instead of waiting
                // for the stale timeout to replace it.
                (ReplicaMode::Error, None) if retry_due(replica) && serving(addr).await => {
                    tracing::info!(replica = %replica.id, "failed replica is back: delta rebuild");
                    Some(Request::ReportReplicaRebuilding {
                        id: replica.id.clone(),
                    })
                }
                // The same, at the address the engine failed (a cut connection healed, a
                // stopped process resumed): the engine forgets it first, and the next tick
                // rebuilds it as above.
                (ReplicaMode::Error, Some(EngineMode::Err))
                    if retry_due(replica) && serving(addr).await =>
                {
                    let address = shorthorn_dataplane::proto::ReplicaAddress {
                        address: format!("tcp:{addr}"),
                    };
                    match client.remove_replica(address).await {
                        Ok(_) => {
                            tracing::info!(replica = %replica.id, "failed replica answers again: the engine forgets it before a delta rebuild")
                        }
                        Err(err) => {
                            tracing::warn!(replica = %replica.id, "removing the failed replica from the engine: {err}")
                        }
                    }
                    None
                }
                (ReplicaMode::WriteOnly, None) => {
                    let add = shorthorn_dataplane::proto::ReplicaAddress {
                        address: format!("tcp:{addr}"),
                    };
                    match client.add_replica(add).await {
                        Ok(_) => tracing::info!(replica = %replica.id, "rebuild started"),
                        // Still being given its snapshot layers by the engine.
                        Err(err) if err.code() == tonic::Code::FailedPrecondition => {
                            tracing::debug!(replica = %replica.id, "adding the replica for rebuild: {}", err.message())
                        }
                        Err(err) => {
                            tracing::warn!(replica = %replica.id, "adding the replica for rebuild: {err}")
                        }
                    }
                    None
                }
                _ => None,
            };
            if let Some(request) = request
                && let Err(err) = self.propose(request).await
            {
                tracing::warn!(replica = %replica.id, "reporting the replica: {err}");
            }
        }
        if volume.state == VolumeState::Attached && volume.standby {
            self.carry_out_standby(volume, view, &mut client).await;
        } else if volume.state == VolumeState::Attached && volume.restoring() {
            self.carry_out_restore(volume, view, &mut client).await;
        } else if volume.state == VolumeState::Attached {
            if grow_engine(volume, &mut client).await
                && let Some(device) = self.devices.get(&volume.name)
            {
                // The device asks the engine for the new size and passes it to the kernel.
                crate::process::signal(device.record.pid, libc::SIGUSR1);
            }
            self.carry_out_snapshots(volume, &mut client).await;
            self.carry_out_backups(volume, &view.backups, view.backup_concurrency, &mut client)
                .await;
            self.scrub_when_due(volume, &client, scrub_every);
        }
        true
    }

    /// Starts a scrub of the volume when `scrubInterval` seconds passed since the last one
    /// this agent started (0: never). It runs in the background; replicas it fails show up
    /// in the engine's list and are reported and rebuilt like any failed replica.
    fn scrub_when_due(&self, volume: &Volume, client: &EngineClient, every: u64) {
        if every == 0 {
            return;
        }
        let mut last = self.scrubbed.lock().unwrap_or_else(|e| e.into_inner());
        let due = last
            .get(&volume.name)
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(every));
        if !due {
            return;
        }
        last.insert(volume.name.clone(), Instant::now());
        let (mut client, name) = (client.clone(), volume.name.clone());
        tokio::spawn(async move {
            match client.scrub(shorthorn_dataplane::proto::Empty {}).await {
                Ok(report) => {
                    let r = report.into_inner();
                    if r.mismatched_chunks.is_empty() {
                        tracing::info!(volume = %name, chunks = r.chunks_compared, "scrub: replicas agree");
                    } else {
                        tracing::warn!(volume = %name, chunks = r.chunks_compared, mismatched = ?r.mismatched_chunks, failed = ?r.failed, undecided = ?r.undecided_chunks, "scrub: replicas differ");
                    }
                }
                Err(status) => tracing::warn!(volume = %name, "scrub: {}", status.message()),
            }
        });
    }

    fn engine_dir(&self, volume: &str) -> PathBuf {
        self.config.disk.join("engines").join(volume)
    }
}

pub(super) type EngineClient = shorthorn_dataplane::control::ControlClient;

/// Deaths of one volume's engines in a row (each within [`Deaths::IN_A_ROW`] of the last).
#[derive(Debug, Default)]
pub(super) struct Deaths {
    count: u32,
    last: Option<Instant>,
}

impl Deaths {
    /// Deaths further apart than this are not counted as in a row.
    const IN_A_ROW: Duration = Duration::from_secs(60);

    fn died(&mut self) {
        self.died_at(Instant::now());
    }

    fn died_at(&mut self, at: Instant) {
        let in_a_row = self
            .last
            .is_some_and(|last| at.saturating_duration_since(last) < Self::IN_A_ROW);
        self.count = if in_a_row { self.count + 1 } else { 1 };
        self.last = Some(at);
    }

    /// How long to wait still before starting the next engine, if at all: nothing for the
    /// first two deaths in a row (an engine killed now and then restarts at once), then 1,
    /// 2, 4 ... up to 30 seconds after the last death, so that a crashing engine does not
    /// take a new epoch every tick.
    fn wait_before_start(&self) -> Option<Duration> {
        self.wait_at(Instant::now())
    }

    fn wait_at(&self, now: Instant) -> Option<Duration> {
        let last = self.last?;
        if self.count < 3 {
            return None;
        }
        let delay = Duration::from_secs(1 << (self.count - 3).min(5)).min(Duration::from_secs(30));
        delay
            .checked_sub(now.saturating_duration_since(last))
            .filter(|d| !d.is_zero())
    }
}

/// Grows the engine (and through it every replica) when the log says the volume is larger
/// than the engine serves; returns whether it did. A volume expanded while detached grows
/// when its engine starts.
/// Probes in a row an engine must fail, over [`engine_hang_timeout`], to be taken for hung.
const HUNG_PROBES: u32 = 5;

/// How long an engine may go without answering its control probes (2 s each, every
/// agent tick) before the agent kills it and starts a new one behind the same device:
/// 20 s, or `SHORTHORN_ENGINE_HANG_SECS` (tests).
fn engine_hang_timeout() -> Duration {
    std::env::var("SHORTHORN_ENGINE_HANG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(20), Duration::from_secs)
}

async fn grow_engine(volume: &Volume, client: &mut EngineClient) -> bool {
    let Ok(stats) = client.stats(shorthorn_dataplane::proto::Empty {}).await else {
        return false;
    };
    let serving = stats.into_inner().size_bytes;
    if serving >= volume.size {
        return false;
    }
    let request = shorthorn_dataplane::proto::ExpandRequest {
        size_bytes: volume.size,
    };
    match client.expand(request).await {
        Ok(_) => {
            tracing::info!(volume = %volume.name, from = serving, to = volume.size, "volume expanded online");
            true
        }
        Err(status) => {
            tracing::warn!(volume = %volume.name, "expanding the engine: {}", status.message());
            false
        }
    }
}

/// Whether something accepts connections at `addr` (within a second).
async fn serving(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_that_keeps_dying_is_restarted_less_and_less_often() {
        let t0 = Instant::now();
        let mut deaths = Deaths::default();
        assert_eq!(deaths.wait_at(t0), None);
        deaths.died_at(t0);
        deaths.died_at(t0 + Duration::from_secs(1));
        assert_eq!(
            deaths.wait_at(t0 + Duration::from_secs(1)),
            None,
            "two in a row restart at once"
        );
        let mut at = t0 + Duration::from_secs(2);
        let mut waits = Vec::new();
        for _ in 0..8 {
            deaths.died_at(at);
            waits.push(deaths.wait_at(at).expect("a wait").as_secs());
            at += Duration::from_secs(31);
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        // Part of the wait already passed.
        assert_eq!(
            deaths.wait_at(at - Duration::from_secs(31) + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        // A death long after the last one starts the count again.
        deaths.died_at(at + Deaths::IN_A_ROW);
        assert_eq!(deaths.count, 1);
        assert_eq!(deaths.wait_at(at + Deaths::IN_A_ROW), None);
    }
}
