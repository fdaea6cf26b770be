//! The per-volume engine: owns the replica set and its modes (RW, WO, ERR), sends each
//! write to every healthy replica in parallel and acknowledges only when all of them have
//! it, reads from one RW replica (round robin), and marks a replica that errs or times out
//! as failed. It never serves a client directly (that is `nbd`) and never touches a disk.

pub mod link;

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;

use crate::address::Address;
use crate::protocol::{FLAG_FUA, Op, Status};
use crate::volume::{Epoch, VolumeName};
use link::{LinkError, ReplicaLink, Reply};

/// What a replica is doing in the set. Longhorn's modes: RW serves reads and writes, WO
/// takes writes while it is rebuilt, ERR is dropped and receives nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplicaMode {
    Rw = 0,
    Wo = 1,
    Err = 2,
}

impl ReplicaMode {
    fn from_u8(v: u8) -> ReplicaMode {
        match v {
            0 => ReplicaMode::Rw,
            1 => ReplicaMode::Wo,
            _ => ReplicaMode::Err,
        }
    }
}

/// Rebuild progress of a WO replica, in bytes of the volume and chunks.
#[derive(Debug, Default)]
pub struct RebuildProgress {
    pub done_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub chunks_compared: AtomicU64,
    pub chunks_copied: AtomicU64,
}

/// One replica in the engine's set.
pub struct ReplicaSlot {
    pub address: Address,
    link: Option<ReplicaLink>,
    mode: AtomicU8,
    error: Mutex<String>,
    pub rebuild: RebuildProgress,
}

impl ReplicaSlot {
    pub fn mode(&self) -> ReplicaMode {
        ReplicaMode::from_u8(self.mode.load(Ordering::Acquire))
    }

    pub fn error(&self) -> String {
        self.error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub(crate) fn set_mode(&self, from: ReplicaMode, to: ReplicaMode) -> bool {
        self.mode
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no healthy replica is left")]
    NoHealthyReplica,
    #[error("every replica refused epoch {epoch}: {reason}")]
    StaleEpoch { epoch: Epoch, reason: String },
    #[error("range {offset}+{length} reaches past the volume end {size}")]
    OutOfRange { offset: u64, length: u64, size: u64 },
    #[error("replica {address}: {reason}")]
    Replica { address: String, reason: String },
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
}

/// I/O counters since the engine started.
#[derive(Debug, Default)]
pub struct Stats {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_ns: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub write_ns: AtomicU64,
    pub flush_ops: AtomicU64,
    pub flush_ns: AtomicU64,
    /// Rates over the last full second, refreshed once a second.
    pub read_iops: AtomicU64,
    pub write_iops: AtomicU64,
    pub read_bytes_per_sec: AtomicU64,
    pub write_bytes_per_sec: AtomicU64,
    /// Mean latency (ns) of the reads and writes completed in the last full second; 0 when
    /// there were none.
    pub read_latency_last_ns: AtomicU64,
    pub write_latency_last_ns: AtomicU64,
}

/// How to start an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub volume: VolumeName,
    pub size: u64,
    pub epoch: Epoch,
    pub token: String,
    pub replicas: Vec<Address>,
    /// A replica that does not answer within this is marked failed.
    pub timeout: Duration,
}

pub struct Engine {
    pub volume: VolumeName,
    pub epoch: Epoch,
    token: String,
    size: AtomicU64,
    replicas: RwLock<Vec<Arc<ReplicaSlot>>>,
    /// Held shared by every frontend I/O and exclusively by snapshots and rebuild copies,
    /// which must see no write in flight.
    pub(crate) gate: tokio::sync::RwLock<()>,
    timeout: Duration,
    next_read: AtomicUsize,
    pub stats: Stats,
    /// Frontend clients connected now; revert needs none.
    pub clients: AtomicUsize,
    started: Instant,
    /// Replicas being given the snapshot layers they lack before they join the set.
    pub(crate) joining: Mutex<Vec<Address>>,
}

impl Engine {
    /// Connects to every replica. Unreachable replicas start in ERR; at least one must be
    /// reachable. When every replica refuses the epoch as stale, that is the error.
    pub async fn start(config: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        let connects = config.replicas.iter().map(|addr| async {
            let r = tokio::time::timeout(
                config.timeout,
                ReplicaLink::connect(addr, config.volume.as_str(), config.epoch, &config.token),
            )
            .await
            .unwrap_or(Err(LinkError::Timeout(config.timeout)));
            (addr.clone(), r)
        });
        let mut slots = Vec::new();
        let mut stale = Vec::new();
        for (address, result) in join_all(connects).await {
            let (link, mode, error) = match result {
                Ok(link) if link.size == config.size => {
                    (Some(link), ReplicaMode::Rw, String::new())
                }
                // The volume was expanded while no engine ran (offline expansion): the
                // replica grows to the volume's size before it takes any I/O.
                Ok(link) if link.size < config.size => {
                    match grow(&link, config.size, config.timeout).await {
                        Ok(()) => {
                            tracing::info!(replica = %address, from = link.size, to = config.size, "replica grown to the volume size");
                            (Some(link), ReplicaMode::Rw, String::new())
                        }
                        Err(reason) => (
                            None,
                            ReplicaMode::Err,
                            format!(
                                "growing the replica from {} to {}: {reason}",
                                link.size, config.size
                            ),
                        ),
                    }
                }
                Ok(link) => (
                    None,
                    ReplicaMode::Err,
                    format!("replica size {} is not {}", link.size, config.size),
                ),
                Err(e) => {
                    if let LinkError::Refused {
                        status: Status::StaleEpoch,
                        ..
                    } = e
                    {
                        stale.push(e.to_string());
                    }
                    (None, ReplicaMode::Err, e.to_string())
                }
            };
            if mode == ReplicaMode::Err {
                tracing::warn!(event = "replica_failed", replica = %address, reason = %error, "replica not usable at start");
            } else {
                tracing::info!(event = "replica_mode", replica = %address, mode = "RW", "replica joined");
            }
            slots.push(Arc::new(ReplicaSlot {
                address,
                link,
                mode: AtomicU8::new(mode as u8),
                error: Mutex::new(error),
                rebuild: RebuildProgress::default(),
            }));
        }
        if !slots.iter().any(|s| s.mode() == ReplicaMode::Rw) {
            if !stale.is_empty() {
                return Err(EngineError::StaleEpoch {
                    epoch: config.epoch,
                    reason: stale.join("; "),
                });
            }
            return Err(EngineError::NoHealthyReplica);
        }
        let engine = Arc::new(Engine {
            volume: config.volume,
            epoch: config.epoch,
            token: config.token,
            size: AtomicU64::new(config.size),
            replicas: RwLock::new(slots),
            gate: tokio::sync::RwLock::new(()),
            timeout: config.timeout,
            next_read: AtomicUsize::new(0),
            stats: Stats::default(),
            clients: AtomicUsize::new(0),
            started: Instant::now(),
            joining: Mutex::new(Vec::new()),
        });
        engine.drop_stale_replicas().await;
        tokio::spawn(track_rates(Arc::downgrade(&engine)));
        if engine.rw_replicas().is_empty() {
            return Err(EngineError::NoHealthyReplica);
        }
        Ok(engine)
    }

    /// The revision counter of a replica (writes applied), from its Info.
    pub(crate) async fn revision(&self, slot: &ReplicaSlot) -> Result<u64, EngineError> {
        let reply = self
            .call_or_fail(slot, Op::Info, 0, 0, 0, Bytes::new())
            .await?;
        let info: crate::replica::ReplicaInfo =
            serde_json::from_slice(&reply.payload).map_err(|e| EngineError::Replica {
                address: slot.address.to_string(),
                reason: format!("info: {e}"),
            })?;
        Ok(info.revision)
    }

    /// Marks failed every RW replica whose revision counter is below the highest: it missed
    /// writes (it was down while the others went on) and must be rebuilt before serving.
    async fn drop_stale_replicas(&self) {
        let rw = self.rw_replicas();
        let revisions = join_all(rw.iter().map(|s| self.revision(s))).await;
        let newest = revisions
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .copied()
            .max()
            .unwrap_or(0);
        for (slot, rev) in rw.iter().zip(revisions) {
            if let Ok(rev) = rev
                && rev < newest
            {
                self.fail(
                    slot,
                    &format!("stale: revision {rev} is behind {newest}; rebuild it"),
                );
            }
        }
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// How long a replica may take to answer before it is marked failed.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The token this engine presents to replicas.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every replica in the set, failed ones included.
    pub fn replicas(&self) -> Vec<Arc<ReplicaSlot>> {
        self.replicas.read().map(|r| r.clone()).unwrap_or_default()
    }

    fn with_modes(&self, modes: &[ReplicaMode]) -> Vec<Arc<ReplicaSlot>> {
        self.replicas()
            .into_iter()
            .filter(|s| modes.contains(&s.mode()))
            .collect()
    }

    pub(crate) fn push_replica(&self, slot: Arc<ReplicaSlot>) {
        if let Ok(mut r) = self.replicas.write() {
            r.push(slot);
        }
    }

    /// Drops the replica at `address` from the set and closes its connection.
    pub fn remove_replica(&self, address: &Address) -> Result<(), EngineError> {
        let slot = {
            let mut r = self
                .replicas
                .write()
                .map_err(|_| EngineError::Busy("replica set poisoned".into()))?;
            let i = r
                .iter()
                .position(|s| &s.address == address)
                .ok_or_else(|| EngineError::Invalid(format!("no replica {address} in the set")))?;
            r.remove(i)
        };
        slot.mode.store(ReplicaMode::Err as u8, Ordering::Release);
        if let Some(l) = &slot.link {
            l.shutdown();
        }
        tracing::info!(event = "replica_removed", replica = %address, "replica removed from the set");
        Ok(())
    }

    pub(crate) fn new_slot(
        &self,
        address: Address,
        link: ReplicaLink,
        mode: ReplicaMode,
    ) -> Arc<ReplicaSlot> {
        Arc::new(ReplicaSlot {
            address,
            link: Some(link),
            mode: AtomicU8::new(mode as u8),
            error: Mutex::new(String::new()),
            rebuild: RebuildProgress::default(),
        })
    }

    pub(crate) async fn connect(&self, address: &Address) -> Result<ReplicaLink, EngineError> {
        let link = tokio::time::timeout(
            self.timeout,
            ReplicaLink::connect(address, self.volume.as_str(), self.epoch, &self.token),
        )
        .await
        .unwrap_or(Err(LinkError::Timeout(self.timeout)))
        .map_err(|e| EngineError::Replica {
            address: address.to_string(),
            reason: e.to_string(),
        })?;
        if link.size != self.size() {
            return Err(EngineError::Replica {
                address: address.to_string(),
                reason: format!("replica size {} is not {}", link.size, self.size()),
            });
        }
        Ok(link)
    }

    /// Marks `slot` failed: it leaves the set for I/O and its connection is closed.
    pub fn fail(&self, slot: &ReplicaSlot, reason: &str) {
        let prev = ReplicaMode::from_u8(slot.mode.swap(ReplicaMode::Err as u8, Ordering::AcqRel));
        if prev == ReplicaMode::Err {
            return;
        }
        if let Ok(mut e) = slot.error.lock() {
            *e = reason.to_owned();
        }
        tracing::warn!(
            event = "replica_failed",
            replica = %slot.address,
            previous_mode = ?prev,
            mode = "ERR",
            reason,
            "replica marked failed and dropped from the set"
        );
        if let Some(l) = &slot.link {
            l.shutdown();
        }
    }

    /// Fails every replica whose connection ended, without waiting for the next I/O to
    /// find out: an idle volume reports a dead replica within a second.
    fn fail_closed_links(&self) {
        for slot in self.with_modes(&[ReplicaMode::Rw, ReplicaMode::Wo]) {
            if slot.link.as_ref().is_some_and(ReplicaLink::is_closed) {
                self.fail(&slot, "the replica closed the connection");
            }
        }
    }

    /// One request to one replica, bounded by the engine's timeout.
    pub(crate) async fn call(
        &self,
        slot: &ReplicaSlot,
        op: Op,
        flags: u8,
        offset: u64,
        length: u32,
        payload: Bytes,
    ) -> Result<Reply, LinkError> {
        let Some(link) = &slot.link else {
            return Err(LinkError::Closed("never connected".into()));
        };
        match tokio::time::timeout(self.timeout, link.call(op, flags, offset, length, payload))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout(self.timeout)),
        }
    }

    /// Like [`Engine::call`], but a transport error or an I/O status fails the replica.
    pub(crate) async fn call_or_fail(
        &self,
        slot: &ReplicaSlot,
        op: Op,
        flags: u8,
        offset: u64,
        length: u32,
        payload: Bytes,
    ) -> Result<Reply, EngineError> {
        let err = |reason: String| EngineError::Replica {
            address: slot.address.to_string(),
            reason,
        };
        match self.call(slot, op, flags, offset, length, payload).await {
            Ok(r) if r.status == Status::Ok => Ok(r),
            Ok(r) => {
                let reason = format!("{op:?} answered {:?}", r.status);
                if matches!(r.status, Status::Io | Status::StaleEpoch) {
                    self.fail(slot, &reason);
                }
                Err(match r.status {
                    Status::NotFound => EngineError::SnapshotNotFound(
                        String::from_utf8_lossy(&r.payload).into_owned(),
                    ),
                    Status::Exists => EngineError::SnapshotExists(
                        String::from_utf8_lossy(&r.payload).into_owned(),
                    ),
                    Status::Invalid | Status::OutOfRange => EngineError::Invalid(reason),
                    _ => err(reason),
                })
            }
            Err(e) => {
                self.fail(slot, &e.to_string());
                Err(err(e.to_string()))
            }
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), EngineError> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(EngineError::OutOfRange {
                offset,
                length,
                size,
            }),
        }
    }

    /// Sends one request to every RW and WO replica; succeeds when at least one RW replica
    /// did it. Replicas that fail are dropped.
    async fn fan_out(
        &self,
        op: Op,
        flags: u8,
        offset: u64,
        length: u32,
        payload: Bytes,
    ) -> Result<(), EngineError> {
        let targets = self.with_modes(&[ReplicaMode::Rw, ReplicaMode::Wo]);
        let calls = targets.iter().map(|s| {
            let rw = s.mode() == ReplicaMode::Rw;
            let payload = payload.clone();
            async move {
                (
                    rw,
                    self.call_or_fail(s, op, flags, offset, length, payload)
                        .await,
                )
            }
        });
        let mut acked = 0;
        let mut invalid = None;
        for (rw, result) in join_all(calls).await {
            match result {
                Ok(_) if rw => acked += 1,
                Ok(_) => {}
                Err(EngineError::Invalid(e)) => invalid = Some(e),
                Err(_) => {}
            }
        }
        if let Some(e) = invalid {
            return Err(EngineError::Invalid(e));
        }
        if acked == 0 {
            return Err(EngineError::NoHealthyReplica);
        }
        Ok(())
    }

    /// Reads `length` bytes at `offset` from one RW replica, moving to the next when one
    /// fails.
    pub async fn read(&self, offset: u64, length: u32) -> Result<Vec<u8>, EngineError> {
        self.check_range(offset, length as u64)?;
        let started = Instant::now();
        let _io = self.gate.read().await;
        loop {
            let rw = self.with_modes(&[ReplicaMode::Rw]);
            if rw.is_empty() {
                return Err(EngineError::NoHealthyReplica);
            }
            let slot = &rw[self.next_read.fetch_add(1, Ordering::Relaxed) % rw.len()];
            match self
                .call_or_fail(slot, Op::Read, 0, offset, length, Bytes::new())
                .await
            {
                Ok(reply) if reply.payload.len() == length as usize => {
                    self.stats.read_ops.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .read_bytes
                        .fetch_add(length as u64, Ordering::Relaxed);
                    self.stats
                        .read_ns
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    return Ok(reply.payload);
                }
                Ok(reply) => {
                    self.fail(
                        slot,
                        &format!("read returned {} bytes, not {length}", reply.payload.len()),
                    );
                }
                Err(EngineError::Invalid(e)) => return Err(EngineError::Invalid(e)),
                Err(_) => {}
            }
        }
    }

    /// Writes `data` at `offset` on every healthy replica; with `fua`, durably.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), EngineError> {
        let length = data.len() as u64;
        self.check_range(offset, length)?;
        let started = Instant::now();
        let _io = self.gate.read().await;
        let flags = if fua { FLAG_FUA } else { 0 };
        self.fan_out(Op::Write, flags, offset, length as u32, data)
            .await?;
        self.stats.write_ops.fetch_add(1, Ordering::Relaxed);
        self.stats.write_bytes.fetch_add(length, Ordering::Relaxed);
        self.stats
            .write_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Zeroes a range (`trim` and `write zeroes` both read back as zeros afterwards).
    pub async fn zero(
        &self,
        offset: u64,
        length: u32,
        trim: bool,
        fua: bool,
    ) -> Result<(), EngineError> {
        self.check_range(offset, length as u64)?;
        let _io = self.gate.read().await;
        let op = if trim { Op::Trim } else { Op::WriteZeroes };
        let flags = if fua { FLAG_FUA } else { 0 };
        self.fan_out(op, flags, offset, length, Bytes::new()).await
    }

    /// Acknowledged once every healthy replica has fsynced.
    pub async fn flush(&self) -> Result<(), EngineError> {
        let started = Instant::now();
        let _io = self.gate.read().await;
        self.fan_out(Op::Flush, 0, 0, 0, Bytes::new()).await?;
        self.stats.flush_ops.fetch_add(1, Ordering::Relaxed);
        self.stats
            .flush_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Grows the volume on every healthy replica.
    pub async fn expand(&self, size: u64) -> Result<(), EngineError> {
        if size < self.size() || !size.is_multiple_of(crate::volume::BLOCK_SIZE) {
            return Err(EngineError::Invalid(format!(
                "cannot expand from {} to {size} bytes",
                self.size()
            )));
        }
        let _hold = self.gate.write().await;
        self.fan_out(Op::Expand, 0, size, 0, Bytes::new()).await?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    pub(crate) fn rw_replicas(&self) -> Vec<Arc<ReplicaSlot>> {
        self.with_modes(&[ReplicaMode::Rw])
    }
}

/// Asks one replica to grow to `size` bytes.
async fn grow(link: &ReplicaLink, size: u64, within: Duration) -> Result<(), String> {
    match tokio::time::timeout(within, link.call(Op::Expand, 0, size, 0, Bytes::new())).await {
        Ok(Ok(reply)) if reply.status == Status::Ok => Ok(()),
        Ok(Ok(reply)) => Err(format!("answered {:?}", reply.status)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

/// Once a second, turns the counters into per-second rates and mean latencies; ends with
/// the engine.
async fn track_rates(engine: std::sync::Weak<Engine>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = [0u64; 6];
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let s = &engine.stats;
        let now = [
            &s.read_ops,
            &s.write_ops,
            &s.read_bytes,
            &s.write_bytes,
            &s.read_ns,
            &s.write_ns,
        ]
        .map(|a| a.load(Ordering::Relaxed));
        let delta: [u64; 6] = std::array::from_fn(|i| now[i].saturating_sub(last[i]));
        let rates = [
            &s.read_iops,
            &s.write_iops,
            &s.read_bytes_per_sec,
            &s.write_bytes_per_sec,
        ];
        for (rate, value) in rates.iter().zip(delta) {
            rate.store(value, Ordering::Relaxed);
        }
        let mean = |ns: u64, ops: u64| ns.checked_div(ops).unwrap_or(0);
        s.read_latency_last_ns
            .store(mean(delta[4], delta[0]), Ordering::Relaxed);
        s.write_latency_last_ns
            .store(mean(delta[5], delta[1]), Ordering::Relaxed);
        last = now;
        engine.fail_closed_links();
    }
}
