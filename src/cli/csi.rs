//! `shorthorn csi`: runs the CSI driver on a unix socket, reaching the managers through the
//! CLI's own HTTP client (retries across managers, idempotency keys).

use std::sync::Arc;

use serde_json::Value;
use shorthorn_csi::{ApiFailure, Driver, ManagerApi, Mode};

use super::client::{Client, Failure, Target};

#[derive(Debug, clap::Args)]
pub struct CsiArgs {
    #[command(flatten)]
    target: Target,
    /// The CSI endpoint, `unix:///path/to/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// The Shorthorn node this plugin runs on (its node service attaches volumes there).
    #[arg(long, env = "SHORTHORN_NODE_ID")]
    node_id: String,
    /// Which services to serve.
    #[arg(long, value_enum, default_value_t = CsiMode::All)]
    mode: CsiMode,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CsiMode {
    Controller,
    Node,
    All,
}

impl ManagerApi for Client {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ApiFailure> {
        let result = match method {
            "GET" => self.get(path),
            "POST" => self.post(path, body.unwrap_or(Value::Null)),
            "PUT" => self.put(path, body.unwrap_or(Value::Null)),
            "DELETE" => self.delete(path),
            other => {
                return Err(ApiFailure {
                    status: Some(400),
                    message: format!("unknown method {other}"),
                });
            }
        };
        result.map_err(|err| match err.downcast_ref::<Failure>() {
            Some(f) => ApiFailure {
                status: Some(f.status),
                message: f.message.clone(),
            },
            None => ApiFailure {
                status: None,
                message: format!("no manager answered: {err:#}"),
            },
        })
    }
}

pub fn run(args: CsiArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.target)?;
    let driver = Driver {
        api: Arc::new(client),
        node_id: args.node_id,
        mode: match args.mode {
            CsiMode::Controller => Mode::Controller,
            CsiMode::Node => Mode::Node,
            CsiMode::All => Mode::All,
        },
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        shorthorn_csi::serve(driver, &args.endpoint, shutdown).await
    })?;
    Ok(())
}
