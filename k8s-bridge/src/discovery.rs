//! How in-cluster managers find each other and bootstrap the Raft group exactly once.
//!
//! Two kinds of `coordination.k8s.io/v1` Lease in the manager's namespace:
//! - `shorthorn-bootstrap`, created by whichever manager gets there first. Creation is the
//!   compare-and-swap: the API server admits one create of a name and answers the others
//!   409. Its holder bootstraps the group and then marks it `shorthorn.io/bootstrapped`;
//!   from then on nobody bootstraps again, whatever happens to the holder's data.
//! - `shorthorn-member.<node>`, one per manager that is in the group, giving the address
//!   its Raft service is reached at. A new manager joins through any of them.
//!
//! Leases, not pods of the DaemonSet: a pod being listed says nothing about whether it is
//! in the group, while a member Lease is written only once it is.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::crd::object_name;

/// The name of the Lease whose creation decides who bootstraps.
pub const BOOTSTRAP_LEASE: &str = "shorthorn-bootstrap";
/// The annotation holding a manager's Raft address.
pub const ADDRESS_ANNOTATION: &str = "shorthorn.io/raft-address";
/// Set on the bootstrap Lease once the group exists.
pub const BOOTSTRAPPED_ANNOTATION: &str = "shorthorn.io/bootstrapped";
/// The label every member Lease carries.
pub const MEMBER_LABEL: &str = "shorthorn.io/raft-member";

const FIELD_MANAGER: &str = "shorthorn-manager";

/// What a manager with an empty data directory does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Bootstrap a new group: this manager holds the bootstrap Lease.
    Bootstrap,
    /// Join through one of these Raft addresses (members first, then the bootstrapper).
    Join(Vec<String>),
}

/// The Leases of one namespace, seen by the manager of one node.
#[derive(Clone)]
pub struct Discovery {
    leases: Api<Lease>,
    node: String,
    address: String,
}

impl Discovery {
    pub fn new(client: Client, namespace: &str, node: &str, address: &str) -> Self {
        Discovery {
            leases: Api::namespaced(client, namespace),
            node: node.to_string(),
            address: address.to_string(),
        }
    }

    /// Decides between bootstrapping and joining; waits while the API server is unreachable
    /// or nobody can be joined yet.
    pub async fn start(&self) -> Start {
        let mut round = 0u32;
        loop {
            match self.try_start().await {
                Ok(Some(start)) => return start,
                Ok(None) if round.is_multiple_of(20) => {
                    tracing::info!("waiting for the bootstrapping manager to announce itself")
                }
                Err(err) if round.is_multiple_of(20) => {
                    tracing::warn!("reading the bootstrap Lease: {err:#}; retrying")
                }
                _ => {}
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn try_start(&self) -> anyhow::Result<Option<Start>> {
        let Some(lease) = self.leases.get_opt(BOOTSTRAP_LEASE).await? else {
            let claim = self.lease(BOOTSTRAP_LEASE, BTreeMap::new());
            return match self.leases.create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    tracing::info!(node = %self.node, "won the bootstrap Lease");
                    Ok(Some(Start::Bootstrap))
                }
                // Somebody else created it first: read theirs on the next round.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
                Err(err) => Err(err.into()),
            };
        };
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let bootstrapped =
            annotations.get(BOOTSTRAPPED_ANNOTATION).map(String::as_str) == Some("true");
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        let mut peers = self.member_addresses().await?;
        if holder.as_deref() == Some(self.node.as_str()) && !bootstrapped && peers.is_empty() {
            // This node won earlier and stopped before the group existed.
            tracing::info!(node = %self.node, "holding the bootstrap Lease of a group not yet bootstrapped");
            return Ok(Some(Start::Bootstrap));
        }
        if let Some(address) = annotations.get(ADDRESS_ANNOTATION)
            && *address != self.address
            && !peers.contains(address)
        {
            peers.push(address.clone());
        }
        Ok((!peers.is_empty()).then_some(Start::Join(peers)))
    }

    /// The Raft addresses of the other members, from their Leases.
    pub async fn member_addresses(&self) -> anyhow::Result<Vec<String>> {
        let list = self
            .leases
            .list(&ListParams::default().labels(&format!("{MEMBER_LABEL}=true")))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|lease| {
                lease
                    .metadata
                    .annotations
                    .and_then(|mut a| a.remove(ADDRESS_ANNOTATION))
            })
            .filter(|address| *address != self.address)
            .collect())
    }

    /// Records that the group exists: after this, no manager bootstraps again.
    pub async fn mark_bootstrapped(&self) -> anyhow::Result<()> {
        let patch = serde_json::json!({
            "metadata": {"annotations": {BOOTSTRAPPED_ANNOTATION: "true"}}
        });
        self.leases
            .patch(
                BOOTSTRAP_LEASE,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Writes this manager's member Lease: it is in the group, at this address.
    pub async fn announce(&self) -> anyhow::Result<()> {
        let labels = BTreeMap::from([(MEMBER_LABEL.to_string(), "true".to_string())]);
        let name = member_lease_name(&self.node);
        let lease = self.lease(&name, labels);
        self.leases
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await?;
        Ok(())
    }

    fn lease(&self, name: &str, labels: BTreeMap<String, String>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    ADDRESS_ANNOTATION.to_string(),
                    self.address.clone(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            }),
        }
    }
}

/// The member Lease of a node (a valid object name whatever the node is called).
pub fn member_lease_name(node: &str) -> String {
    object_name(&["shorthorn-member", node])
}
