//! `shorthorn manager`: one member of the Raft group of managers.

use std::path::PathBuf;

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
}

pub fn run(_args: ManagerArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shorthorn manager` is not built yet in this version")
}
