//! The engine's gRPC control endpoint (`proto/control.proto`): replica list with modes and
//! rebuild progress, add and remove replica, snapshot create / list / delete / revert,
//! expand, I/O stats, and backup, restore and copy jobs. It only translates between
//! protobuf and the engine; every decision is the engine's. Also the client side, over TCP or a unix socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper_util::rt::TokioIo;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

use crate::address::{Address, Listener};
use crate::backup::job::{BackupParams, DEFAULT_CONCURRENCY, JobState, Jobs, RestoreParams};
use crate::backup::{BackupError, Credentials, Store};
use crate::engine::{Engine, EngineError, ReplicaMode};
use crate::proto;
use crate::proto::engine_control_client::EngineControlClient;
use crate::proto::engine_control_server::{EngineControl, EngineControlServer};

/// A connected control client.
pub type ControlClient = EngineControlClient<Channel>;

/// Serves the control API on `listener` until it fails.
pub async fn serve(engine: Arc<Engine>, listener: Listener) -> Result<(), tonic::transport::Error> {
    let service = EngineControlServer::new(ControlService {
        engine,
        jobs: Arc::new(Jobs::default()),
    });
    let router = Server::builder().add_service(service);
    match listener {
        Listener::Unix(l, _) => router.serve_with_incoming(UnixListenerStream::new(l)).await,
        Listener::Tcp(l) => router.serve_with_incoming(TcpListenerStream::new(l)).await,
    }
}

/// Connects a control client to an engine at `addr`.
pub async fn connect(addr: &Address) -> Result<ControlClient, tonic::transport::Error> {
    let channel = match addr {
        Address::Tcp(a) => {
            Endpoint::from_shared(format!("http://{a}"))?
                .connect()
                .await?
        }
        Address::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://engine.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await?
        }
    };
    Ok(EngineControlClient::new(channel))
}

struct ControlService {
    engine: Arc<Engine>,
    jobs: Arc<Jobs>,
}

fn backup_status(e: BackupError) -> Status {
    let msg = e.to_string();
    match e {
        BackupError::BadTarget { .. }
        | BackupError::BadCredentials(_)
        | BackupError::Invalid(_)
        | BackupError::Unsupported(_) => Status::invalid_argument(msg),
        BackupError::BackupNotFound { .. } => Status::not_found(msg),
        BackupError::Busy(_) => Status::already_exists(msg),
        BackupError::Engine(e) => status(e),
        _ => Status::unavailable(msg),
    }
}

fn open_store(
    url: &str,
    credentials: &std::collections::HashMap<String, String>,
) -> Result<Store, Status> {
    let creds = Credentials::from_map(credentials.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(backup_status)?;
    Store::open_url(url, &creds).map_err(backup_status)
}

fn concurrency(c: u32) -> usize {
    if c == 0 {
        DEFAULT_CONCURRENCY
    } else {
        c.min(256) as usize
    }
}

fn status(e: EngineError) -> Status {
    let msg = e.to_string();
    match e {
        EngineError::SnapshotNotFound(_) => Status::not_found(msg),
        EngineError::SnapshotExists(_) => Status::already_exists(msg),
        EngineError::Invalid(_) | EngineError::OutOfRange { .. } => Status::invalid_argument(msg),
        EngineError::Busy(_) => Status::failed_precondition(msg),
        EngineError::NoHealthyReplica | EngineError::StaleEpoch { .. } => Status::unavailable(msg),
        EngineError::Replica { .. } => Status::internal(msg),
    }
}

fn address(s: &str) -> Result<Address, Status> {
    s.parse()
        .map_err(|e: crate::address::BadAddress| Status::invalid_argument(e.to_string()))
}

fn replica_info(s: &crate::engine::ReplicaSlot) -> proto::ReplicaInfo {
    let mode = match s.mode() {
        ReplicaMode::Rw => proto::ReplicaMode::Rw,
        ReplicaMode::Wo => proto::ReplicaMode::Wo,
        ReplicaMode::Err => proto::ReplicaMode::Err,
    };
    proto::ReplicaInfo {
        address: s.address.to_string(),
        mode: mode as i32,
        rebuild_done_bytes: s.rebuild.done_bytes.load(Ordering::Acquire),
        rebuild_total_bytes: s.rebuild.total_bytes.load(Ordering::Acquire),
        rebuild_copied_bytes: s.rebuild.copied_bytes.load(Ordering::Acquire),
        rebuild_chunks_compared: s.rebuild.chunks_compared.load(Ordering::Acquire),
        rebuild_chunks_copied: s.rebuild.chunks_copied.load(Ordering::Acquire),
        error: s.error(),
    }
}

fn mean_us(total_ns: u64, ops: u64) -> u64 {
    total_ns.checked_div(ops).unwrap_or(0) / 1000
}

#[tonic::async_trait]
impl EngineControl for ControlService {
    async fn list_replicas(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<proto::ReplicaList>, Status> {
        let replicas = self
            .engine
            .replicas()
            .iter()
            .map(|s| replica_info(s))
            .collect();
        Ok(Response::new(proto::ReplicaList { replicas }))
    }

    async fn add_replica(
        &self,
        r: Request<proto::ReplicaAddress>,
    ) -> Result<Response<proto::ReplicaInfo>, Status> {
        let addr = address(&r.into_inner().address)?;
        let slot = self.engine.add_replica(addr).await.map_err(status)?;
        Ok(Response::new(replica_info(&slot)))
    }

    async fn remove_replica(
        &self,
        r: Request<proto::ReplicaAddress>,
    ) -> Result<Response<proto::Empty>, Status> {
        let addr = address(&r.into_inner().address)?;
        self.engine.remove_replica(&addr).map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn create_snapshot(
        &self,
        r: Request<proto::SnapshotName>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.engine
            .snapshot_create(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn list_snapshots(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<proto::SnapshotList>, Status> {
        let snapshots = self
            .engine
            .snapshot_list()
            .await
            .map_err(status)?
            .into_iter()
            .map(|s| proto::SnapshotInfo {
                name: s.name,
                parent: s.parent.unwrap_or_default(),
                created_unix_ms: s.created_unix_ms,
            })
            .collect();
        Ok(Response::new(proto::SnapshotList { snapshots }))
    }

    async fn delete_snapshot(
        &self,
        r: Request<proto::SnapshotName>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.engine
            .snapshot_delete(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn revert_snapshot(
        &self,
        r: Request<proto::SnapshotName>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.engine
            .snapshot_revert(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn expand(
        &self,
        r: Request<proto::ExpandRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.engine
            .expand(r.into_inner().size_bytes)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn scrub(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<proto::ScrubReport>, Status> {
        let report = self.engine.scrub().await.map_err(status)?;
        Ok(Response::new(proto::ScrubReport {
            chunks_compared: report.chunks_compared,
            mismatched_chunks: report.mismatched_chunks,
            failed: report.failed,
            undecided_chunks: report.undecided_chunks,
        }))
    }

    async fn start_backup(
        &self,
        r: Request<proto::StartBackupRequest>,
    ) -> Result<Response<proto::JobName>, Status> {
        let r = r.into_inner();
        let store = open_store(&r.target_url, &r.credentials)?;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let mut params = BackupParams::new(&r.name, &r.snapshot);
        params.base_snapshot = opt(r.base_snapshot);
        params.base_backup = opt(r.base_backup);
        params.labels = r.labels.into_iter().collect();
        params.concurrency = concurrency(r.concurrency);
        self.jobs
            .start_backup(self.engine.clone(), store, params)
            .map_err(backup_status)?;
        Ok(Response::new(proto::JobName { name: r.name }))
    }

    async fn start_restore(
        &self,
        r: Request<proto::StartRestoreRequest>,
    ) -> Result<Response<proto::JobName>, Status> {
        let r = r.into_inner();
        let store = open_store(&r.target_url, &r.credentials)?;
        let name = self
            .jobs
            .start_restore(
                self.engine.clone(),
                store,
                RestoreParams {
                    volume: r.backup_volume,
                    name: r.backup_name,
                    base: Some(r.base_backup_name).filter(|b| !b.is_empty()),
                    compare_local: r.compare_local,
                    concurrency: concurrency(r.concurrency),
                },
            )
            .map_err(backup_status)?;
        Ok(Response::new(proto::JobName { name }))
    }

    async fn start_copy(
        &self,
        r: Request<proto::StartCopyRequest>,
    ) -> Result<Response<proto::JobName>, Status> {
        let r = r.into_inner();
        let replicas = r
            .source_replicas
            .iter()
            .map(|a| address(a))
            .collect::<Result<Vec<_>, _>>()?;
        let params = crate::copy::CopyParams {
            source_volume: r.source_volume,
            snapshot: r.snapshot,
            replicas,
            size: r.size_bytes,
            concurrency: concurrency(r.concurrency),
        };
        let name = self
            .jobs
            .start_copy(self.engine.clone(), params)
            .map_err(backup_status)?;
        Ok(Response::new(proto::JobName { name }))
    }

    async fn job_status(
        &self,
        r: Request<proto::JobName>,
    ) -> Result<Response<proto::JobStatusReply>, Status> {
        let name = r.into_inner().name;
        let Some(p) = self.jobs.get(&name) else {
            return Err(Status::not_found(format!("no job {name:?} on this engine")));
        };
        let (state, error, manifest_url) = p.state();
        let state = match state {
            JobState::Running => proto::JobState::Running,
            JobState::Completed => proto::JobState::Completed,
            JobState::Error => proto::JobState::Error,
        };
        Ok(Response::new(proto::JobStatusReply {
            name,
            state: state as i32,
            done_bytes: p.done_bytes.load(Ordering::Relaxed),
            total_bytes: p.total_bytes.load(Ordering::Relaxed),
            uploaded_bytes: p.uploaded_bytes.load(Ordering::Relaxed),
            blocks: p.blocks.load(Ordering::Relaxed),
            error,
            manifest_url,
            kind: p.kind.to_owned(),
            requests: p.requests(),
        }))
    }

    async fn stats(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<proto::VolumeStats>, Status> {
        let s = &self.engine.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Ok(Response::new(proto::VolumeStats {
            size_bytes: self.engine.size(),
            read_ops: load(&s.read_ops),
            write_ops: load(&s.write_ops),
            read_bytes: load(&s.read_bytes),
            write_bytes: load(&s.write_bytes),
            flush_ops: load(&s.flush_ops),
            read_latency_us: mean_us(load(&s.read_ns), load(&s.read_ops)),
            write_latency_us: mean_us(load(&s.write_ns), load(&s.write_ops)),
            flush_latency_us: mean_us(load(&s.flush_ns), load(&s.flush_ops)),
            uptime_ms: self.engine.uptime().as_millis() as u64,
            epoch: self.engine.epoch.0,
            read_iops: load(&s.read_iops),
            write_iops: load(&s.write_iops),
            read_bytes_per_sec: load(&s.read_bytes_per_sec),
            write_bytes_per_sec: load(&s.write_bytes_per_sec),
            read_ns: load(&s.read_ns),
            write_ns: load(&s.write_ns),
            flush_ns: load(&s.flush_ns),
            read_latency_last_ns: load(&s.read_latency_last_ns),
            write_latency_last_ns: load(&s.write_latency_last_ns),
        }))
    }
}
