//! `shorthorn engine`: the per-volume engine process.

#[derive(Debug, clap::Subcommand)]
pub enum EngineCommand {
    /// Serve one volume over NBD, writing to every replica [not built yet].
    Serve(super::NotBuilt),
}

pub fn run(cmd: EngineCommand) -> anyhow::Result<()> {
    match cmd {
        EngineCommand::Serve(_) => {
            anyhow::bail!("`shorthorn engine serve` is not built yet in this version")
        }
    }
}
