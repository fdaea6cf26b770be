//! The replica scheduler: picks a (node, disk) for each missing replica of a volume.
//!
//! Rules, in order:
//! - only schedulable nodes and disks, whose tags include the volume's node and disk selectors;
//! - capacity: bytes scheduled on a disk stay within
//!   `(capacity − reserved) × storageOverProvisioningPercentage / 100`, and a disk whose free
//!   space is at or below `storageMinimalAvailablePercentage` of its capacity takes nothing;
//! - anti-affinity between replicas of one volume on node, zone and disk: hard rules filter
//!   candidates, soft rules (settings `replica*SoftAntiAffinity`) only rank them. A node with
//!   no zone is a zone of its own;
//! - among what is left: the attach node first when data locality is best-effort, then fewer
//!   anti-affinity conflicts, then not the node whose replica was just replaced, then the least
//!   scheduled bytes, then node and disk id (so ties
//!   break the same way on every manager).
//!
//! It is pure and works on one decision at a time; the bytes it places during a decision are
//! kept in an overlay so that several placements in one command see each other.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{Bytes, State};

/// Where one replica goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: String,
    pub disk: String,
}

/// What a volume needs placed.
pub(crate) struct Demand<'a> {
    pub size: Bytes,
    pub node_selector: &'a BTreeSet<String>,
    pub disk_selector: &'a BTreeSet<String>,
    /// The node that should get a replica (best-effort data locality), if any.
    pub local_node: Option<&'a str>,
    /// (node, disk) of every replica the volume keeps, in any mode.
    pub existing: Vec<Placement>,
    /// Nodes whose replica of this volume was just removed: used only when nothing else fits.
    pub avoid: Vec<String>,
}

/// Placements of one decision, on top of the state.
pub(crate) struct Scheduler<'a> {
    state: &'a State,
    /// Bytes placed (+) or freed (−) on (node, disk) by this decision so far; a handful of
    /// entries at most, so a list beats a map (and needs no key allocation per lookup).
    overlay: Vec<(String, String, i128)>,
}

/// How a candidate disk ranks, smaller first: (locality miss, node conflict, zone conflict,
/// disk conflict, node just lost a replica of the volume, scheduled bytes).
type Rank = (bool, bool, bool, bool, bool, i128);

/// Why no candidate was left, counted over every node and disk looked at.
#[derive(Default)]
struct Tally {
    nodes: usize,
    nodes_unschedulable: usize,
    nodes_down: usize,
    nodes_missing_tags: usize,
    blocked_by_node: usize,
    blocked_by_zone: usize,
    candidate_nodes: usize,
    disks_unschedulable: usize,
    disks_missing_tags: usize,
    disks_full: usize,
    disks_low_space: usize,
    blocked_by_disk: usize,
}

impl<'a> Scheduler<'a> {
    pub fn new(state: &'a State) -> Self {
        Self {
            state,
            overlay: Vec::new(),
        }
    }

    /// Bytes on (node, disk) in the state plus this decision's overlay.
    fn scheduled(&self, node: &str, disk: &str, base: Bytes) -> i128 {
        let extra: i128 = self
            .overlay
            .iter()
            .filter(|(n, d, _)| n == node && d == disk)
            .map(|(_, _, bytes)| bytes)
            .sum();
        i128::from(base) + extra
    }

    fn adjust(&mut self, node: &str, disk: &str, bytes: i128) {
        self.overlay
            .push((node.to_string(), disk.to_string(), bytes));
    }

    /// Records that this decision frees `size` bytes on (node, disk).
    pub fn release(&mut self, node: &str, disk: &str, size: Bytes) {
        self.adjust(node, disk, -i128::from(size));
    }

    /// Places up to `count` replicas. Returns the placements it found and, when it found
    /// fewer than `count`, the reason.
    pub fn place(&mut self, demand: &Demand<'_>, count: usize) -> (Vec<Placement>, Option<String>) {
        let mut existing = demand.existing.clone();
        let mut placed = Vec::new();
        for _ in 0..count {
            match self.place_one(demand, &existing) {
                Ok(placement) => {
                    self.adjust(&placement.node, &placement.disk, i128::from(demand.size));
                    existing.push(placement.clone());
                    placed.push(placement);
                }
                Err(reason) => return (placed, Some(reason)),
            }
        }
        (placed, None)
    }

    fn place_one(&self, demand: &Demand<'_>, existing: &[Placement]) -> Result<Placement, String> {
        let settings = &self.state.settings;
        let taken_zones: BTreeSet<&str> = existing
            .iter()
            .filter_map(|p| self.state.nodes.get(&p.node))
            .filter(|n| !n.zone.is_empty())
            .map(|n| n.zone.as_str())
            .collect();
        let mut tally = Tally::default();
        let mut best: Option<(Rank, &str, &str)> = None;

        for node in self.state.nodes.values() {
            tally.nodes += 1;
            if !node.ready {
                tally.nodes_down += 1;
                continue;
            }
            if !node.schedulable {
                tally.nodes_unschedulable += 1;
                continue;
            }
            if !demand.node_selector.is_subset(&node.tags) {
                tally.nodes_missing_tags += 1;
                continue;
            }
            tally.candidate_nodes += 1;
            let node_conflict = existing.iter().any(|p| p.node == node.id);
            if node_conflict && !settings.replica_soft_anti_affinity {
                tally.blocked_by_node += 1;
                continue;
            }
            let zone_conflict = !node.zone.is_empty() && taken_zones.contains(node.zone.as_str());
            if zone_conflict && !settings.replica_zone_soft_anti_affinity {
                tally.blocked_by_zone += 1;
                continue;
            }
            let locality_miss = demand.local_node.is_some_and(|local| local != node.id);
            for disk in node.disks.values() {
                if !disk.schedulable {
                    tally.disks_unschedulable += 1;
                    continue;
                }
                if !demand.disk_selector.is_subset(&disk.tags) {
                    tally.disks_missing_tags += 1;
                    continue;
                }
                let disk_conflict = existing
                    .iter()
                    .any(|p| p.node == node.id && p.disk == disk.id);
                if disk_conflict && !settings.replica_disk_soft_anti_affinity {
                    tally.blocked_by_disk += 1;
                    continue;
                }
                if !disk.has_minimal_available(settings) {
                    tally.disks_low_space += 1;
                    continue;
                }
                let scheduled = self.scheduled(&node.id, &disk.id, disk.scheduled);
                if scheduled + i128::from(demand.size)
                    > i128::from(disk.schedulable_limit(settings))
                {
                    tally.disks_full += 1;
                    continue;
                }
                let avoided = demand.avoid.contains(&node.id);
                let key = (
                    locality_miss,
                    node_conflict,
                    zone_conflict,
                    disk_conflict,
                    avoided,
                    scheduled,
                );
                if best.as_ref().is_none_or(|(best_key, ..)| key < *best_key) {
                    best = Some((key, &node.id, &disk.id));
                }
            }
        }
        match best {
            Some((_, node, disk)) => Ok(Placement {
                node: node.to_string(),
                disk: disk.to_string(),
            }),
            None => Err(tally.explain(self.state, demand)),
        }
    }
}

impl Tally {
    fn explain(&self, state: &State, demand: &Demand<'_>) -> String {
        let settings = &state.settings;
        if self.nodes == 0 {
            return "no nodes registered".to_string();
        }
        let mut why = Vec::new();
        // Nodes holding a replica also sit in a taken zone: name the zone rule when both block.
        if self.blocked_by_node > 0 && self.blocked_by_zone == 0 {
            why.push(format!(
                "hard node anti-affinity, only {} schedulable node{}",
                self.candidate_nodes,
                plural(self.candidate_nodes)
            ));
        }
        if self.blocked_by_zone > 0 {
            // Counted here, on the failure path only, to keep placement allocation-free.
            let zones: BTreeSet<&str> = state
                .nodes
                .values()
                .filter(|n| n.schedulable && demand.node_selector.is_subset(&n.tags))
                .map(|n| {
                    if n.zone.is_empty() {
                        n.id.as_str()
                    } else {
                        n.zone.as_str()
                    }
                })
                .collect();
            why.push(format!(
                "hard zone anti-affinity, only {} zone{} with schedulable nodes",
                zones.len(),
                plural(zones.len())
            ));
        }
        if self.blocked_by_disk > 0 {
            why.push(format!(
                "hard disk anti-affinity on {} disk{}",
                self.blocked_by_disk,
                plural(self.blocked_by_disk)
            ));
        }
        if self.nodes_down > 0 {
            why.push(format!(
                "{} node{} down",
                self.nodes_down,
                plural(self.nodes_down)
            ));
        }
        if self.nodes_unschedulable > 0 {
            why.push(format!(
                "{} node{} unschedulable",
                self.nodes_unschedulable,
                plural(self.nodes_unschedulable)
            ));
        }
        if self.nodes_missing_tags > 0 {
            why.push(format!(
                "{} node{} without tags {:?}",
                self.nodes_missing_tags,
                plural(self.nodes_missing_tags),
                demand.node_selector
            ));
        }
        if self.disks_unschedulable > 0 {
            why.push(format!(
                "{} disk{} unschedulable",
                self.disks_unschedulable,
                plural(self.disks_unschedulable)
            ));
        }
        if self.disks_missing_tags > 0 {
            why.push(format!(
                "{} disk{} without tags {:?}",
                self.disks_missing_tags,
                plural(self.disks_missing_tags),
                demand.disk_selector
            ));
        }
        if self.disks_full > 0 {
            why.push(format!(
                "{} disk{} without room for {} (storageOverProvisioningPercentage {})",
                self.disks_full,
                plural(self.disks_full),
                human_bytes(demand.size),
                settings.storage_over_provisioning_percentage
            ));
        }
        if self.disks_low_space > 0 {
            why.push(format!(
                "{} disk{} at or below storageMinimalAvailablePercentage {}",
                self.disks_low_space,
                plural(self.disks_low_space),
                settings.storage_minimal_available_percentage
            ));
        }
        if why.is_empty() {
            why.push("no node has a disk".to_string());
        }
        why.join("; ")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `10 GiB`, `3 MiB`, `1536 KiB`: the largest binary unit that divides the size exactly.
pub(crate) fn human_bytes(bytes: Bytes) -> String {
    const UNITS: [&str; 5] = ["TiB", "GiB", "MiB", "KiB", "B"];
    for (i, unit) in UNITS.iter().enumerate() {
        let scale = 1u64 << (10 * (4 - i));
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{} {unit}", bytes / scale);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use crate::testkit::{Cluster, GIB, disk};
    use crate::{DataLocality, Event, NodeSpec, ReplicaMode, Request, VolumeSpec};

    #[test]
    fn three_replicas_land_on_three_nodes() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c", "d"] {
            c.node(n, "", 100);
        }
        c.volume("db", 10, 3);
        let nodes = c.nodes_of("db");
        assert_eq!(nodes.len(), 3);
        assert!(nodes.windows(2).all(|w| w[0] != w[1]), "{nodes:?}");
        assert_eq!(c.state.volumes["db"].robustness, crate::Robustness::Healthy);
    }

    #[test]
    fn hard_node_anti_affinity_says_why_and_retries_when_a_node_joins() {
        let mut c = Cluster::new();
        c.node("a", "", 100);
        c.node("b", "", 100);
        let events = c.volume("db", 10, 3);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::SchedulingFailed { .. }))
        );
        assert_eq!(
            c.state.volumes["db"].condition.as_deref(),
            Some("2 of 3 replicas scheduled: hard node anti-affinity, only 2 schedulable nodes")
        );
        assert_eq!(c.nodes_of("db"), ["a", "b"]);
        assert!(c.state.unscheduled.contains("db"));
        // The same reason is not repeated on every retry.
        let events = c.ok(Request::SetNodeSchedulable {
            id: "b".into(),
            schedulable: true,
        });
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::SchedulingFailed { .. })),
            "{events:?}"
        );
        c.node("c", "", 100);
        assert_eq!(c.nodes_of("db"), ["a", "b", "c"]);
        assert_eq!(c.state.volumes["db"].condition, None);
        assert!(c.state.unscheduled.is_empty());
    }

    #[test]
    fn soft_node_anti_affinity_shares_a_node_but_prefers_another_disk() {
        let mut c = Cluster::new();
        c.set("replicaSoftAntiAffinity", "true");
        c.ok(Request::RegisterNode(NodeSpec {
            id: "a".into(),
            address: "a:1".into(),
            disks: vec![disk("d1", 100), disk("d2", 100)],
            ..Default::default()
        }));
        c.node("b", "", 100);
        c.volume("db", 10, 3);
        let mut placed: Vec<(String, String)> = c
            .replicas("db")
            .into_iter()
            .map(|r| (r.node, r.disk))
            .collect();
        placed.sort();
        assert_eq!(
            placed,
            [
                ("a".into(), "d1".into()),
                ("a".into(), "d2".into()),
                ("b".into(), "d1".into())
            ]
        );
    }

    #[test]
    fn zones_are_spread_first_and_hard_zone_anti_affinity_holds() {
        let mut c = Cluster::new();
        for (n, z) in [("a1", "za"), ("a2", "za"), ("b1", "zb"), ("b2", "zb")] {
            c.node(n, z, 100);
        }
        c.volume("two", 10, 2);
        let zones: Vec<String> = c
            .nodes_of("two")
            .iter()
            .map(|n| c.state.nodes[n].zone.clone())
            .collect();
        assert_eq!(
            zones,
            ["za", "zb"],
            "soft zone anti-affinity still spreads first"
        );
        c.set("replicaZoneSoftAntiAffinity", "false");
        c.volume("three", 10, 3);
        assert_eq!(c.replicas("three").len(), 2);
        assert_eq!(
            c.state.volumes["three"].condition.as_deref(),
            Some(
                "2 of 3 replicas scheduled: hard zone anti-affinity, only 2 zones with schedulable nodes"
            )
        );
        c.node("c1", "zc", 100);
        assert_eq!(c.replicas("three").len(), 3);
        let mut zones: Vec<String> = c
            .nodes_of("three")
            .iter()
            .map(|n| c.state.nodes[n].zone.clone())
            .collect();
        zones.sort();
        assert_eq!(zones, ["za", "zb", "zc"]);
    }

    #[test]
    fn capacity_counts_over_provisioning_and_minimal_available_space() {
        let mut c = Cluster::new();
        c.node("a", "", 10);
        c.volume("v1", 6, 1);
        c.volume("v2", 6, 1);
        assert_eq!(
            c.state.volumes["v2"].condition.as_deref(),
            Some(
                "0 of 1 replicas scheduled: 1 disk without room for 6 GiB (storageOverProvisioningPercentage 100)"
            )
        );
        c.set("storageOverProvisioningPercentage", "200");
        assert_eq!(
            c.replicas("v2").len(),
            1,
            "over-provisioning retried the placement"
        );
        c.ok(Request::UpdateDisk {
            node: "a".into(),
            disk: "d1".into(),
            capacity: None,
            reserved: None,
            available: Some(2 * GIB),
            tags: None,
        });
        c.volume("v3", 1, 1);
        assert_eq!(
            c.state.volumes["v3"].condition.as_deref(),
            Some(
                "0 of 1 replicas scheduled: 1 disk at or below storageMinimalAvailablePercentage 25"
            )
        );
    }

    #[test]
    fn load_spreads_to_the_least_scheduled_disk() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c"] {
            c.node(n, "", 1000);
        }
        for (i, gib) in [30, 20, 10, 5, 5, 5].iter().enumerate() {
            c.volume(&format!("v{i}"), *gib, 1);
        }
        let scheduled: Vec<u64> = ["a", "b", "c"]
            .iter()
            .map(|n| c.state.nodes[*n].disks["d1"].scheduled / GIB)
            .collect();
        assert_eq!(scheduled, [30, 25, 20]);
    }

    #[test]
    fn selectors_restrict_nodes_and_disks() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c"] {
            c.node(n, "", 100);
        }
        c.ok(Request::UpdateNode {
            id: "b".into(),
            address: None,
            zone: None,
            labels: None,
            tags: Some(["ssd".to_string()].into()),
        });
        let spec = VolumeSpec {
            name: "fast".into(),
            size: GIB,
            number_of_replicas: Some(2),
            node_selector: ["ssd".to_string()].into(),
            ..Default::default()
        };
        c.ok(Request::CreateVolume(spec));
        assert_eq!(c.nodes_of("fast"), ["b"]);
        let condition = c.state.volumes["fast"]
            .condition
            .clone()
            .unwrap_or_default();
        assert!(condition.starts_with("1 of 2 replicas scheduled: hard node anti-affinity, only 1 schedulable node; 2 nodes without tags"), "{condition}");
    }

    #[test]
    fn failed_replicas_are_replaced_after_the_stale_timeout_keeping_anti_affinity() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c", "d"] {
            c.node(n, "", 100);
        }
        c.ok(Request::CreateVolume(VolumeSpec {
            name: "db".into(),
            size: GIB,
            number_of_replicas: Some(3),
            stale_replica_timeout: Some(1),
            ..Default::default()
        }));
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "a".into(),
            frontend: Default::default(),
        });
        let before = c.nodes_of("db");
        let failed = c.replicas("db")[0].clone();
        c.ok(Request::ReportReplicaFailed {
            id: failed.id.clone(),
            reason: "timeout".into(),
        });
        assert_eq!(
            c.state.volumes["db"].robustness,
            crate::Robustness::Degraded
        );
        assert_eq!(c.ok(Request::ReplaceStaleReplicas), vec![], "not stale yet");
        c.clock += 60_000;
        let events = c.ok(Request::ReplaceStaleReplicas);
        assert!(events.contains(&Event::ReplicaRemoved {
            id: failed.id.clone()
        }));
        let fresh = c
            .replicas("db")
            .into_iter()
            .find(|r| !before.contains(&r.node))
            .expect("a replacement on the free node");
        assert_eq!(fresh.node, "d");
        assert_eq!(
            fresh.mode,
            ReplicaMode::WriteOnly,
            "a volume with data rebuilds its replacement"
        );
        c.ok(Request::ReportReplicaRebuilt { id: fresh.id });
        assert_eq!(c.state.volumes["db"].robustness, crate::Robustness::Healthy);
    }

    #[test]
    fn the_replenishment_wait_bounds_a_long_stale_timeout() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c"] {
            c.node(n, "", 100);
        }
        // The default stale timeout is two days; the default replenishment wait 600 s.
        c.volume("db", 1, 2);
        let failed = c.replicas("db")[0].clone();
        c.ok(Request::ReportReplicaFailed {
            id: failed.id.clone(),
            reason: "node down".into(),
        });
        c.clock += 590_000;
        assert_eq!(c.ok(Request::ReplaceStaleReplicas), vec![], "not yet");
        c.clock += 10_000;
        let events = c.ok(Request::ReplaceStaleReplicas);
        assert!(
            events.contains(&Event::ReplicaRemoved { id: failed.id }),
            "{events:?}"
        );
        assert_eq!(c.replicas("db").len(), 2, "a replacement was scheduled");
        for replica in c.replicas("db") {
            if replica.mode == ReplicaMode::WriteOnly {
                c.ok(Request::ReportReplicaRebuilt { id: replica.id });
            }
        }
        assert_eq!(c.state.volumes["db"].robustness, crate::Robustness::Healthy);

        // Set longer than the volume's stale timeout, the wait changes nothing.
        c.set("replicaReplenishmentWaitInterval", "604800");
        let again = c.replicas("db")[0].clone();
        c.ok(Request::ReportReplicaFailed {
            id: again.id.clone(),
            reason: "node down".into(),
        });
        assert_eq!(
            c.state.volumes["db"].robustness,
            crate::Robustness::Degraded
        );
        c.clock += 3_600_000;
        assert_eq!(c.ok(Request::ReplaceStaleReplicas), vec![]);
        c.clock += 2 * 86_400_000;
        assert!(
            !c.ok(Request::ReplaceStaleReplicas).is_empty(),
            "replaced after the volume's own two days"
        );
    }

    #[test]
    fn best_effort_locality_puts_a_replacement_on_the_attach_node() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c", "d"] {
            c.node(n, "", 100);
        }
        c.ok(Request::CreateVolume(VolumeSpec {
            name: "db".into(),
            size: GIB,
            number_of_replicas: Some(2),
            data_locality: Some(DataLocality::BestEffort),
            ..Default::default()
        }));
        assert_eq!(c.nodes_of("db"), ["a", "b"]);
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "d".into(),
            frontend: Default::default(),
        });
        let on_b = c
            .replicas("db")
            .into_iter()
            .find(|r| r.node == "b")
            .expect("replica on b");
        c.ok(Request::RemoveReplica { id: on_b.id });
        assert_eq!(
            c.nodes_of("db"),
            ["a", "d"],
            "the least loaded node c lost to locality"
        );
    }

    #[test]
    fn replica_count_changes_add_and_drop_replicas() {
        let mut c = Cluster::new();
        for n in ["a", "b", "c"] {
            c.node(n, "", 100);
        }
        c.volume("db", 1, 1);
        c.ok(Request::UpdateVolume {
            labels: Default::default(),
            name: "db".into(),
            number_of_replicas: Some(3),
            data_locality: None,
            stale_replica_timeout_secs: None,
        });
        assert_eq!(c.nodes_of("db"), ["a", "b", "c"]);
        let failed = c.replicas("db")[1].id.clone();
        c.ok(Request::ReportReplicaFailed {
            id: failed.clone(),
            reason: "x".into(),
        });
        let events = c.ok(Request::UpdateVolume {
            labels: Default::default(),
            name: "db".into(),
            number_of_replicas: Some(2),
            data_locality: None,
            stale_replica_timeout_secs: None,
        });
        assert!(
            events.contains(&Event::ReplicaRemoved { id: failed }),
            "the failed replica goes first"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(super::human_bytes(6 * GIB), "6 GiB");
        assert_eq!(super::human_bytes(3 << 20), "3 MiB");
        assert_eq!(super::human_bytes(1536), "3 B".replace("3 B", "1536 B"));
    }
}
