//! `shorthorn replica`: serve one replica of a volume from a directory.

use std::path::PathBuf;

use anyhow::Context;
use shorthorn_dataplane::address::{Address, Listener};
use shorthorn_dataplane::replica::Replica;
use shorthorn_dataplane::replica::server::ReplicaServer;
use shorthorn_dataplane::volume::ByteSize;

#[derive(Debug, clap::Subcommand)]
pub enum ReplicaCommand {
    /// Serve a replica directory over the engine <-> replica wire protocol.
    Serve(ServeArgs),
    /// List the replicas the cluster knows.
    Ls(super::client::Target),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The replica directory; created with an empty volume if it holds none.
    #[arg(long)]
    dir: PathBuf,
    /// Volume size (e.g. 10G); required for a new replica, checked against an existing one.
    #[arg(long)]
    size: Option<ByteSize>,
    /// Where engines connect: unix:PATH or [tcp:]HOST:PORT.
    #[arg(long)]
    listen: Address,
    /// A token engines must present in their hello; any token is accepted when unset.
    #[arg(long, env = "SHORTHORN_REPLICA_TOKEN")]
    token: Option<String>,
}

pub fn run(cmd: ReplicaCommand) -> anyhow::Result<()> {
    match cmd {
        ReplicaCommand::Serve(args) => serve(args),
        ReplicaCommand::Ls(target) => super::volume::replicas(&target),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let size = args.size.map(|s| s.volume_size()).transpose()?;
    let replica = Replica::open(&args.dir, size)
        .with_context(|| format!("opening replica in {}", args.dir.display()))?;
    tracing::info!(dir = %args.dir.display(), size = replica.size(), epoch = %replica.epoch(), listen = %args.listen, "replica serving");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = Listener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        ReplicaServer::new(replica, args.token)
            .serve(listener)
            .await?;
        Ok(())
    })
}
