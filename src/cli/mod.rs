//! The command line: one clap tree for every daemon and client subcommand.
//! None of the subcommands panics on bad input: each fails with a message and a non-zero exit.

mod backup;
mod check;
mod client;
mod csi;
mod dev;
mod device;
mod engine;
mod job;
mod manager;
mod progress;
mod replica;
mod upgrade;
mod volume;
mod watch;

use clap::{Parser, Subcommand, ValueEnum};

/// Shorthorn: replicated block storage for Kubernetes on one Raft-replicated event log.
#[derive(Debug, Parser)]
#[command(name = "shorthorn", version, propagate_version = true)]
pub struct Cli {
    /// How log lines are written to stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SHORTHORN_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local 3-manager cluster on loopback, no Kubernetes needed.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Run a manager: a member of the Raft group, the REST API and the node agent.
    Manager(manager::ManagerArgs),
    /// Serve one replica of a volume from a directory.
    #[command(subcommand)]
    Replica(replica::ReplicaCommand),
    /// Serve one attached volume: the engine that fans writes out to the replicas.
    #[command(subcommand)]
    Engine(engine::EngineCommand),
    /// Serve one attached volume as a kernel block device (started by the node agent).
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Create, list, attach, detach, expand and delete volumes.
    Volume(VolumeArgs),
    /// Create, list, delete and revert to snapshots of a volume.
    Snapshot(SnapshotArgs),
    /// Back up volumes to S3 or a directory, list, verify and delete backups.
    Backup(BackupArgs),
    /// Recurring snapshot and backup jobs.
    Job(JobArgs),
    /// List nodes with their disks and usage.
    Node(NodeArgs),
    /// Read and change cluster settings.
    Setting(SettingArgs),
    /// Upgrade volumes' engines and replicas to a new binary while they stay attached.
    Upgrade(UpgradeArgs),
    /// Follow the cluster's event stream: one line per event of the log.
    Watch(watch::WatchArgs),
    /// Run the CSI driver (controller and node services) on a unix socket.
    Csi(csi::CsiArgs),
    /// Print the shorthorn.io CustomResourceDefinitions as YAML (the chart's crds/).
    Crds,
    /// Check this node before installing: block frontends, mount propagation, SEEK_DATA on
    /// the data path, filesystem tools, root.
    Check(check::CheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start 3 managers on 127.0.0.1 with their own data and disk directories.
    Up(dev::UpArgs),
    /// Stop the local cluster started by `dev up --detach`.
    Down(dev::DownArgs),
}

#[derive(Debug, clap::Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: volume::VolumeCommand,
}

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: volume::SnapshotCommand,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: backup::BackupCommand,
}

#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: job::JobCommand,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: upgrade::UpgradeCommand,
}

#[derive(Debug, clap::Args)]
pub struct SettingArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: volume::SettingCommand,
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    target: client::Target,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their disks and usage.
    Ls,
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHORTHORN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: daemons log to files that tests and people grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Manager(args) => manager::run(args),
        Command::Replica(cmd) => replica::run(cmd),
        Command::Engine(cmd) => engine::run(cmd),
        Command::Device(cmd) => device::run(cmd),
        Command::Dev(DevCommand::Up(args)) => dev::up(args),
        Command::Dev(DevCommand::Down(args)) => dev::down(args),
        Command::Volume(args) => volume::volume(args.command, &args.target),
        Command::Snapshot(args) => volume::snapshot(args.command, &args.target),
        Command::Node(args) => match args.command {
            NodeCommand::Ls => volume::nodes(&args.target),
        },
        Command::Setting(args) => volume::setting(args.command, &args.target),
        Command::Backup(args) => backup::backup(args.command, &args.target),
        Command::Job(args) => job::job(args.command, &args.target),
        Command::Upgrade(args) => upgrade::upgrade(args.command, &args.target),
        Command::Watch(args) => watch::watch(args),
        Command::Csi(args) => csi::run(args),
        Command::Check(args) => check::run(args),
        Command::Crds => {
            print!("{}", shorthorn_k8s_bridge::crd::crds_yaml());
            Ok(())
        }
    }
}
