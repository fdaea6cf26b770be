//! The services a manager runs beside its Raft member: the REST API and the node agent.

use std::path::PathBuf;

use anyhow::Context;
use shorthorn_consensus::Handle;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentConfig};
use crate::api::{Api, router};
use crate::credentials::CredentialSource;
use crate::metrics::{LocalProcesses, Metrics};

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
    /// Mirror the log into the shorthorn.io objects of a Kubernetes API server reached with
    /// this kubeconfig (only the Raft leader writes).
    #[arg(long, env = "SHORTHORN_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Mirror into the API server of the cluster this manager runs in (its service
    /// account), instead of --kubeconfig.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub in_cluster: bool,
    /// The namespace of the mirrored objects.
    #[arg(long, env = "POD_NAMESPACE", default_value = "shorthorn-system")]
    pub namespace: String,
    /// A YAML file of `key: value` settings (the chart's `defaultSettings`, Longhorn's
    /// spellings) applied once the log has a leader, to every setting still at its built-in
    /// default: a value changed since with `setting set` or `kubectl` is kept.
    #[arg(long)]
    pub default_settings: Option<PathBuf>,
    /// Most writes per second the mirror makes to the API server.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub kube_writes_per_second: u32,
}

/// Starts the REST API, the node agent and (with `kube`, the API server client) the mirror
/// and the credentials Secret follower, as asked; returns their tasks.
pub async fn start(
    args: &ServiceArgs,
    handle: &Handle,
    member: u64,
    kube: Option<kube::Client>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("node-{member}"));
    let mut tasks = Vec::new();
    let mut credentials = CredentialSource::new(args.credentials.clone());
    if let Some(client) = &kube
        && let Some(slot) = credentials.following_secret()
    {
        tasks.push(tokio::spawn(crate::credentials::follow_secret(
            slot,
            handle.clone(),
            client.clone(),
            args.namespace.clone(),
        )));
    }
    // What this node's agent runs, for the API's /metrics.
    let local = LocalProcesses::default();
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
        let listener = bind(listen)
            .await
            .with_context(|| format!("REST API listening on {listen}"))?;
        let metrics = Metrics::new(handle.clone(), &name, local.clone());
        let api = Api::new(handle.clone(), token, &format!("manager/{name}"))
            .with_credentials(credentials.clone())
            .with_metrics(std::sync::Arc::new(metrics));
        let app = router(api);
        tracing::info!(%listen, "REST API serving");
        tasks.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!("REST API stopped: {err}");
            }
        }));
    }
    if let Some(path) = &args.default_settings {
        let wanted = read_default_settings(path)?;
        let handle = handle.clone();
        let proposer = format!("manager/{name}/default-settings");
        tasks.push(tokio::spawn(async move {
            if let Err(err) = apply_default_settings(&handle, &wanted, &proposer).await {
                tracing::error!("default settings not applied: {err:#}");
            }
        }));
    }
    if let Some(client) = kube {
        let config = shorthorn_k8s_bridge::mirror::MirrorConfig {
            namespace: args.namespace.clone(),
            node: name.clone(),
            writes_per_second: args.kube_writes_per_second,
        };
        tasks.push(tokio::spawn(shorthorn_k8s_bridge::mirror::run(
            handle.clone(),
            client,
            config,
        )));
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
            local,
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

/// The `key: value` pairs of a default-settings file, each checked (unknown keys and bad
/// values stop the manager with the key named: a typo in values.yaml should not go unseen).
/// How long a port still held by the process this one replaces is waited for.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds `addr`, waiting up to [`BIND_PATIENCE`] while it is in use: a manager started
/// again at once after a crash can find its ports still held by the old process, whose
/// threads are still exiting (or by a connection's socket the kernel has not let go yet).
/// Any other error, or a port still taken after that, fails at once.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(%addr, "the address is in use; retrying for up to 30 s");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn read_default_settings(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the default settings {}", path.display()))?;
    let map: std::collections::BTreeMap<String, serde_yaml_ng::Value> = if text.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not a YAML map of settings", path.display()))?
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let value = match value {
            serde_yaml_ng::Value::Null => continue,
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            other => anyhow::bail!(
                "{}: setting {key} has a value that is not a string, number or boolean: {other:?}",
                path.display()
            ),
        };
        let (canonical, value) = shorthorn_state::Settings::validate(&key, &value)
            .map_err(|r| anyhow::anyhow!("{}: {}", path.display(), r.message))?;
        out.push((canonical.to_string(), value));
    }
    Ok(out)
}

/// Proposes every wanted setting whose current value is still the built-in default.
async fn apply_default_settings(
    handle: &Handle,
    wanted: &[(String, String)],
    proposer: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let settings = loop {
        match handle.read(|state| state.settings.clone()).await {
            Ok(settings) => break settings,
            Err(err) if std::time::Instant::now() > deadline => {
                return Err(err).context("reading the settings");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    };
    let defaults = shorthorn_state::Settings::default();
    let mut applied = 0;
    for (key, value) in wanted {
        let current = settings.get(key);
        if current.as_deref() == Some(value.as_str()) || current != defaults.get(key) {
            continue;
        }
        let request = shorthorn_state::Request::SetSetting {
            key: key.clone(),
            value: value.clone(),
        };
        let at = shorthorn_state::Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
        let command = shorthorn_state::Command::new(at, proposer, request);
        // Retried under the same command id while the group elects (a retry that lands
        // twice changes nothing).
        loop {
            match handle.propose(command.clone()).await {
                Ok(_) => break,
                Err(err) if std::time::Instant::now() < deadline => {
                    tracing::debug!("setting {key}: {err}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err).with_context(|| format!("setting {key} to {value:?}")),
            }
        }
        applied += 1;
    }
    tracing::info!(applied, of = wanted.len(), "default settings applied");
    Ok(())
}

/// A client of the API server the manager mirrors into.
pub async fn kube_client(args: &ServiceArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context("reading the in-cluster service account")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
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
