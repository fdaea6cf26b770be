//! Which build each manager runs, and the leader's raising of the cluster version once
//! every member supports a newer one (see [`shorthorn_state::ClusterVersion`]).
//!
//! A member reports its [`Build`] in its [`crate::Status`]. Builds before cluster versions
//! report none, and a member that does not answer cannot be counted on: both count as
//! cluster version 1. The leader raises the version only to what every member (voters and
//! learners: both apply every entry) supports, so no member ever receives a command it
//! cannot decode; a manager that joins later with an older build is refused
//! ([`crate::Handle::add_member`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shorthorn_state::{CLUSTER_VERSION, ClusterVersion, Command, Request, Timestamp};

use crate::Handle;

/// What a manager's build reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// The Shorthorn version of the binary.
    pub version: String,
    /// The newest cluster version the build supports.
    pub cluster_version: ClusterVersion,
    /// The state snapshot formats it reads (oldest, newest).
    pub state_formats: (u32, u32),
    /// The newest data directory format it reads and the one it writes.
    pub data_format: u32,
}

impl Build {
    /// This binary's build.
    pub fn this() -> Build {
        Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cluster_version: CLUSTER_VERSION,
            state_formats: (
                shorthorn_state::OLDEST_FORMAT_VERSION,
                shorthorn_state::FORMAT_VERSION,
            ),
            data_format: crate::data_format::DATA_FORMAT,
        }
    }

    /// The cluster version a member supports, given what it reported: 1 for a build before
    /// cluster versions (no report).
    pub fn supported(build: Option<&Build>) -> ClusterVersion {
        build.map_or(ClusterVersion::FIRST, |b| b.cluster_version)
    }
}

/// How often the leader looks whether the cluster version can rise.
pub const RAISE_EVERY: Duration = Duration::from_secs(2);

/// On whichever member leads: raises the cluster version whenever every member supports a
/// newer one, until the cluster runs this build's [`CLUSTER_VERSION`]. Runs until the
/// member stops; a failed round is tried again at the next.
pub async fn run(handle: Handle) {
    let proposer = format!("manager/{}/cluster-version", handle.id());
    loop {
        tokio::time::sleep(RAISE_EVERY).await;
        match raise_once(&handle, &proposer).await {
            Ok(Some(version)) => {
                tracing::info!(%version, "every manager supports it: cluster version raised")
            }
            Ok(None) => {}
            Err(err) => tracing::debug!("cluster version not raised: {err}"),
        }
    }
}

/// One round of [`run`]: the version raised to, if any.
pub async fn raise_once(
    handle: &Handle,
    proposer: &str,
) -> Result<Option<ClusterVersion>, crate::Error> {
    let status = handle.status();
    if status.leader != Some(handle.id()) {
        return Ok(None);
    }
    let current = handle.read_local(|state| state.cluster_version);
    if current >= CLUSTER_VERSION {
        return Ok(None);
    }
    let target = handle.cluster_version_supported().await;
    if target <= current {
        return Ok(None);
    }
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let command = Command::new(
        Timestamp(at),
        proposer,
        Request::RaiseClusterVersion { version: target },
    );
    handle.propose(command).await?;
    Ok(Some(target))
}
