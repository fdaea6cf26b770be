//! `shorthorn manager`: one member of the Raft group of managers.
//!
//! The first manager (no `--join`, empty data directory) bootstraps a one-member group;
//! the others join through any member with `--join ADDR`, as learners first, then as voters
//! up to `--voters`. A restarted manager (non-empty data directory) rejoins by itself and
//! ignores `--join`. A manager whose data directory was lost cannot join under its old node
//! id until it has been removed from the group. SIGTERM or SIGINT stops it cleanly; after a
//! SIGKILL it recovers everything it acknowledged from its data directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shorthorn_consensus::grpc::{self, GrpcTransport};
use shorthorn_consensus::{Error, Handle, Tuning};

#[derive(Debug, clap::Args)]
pub struct ManagerArgs {
    /// This manager's Raft node id (unique, never reused).
    #[arg(long)]
    pub node_id: u64,
    /// Directory for the log, the state machine and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address the Raft gRPC service listens on.
    #[arg(long)]
    pub listen: String,
    /// Join the cluster through this member instead of bootstrapping a new one.
    #[arg(long)]
    pub join: Option<String>,
    /// Address the other managers reach this one at (defaults to --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// How many voters the group grows to as managers join; later ones stay learners.
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    pub voters: usize,
    /// Build a snapshot after this many applied entries.
    #[arg(long, default_value_t = 20_000)]
    pub snapshot_every: u64,
    /// Leader heartbeat period in milliseconds (elections start after 4 to 8 of them).
    #[arg(long, default_value_t = 75)]
    pub heartbeat_ms: u64,
    /// Log entries of proposals the leader commits at once; proposals that arrive meanwhile
    /// are batched into the next entry.
    #[arg(long, default_value_t = Tuning::default().batches_in_flight)]
    pub batches_in_flight: usize,
    #[command(flatten)]
    pub services: crate::daemon::ServiceArgs,
}

fn parse_voters(text: &str) -> Result<usize, String> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        other => Err(format!("{other:?} voters: use 1, 3 or 5")),
    }
}

pub fn run(args: ManagerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("manager")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ManagerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.clone());
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(10));
    let tuning = Tuning {
        heartbeat,
        election_timeout: (heartbeat * 4, heartbeat * 8),
        voters: args.voters,
        snapshot_every: args.snapshot_every,
        batches_in_flight: args.batches_in_flight,
        ..Tuning::default()
    };
    let handle = Handle::open(
        args.node_id,
        &args.data_dir,
        advertise,
        Arc::new(GrpcTransport::new()),
        tuning,
    )
    .await
    .with_context(|| format!("opening {}", args.data_dir.display()))?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve(handle.clone(), listener, async move {
        let _ = stop_rx.await;
    }));

    let started = async {
        if handle.is_initialized().await? {
            tracing::info!(node = args.node_id, "restarted from the data directory");
        } else if let Some(join) = &args.join {
            join_group(&handle, join).await?;
        } else {
            handle.bootstrap().await?;
            tracing::info!(node = args.node_id, "bootstrapped a new group");
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        started = started => match started {
            Ok(()) => match crate::daemon::start(&args.services, &handle, args.node_id).await {
                Ok(services) => {
                    let outcome = wait_for_signal().await;
                    services.iter().for_each(|task| task.abort());
                    outcome
                }
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        },
        signal = wait_for_signal() => signal,
    };

    if let Err(err) = handle.shutdown().await {
        tracing::warn!("stopping Raft: {err}");
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(err))) => tracing::warn!("gRPC server: {err}"),
        Ok(Err(err)) => tracing::warn!("gRPC server task: {err}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    outcome
}

/// Asks `join` (any member) to add this manager; retries while the group is unreachable
/// or electing, fails at once when the group refuses.
async fn join_group(handle: &Handle, join: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match handle.join(join).await {
            Ok(status) => {
                tracing::info!(
                    node = handle.id(),
                    leader = ?status.leader,
                    voters = ?status.voters,
                    "joined the group through {join}"
                );
                return Ok(());
            }
            Err(
                err @ (Error::AlreadyMember { .. } | Error::Membership(_) | Error::Protocol(_)),
            ) => {
                return Err(anyhow::Error::new(err).context(format!("joining through {join}")));
            }
            Err(err) if Instant::now() < deadline => {
                tracing::warn!("joining through {join}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!("joining through {join}")));
            }
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}
