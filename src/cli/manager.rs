//! `shorthorn manager`: one member of the Raft group of managers.
//!
//! The first manager (no `--join`, empty data directory) bootstraps a one-member group;
//! the others join through any member with `--join ADDR`, as learners first, then as voters
//! up to `--voters`. A restarted manager (non-empty data directory) rejoins by itself and
//! ignores `--join`. A manager whose data directory was lost cannot join under its old node
//! id until it has been removed from the group. SIGTERM or SIGINT stops it cleanly; after a
//! SIGKILL it recovers everything it acknowledged from its data directory.
//!
//! With `--kubernetes` (a DaemonSet pod) there is no `--join` and no `--node-id`: the node
//! name comes from the downward API (`NODE_NAME`), the node id is drawn once and kept in
//! the data directory, and Leases in the namespace decide who bootstraps and whom to join
//! (`shorthorn_k8s_bridge::discovery`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shorthorn_consensus::grpc::{self, GrpcTransport};
use shorthorn_consensus::{Error, Handle, Tuning};
use shorthorn_k8s_bridge::discovery::{Discovery, Start};

#[derive(Debug, clap::Args)]
pub struct ManagerArgs {
    /// This manager's Raft node id (unique, never reused). With --kubernetes it may be
    /// left out: one is drawn at random and kept in the data directory (`node-id`).
    #[arg(long, required_unless_present = "kubernetes")]
    pub node_id: Option<u64>,
    /// Directory for the log, the state machine and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address the Raft gRPC service listens on.
    #[arg(long)]
    pub listen: String,
    /// Join the cluster through this member instead of bootstrapping a new one.
    #[arg(long, conflicts_with = "kubernetes")]
    pub join: Option<String>,
    /// Run as a pod of the chart's DaemonSet: node name from `NODE_NAME` (unless --name),
    /// peers and the one-time bootstrap through Leases of the API server (needs
    /// --in-cluster or --kubeconfig).
    #[arg(long)]
    pub kubernetes: bool,
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

async fn serve(mut args: ManagerArgs) -> anyhow::Result<()> {
    // Before anything touches the data directory: a newer build's is refused untouched.
    shorthorn_consensus::data_format::check(&args.data_dir)?;
    // One client of the API server for discovery, the mirror and the credentials Secret.
    let kube = if args.kubernetes || args.services.kubeconfig.is_some() || args.services.in_cluster
    {
        Some(crate::daemon::kube_client(&args.services).await?)
    } else {
        None
    };
    let discovery = if let Some(client) = kube.clone().filter(|_| args.kubernetes) {
        if args.services.name.is_none() {
            let node = std::env::var("NODE_NAME").context(
                "--kubernetes needs the node name: set NODE_NAME (the downward API's spec.nodeName) or --name",
            )?;
            args.services.name = Some(node);
        }
        let advertise = args
            .advertise
            .clone()
            .unwrap_or_else(|| args.listen.clone());
        let node = args.services.name.clone().unwrap_or_default();
        Some(Discovery::new(
            client,
            &args.services.namespace,
            &node,
            &advertise,
        ))
    } else {
        None
    };
    let node_id = match args.node_id {
        Some(id) => id,
        None => kept_node_id(&args.data_dir)?,
    };
    let listener = crate::daemon::bind(&args.listen)
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
        node_id,
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
            tracing::info!(node = node_id, "restarted from the data directory");
        } else if let Some(join) = &args.join {
            join_group(&handle, join).await?;
        } else if let Some(discovery) = &discovery {
            match discovery.start().await {
                Start::Bootstrap => {
                    handle.bootstrap().await?;
                    tracing::info!(node = node_id, "bootstrapped a new group");
                    retry("marking the bootstrap Lease", || {
                        discovery.mark_bootstrapped()
                    })
                    .await;
                }
                Start::Join(peers) => join_any(&handle, discovery, peers).await?,
            }
        } else {
            handle.bootstrap().await?;
            tracing::info!(node = node_id, "bootstrapped a new group");
        }
        if let Some(discovery) = &discovery {
            retry("writing this manager's member Lease", || {
                discovery.announce()
            })
            .await;
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        started = started => match started {
            Ok(()) => match crate::daemon::start(&args.services, &handle, node_id, kube).await {
                Ok(mut services) => {
                    services.push(tokio::spawn(shorthorn_consensus::cluster_version::run(
                        handle.clone(),
                    )));
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

/// Joins through whichever member answers, re-reading the member Leases between rounds.
async fn join_any(
    handle: &Handle,
    discovery: &Discovery,
    mut peers: Vec<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        for peer in &peers {
            match handle.join(peer).await {
                Ok(status) => {
                    tracing::info!(node = handle.id(), leader = ?status.leader, "joined the group through {peer}");
                    return Ok(());
                }
                Err(err @ (Error::AlreadyMember { .. } | Error::Membership(_))) => {
                    return Err(anyhow::Error::new(err).context(format!("joining through {peer}")));
                }
                Err(err) => tracing::warn!("joining through {peer}: {err}; trying the next member"),
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no member of the group answered in 10 minutes (tried {peers:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Start::Join(found) = discovery.start().await {
            peers = found;
        }
    }
}

/// Retries an API server write until it succeeds (the API server may be restarting).
async fn retry<F, Fut>(what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut round = 0u32;
    while let Err(err) = op().await {
        if round.is_multiple_of(20) {
            tracing::warn!("{what}: {err:#}; retrying");
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node id kept in `DATA_DIR/node-id`, drawn at random (and made durable) the first
/// time: unique without coordination, and never reused by a wiped data directory.
fn kept_node_id(data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a node id", path.display()));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut seed = blake3::Hasher::new();
    seed.update(&std::process::id().to_le_bytes());
    seed.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    seed.update(data_dir.as_os_str().as_encoded_bytes());
    let bytes = seed.finalize();
    let id = (u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes")) >> 1).max(1);
    let tmp = data_dir.join("node-id.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    tracing::info!(node = id, "drew this manager's node id");
    Ok(id)
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
