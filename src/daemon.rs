//! The services a manager runs beside its Raft member: the REST API and the node agent.

use std::path::PathBuf;

use anyhow::Context;
use shorthorn_consensus::Handle;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentConfig};
use crate::api::{Api, router};

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Serve the REST API on this address (host:port).
    #[arg(long)]
    pub api_listen: Option<String>,
    /// File holding the API bearer token (required with --api-listen).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Run the node agent with this disk directory for replicas.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// This node's name in the log (default: node-<node id>).
    #[arg(long)]
    pub name: Option<String>,
    /// Address the replica and engine processes of this node listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

/// Starts the REST API and the node agent as asked; returns their tasks.
pub async fn start(
    args: &ServiceArgs,
    handle: &Handle,
    member: u64,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("node-{member}"));
    let mut tasks = Vec::new();
    if let Some(listen) = &args.api_listen {
        let token_file = args
            .token_file
            .as_ref()
            .context("--api-listen needs --token-file")?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the token file {}", token_file.display()))?;
        let token = token.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the token file {} is empty",
            token_file.display()
        );
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("REST API listening on {listen}"))?;
        let app = router(Api::new(handle.clone(), token, &format!("manager/{name}")));
        tracing::info!(%listen, "REST API serving");
        tasks.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!("REST API stopped: {err}");
            }
        }));
    }
    if let Some(disk) = &args.disk {
        let config = AgentConfig {
            node: name,
            address: args.api_listen.clone().unwrap_or_default(),
            disk: std::path::absolute(disk).context("resolving the disk path")?,
            host: args.host.clone(),
            exe: std::env::current_exe().context("finding the shorthorn executable")?,
            member,
        };
        let agent = Agent::new(handle.clone(), config);
        tasks.push(tokio::spawn(async move {
            if let Err(err) = agent.run().await {
                tracing::error!("node agent stopped: {err:#}");
            }
        }));
    }
    Ok(tasks)
}
