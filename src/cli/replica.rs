//! `shorthorn replica`: serve one replica of a volume from a directory.

#[derive(Debug, clap::Subcommand)]
pub enum ReplicaCommand {
    /// Serve a replica directory over the engine <-> replica wire protocol [not built yet].
    Serve(super::NotBuilt),
    /// List the replicas the cluster knows [not built yet].
    Ls(super::NotBuilt),
}

pub fn run(cmd: ReplicaCommand) -> anyhow::Result<()> {
    match cmd {
        ReplicaCommand::Serve(_) => {
            anyhow::bail!("`shorthorn replica serve` is not built yet in this version")
        }
        ReplicaCommand::Ls(_) => {
            anyhow::bail!("`shorthorn replica ls` is not built yet in this version")
        }
    }
}
