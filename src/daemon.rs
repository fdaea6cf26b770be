//! The services a manager runs beside its Raft member: the REST API and the node agent.

use std::path::PathBuf;

use anyhow::Context;
use shorthorn_consensus::Handle;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentConfig};
use crate::api::{Api, router};
use crate::credentials::CredentialSource;

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Serve the REST API on this address (host:port).
    #[arg(long)]
    pub api_listen: Option<String>,
    /// File holding the API bearer token (required with --api-listen).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Run the node agent with this disk directory for replicas (implies --agent).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Run the node agent; without --disk its disk is the cluster's `defaultDataPath`
    /// setting, read from the log when the agent starts.
    #[arg(long)]
    pub agent: bool,
    /// This node's name in the log (default: node-<node id>).
    #[arg(long)]
    pub name: Option<String>,
    /// Address the replica and engine processes of this node listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// File of `KEY=value` lines with the backup target's credentials (Longhorn's keys:
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINTS, AWS_CERT,
    /// VIRTUAL_HOSTED_STYLE); without it they come from this process's environment.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
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
    let credentials = CredentialSource::new(args.credentials.clone());
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
        let api = Api::new(handle.clone(), token, &format!("manager/{name}"))
            .with_credentials(credentials.clone());
        let app = router(api);
        tracing::info!(%listen, "REST API serving");
        tasks.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!("REST API stopped: {err}");
            }
        }));
    }
    if args.agent || args.disk.is_some() {
        let disk = match &args.disk {
            Some(disk) => Some(std::path::absolute(disk).context("resolving the disk path")?),
            None => None,
        };
        let mut config = AgentConfig {
            node: name,
            address: args.api_listen.clone().unwrap_or_default(),
            disk: disk.clone().unwrap_or_default(),
            host: args.host.clone(),
            exe: std::env::current_exe().context("finding the shorthorn executable")?,
            member,
            credentials,
        };
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            if disk.is_none() {
                match default_data_path(&handle).await {
                    Ok(path) => config.disk = path,
                    Err(err) => {
                        tracing::error!("node agent not started: {err:#}");
                        return;
                    }
                }
            }
            if let Err(err) = Agent::new(handle, config).run().await {
                tracing::error!("node agent stopped: {err:#}");
            }
        }));
    }
    Ok(tasks)
}

/// The cluster's `defaultDataPath` setting, waiting (up to two minutes) for the log to
/// answer: a joining manager may not have a leader yet.
async fn default_data_path(handle: &Handle) -> anyhow::Result<PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match handle
            .read(|state| state.settings.default_data_path.clone())
            .await
        {
            Ok(path) => {
                tracing::info!(%path, "node agent disk from the defaultDataPath setting");
                return Ok(PathBuf::from(path));
            }
            Err(err) if std::time::Instant::now() > deadline => {
                return Err(err).context("reading the defaultDataPath setting");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}
