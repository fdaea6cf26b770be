//! The cluster version: which commands every manager of the group can read and decide
//! alike. A build supports the versions up to [`CLUSTER_VERSION`]; the log's state carries
//! the version the cluster runs ([`crate::State::cluster_version`]), raised by
//! [`crate::Request::RaiseClusterVersion`] once every manager runs a build that supports
//! it (the leader proposes that by itself, see the consensus crate). A command that an older
//! build could not decode, or would decide differently, names the cluster version it needs
//! ([`crate::Request::cluster_version_required`]) and is refused until the cluster runs it,
//! so that during a rolling upgrade no manager meets an entry it cannot apply.
//!
//! Longhorn has no such gate (its managers read CRDs); this follows CockroachDB's and
//! Kubernetes' "finalize after every member is upgraded".

use serde::{Deserialize, Serialize};

use crate::Rejection;

/// A cluster version. 1 is every build before cluster versions existed (and the version
/// of a state that never recorded one).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(transparent)]
pub struct ClusterVersion(pub u32);

impl ClusterVersion {
    /// The version of every build before cluster versions existed.
    pub const FIRST: ClusterVersion = ClusterVersion(1);
}

impl Default for ClusterVersion {
    fn default() -> Self {
        ClusterVersion::FIRST
    }
}

impl std::fmt::Display for ClusterVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The newest cluster version this build supports. Bump it when a release adds a command
/// (or a setting, or a field an older build would decide differently) that older builds
/// cannot apply, and make [`crate::Request::cluster_version_required`] name it.
///
/// 2: cluster versions exist (`RaiseClusterVersion`); the state snapshot may be format 12.
pub const CLUSTER_VERSION: ClusterVersion = ClusterVersion(2);

/// The rejection of a command that needs cluster version `required` while the cluster runs
/// `current` (409).
pub fn too_new(required: ClusterVersion, current: ClusterVersion) -> Rejection {
    Rejection::conflict(format!(
        "this needs cluster version {required}; the cluster runs version {current} until every \
         manager runs a build that supports it"
    ))
}

/// Refuses a command needing `required` on a state at `current`.
pub fn check(required: ClusterVersion, current: ClusterVersion) -> Result<(), Rejection> {
    if required > current {
        return Err(too_new(required, current));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Cluster;
    use crate::{Event, RejectionKind, Request};

    #[test]
    fn a_new_state_runs_cluster_version_1_and_every_first_release_request_needs_only_that() {
        let c = Cluster::with_attached_db();
        assert_eq!(c.state.cluster_version, ClusterVersion::FIRST);
        let request = Request::RaiseClusterVersion {
            version: CLUSTER_VERSION,
        };
        assert_eq!(request.cluster_version_required(), ClusterVersion::FIRST);
        let request = Request::DeleteVolume { name: "db".into() };
        assert_eq!(request.cluster_version_required(), ClusterVersion::FIRST);
    }

    #[test]
    fn the_cluster_version_rises_once_and_never_falls() {
        let mut c = Cluster::with_attached_db();
        let events = c.ok(Request::RaiseClusterVersion {
            version: ClusterVersion(2),
        });
        assert_eq!(
            events,
            vec![Event::ClusterVersionRaised {
                from: ClusterVersion(1),
                to: ClusterVersion(2)
            }]
        );
        assert_eq!(c.state.cluster_version, ClusterVersion(2));
        // Proposed twice (a new leader did not see the first yet): nothing happens.
        assert!(
            c.ok(Request::RaiseClusterVersion {
                version: ClusterVersion(2)
            })
            .is_empty()
        );
        let message = c.rejected(
            Request::RaiseClusterVersion {
                version: ClusterVersion(1),
            },
            RejectionKind::Conflict,
        );
        assert_eq!(
            message,
            "the cluster runs cluster version 2; it cannot go back to 1"
        );
    }

    #[test]
    fn a_request_needing_a_higher_cluster_version_is_refused_with_both_versions() {
        let rejection = check(ClusterVersion(2), ClusterVersion(1)).unwrap_err();
        assert_eq!(rejection.kind, RejectionKind::Conflict);
        assert_eq!(
            rejection.message,
            "this needs cluster version 2; the cluster runs version 1 until every manager runs \
             a build that supports it"
        );
        assert!(check(ClusterVersion(2), ClusterVersion(2)).is_ok());
        assert!(check(ClusterVersion(1), ClusterVersion(2)).is_ok());
    }

    #[test]
    fn a_state_without_a_cluster_version_reads_as_version_1() {
        let mut json = serde_json::to_value(crate::State::default()).unwrap();
        json.as_object_mut().unwrap().remove("cluster_version");
        let state: crate::State = serde_json::from_value(json).unwrap();
        assert_eq!(state.cluster_version, ClusterVersion::FIRST);
    }
}
