//! `shorthorn engine`: the per-volume engine process.

use std::time::Duration;

use anyhow::Context;
use shorthorn_dataplane::address::{Address, Listener};
use shorthorn_dataplane::engine::{Engine, EngineConfig};
use shorthorn_dataplane::volume::{ByteSize, Epoch, VolumeName};

#[derive(Debug, clap::Subcommand)]
pub enum EngineCommand {
    /// Serve one volume over NBD, writing to every replica.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The volume name; also the NBD export name.
    #[arg(long)]
    volume: String,
    /// Volume size (e.g. 10G); every replica must have this size.
    #[arg(long)]
    size: ByteSize,
    /// The engine's epoch; replicas refuse engines older than the newest they accepted.
    #[arg(long)]
    epoch: u64,
    /// A replica address (unix:PATH or [tcp:]HOST:PORT); repeat for each replica.
    #[arg(long = "replica", required = true)]
    replicas: Vec<Address>,
    /// Where NBD clients connect: unix:PATH or tcp:HOST:PORT. Without it the engine serves
    /// no frontend, only its control API (a volume being restored).
    #[arg(long)]
    nbd: Option<Address>,
    /// Where the gRPC control API listens: unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    control: Option<Address>,
    /// Seconds a replica may take to answer before it is marked failed.
    #[arg(long, default_value_t = 8)]
    timeout: u64,
    /// The token presented to replicas.
    #[arg(long, env = "SHORTHORN_REPLICA_TOKEN", default_value = "")]
    token: String,
}

pub fn run(cmd: EngineCommand) -> anyhow::Result<()> {
    match cmd {
        EngineCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = EngineConfig {
        volume: VolumeName::new(&args.volume)?,
        size: args.size.volume_size()?,
        epoch: Epoch(args.epoch),
        token: args.token,
        replicas: args.replicas,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let engine = Engine::start(config).await.context("starting the engine")?;
        if let Some(control) = &args.control {
            let listener = Listener::bind(control)
                .await
                .with_context(|| format!("control listener on {control}"))?;
            let engine = engine.clone();
            tokio::spawn(async move {
                if let Err(e) = shorthorn_dataplane::control::serve(engine, listener).await {
                    tracing::error!(error = %e, "control endpoint stopped");
                }
            });
        }
        let Some(nbd) = &args.nbd else {
            tracing::info!(volume = %engine.volume, epoch = %engine.epoch, "engine serving with no frontend");
            std::future::pending::<()>().await;
            return Ok(());
        };
        let listener = Listener::bind(nbd)
            .await
            .with_context(|| format!("nbd listener on {nbd}"))?;
        tracing::info!(volume = %engine.volume, epoch = %engine.epoch, nbd = %nbd, "engine serving");
        shorthorn_dataplane::nbd::serve(engine, listener).await?;
        Ok(())
    })
}
