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
//!   anti-affinity conflicts, then the least scheduled bytes, then node and disk id (so ties
//!   break the same way on every manager).
//!
//! It is pure and works on one decision at a time; the bytes it places during a decision are
//! kept in an overlay so that several placements in one command see each other.

use std::collections::{BTreeMap, BTreeSet};

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
}

/// Placements of one decision, on top of the state.
pub(crate) struct Scheduler<'a> {
    state: &'a State,
    /// Bytes placed (+) or freed (−) on (node, disk) by this decision so far.
    overlay: BTreeMap<(String, String), i128>,
}

/// How a candidate disk ranks, smaller first: (locality miss, node conflict, zone conflict,
/// disk conflict, scheduled bytes).
type Rank = (bool, bool, bool, bool, i128);

/// Why no candidate was left, counted over every node and disk looked at.
#[derive(Default)]
struct Tally {
    nodes: usize,
    nodes_unschedulable: usize,
    nodes_missing_tags: usize,
    blocked_by_node: usize,
    blocked_by_zone: usize,
    candidate_nodes: usize,
    zones: BTreeSet<String>,
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
            overlay: BTreeMap::new(),
        }
    }

    /// Bytes on (node, disk) in the state plus this decision's overlay.
    fn scheduled(&self, node: &str, disk: &str, base: Bytes) -> i128 {
        let extra = self
            .overlay
            .get(&(node.to_string(), disk.to_string()))
            .copied()
            .unwrap_or(0);
        i128::from(base) + extra
    }

    /// Records that this decision frees `size` bytes on (node, disk).
    pub fn release(&mut self, node: &str, disk: &str, size: Bytes) {
        *self
            .overlay
            .entry((node.to_string(), disk.to_string()))
            .or_default() -= i128::from(size);
    }

    /// Places up to `count` replicas. Returns the placements it found and, when it found
    /// fewer than `count`, the reason.
    pub fn place(&mut self, demand: &Demand<'_>, count: usize) -> (Vec<Placement>, Option<String>) {
        let mut existing = demand.existing.clone();
        let mut placed = Vec::new();
        for _ in 0..count {
            match self.place_one(demand, &existing) {
                Ok(placement) => {
                    *self
                        .overlay
                        .entry((placement.node.clone(), placement.disk.clone()))
                        .or_default() += i128::from(demand.size);
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
            if !node.schedulable {
                tally.nodes_unschedulable += 1;
                continue;
            }
            if !demand.node_selector.is_subset(&node.tags) {
                tally.nodes_missing_tags += 1;
                continue;
            }
            tally.candidate_nodes += 1;
            tally.zones.insert(if node.zone.is_empty() {
                node.id.clone()
            } else {
                node.zone.clone()
            });
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
                let key = (
                    locality_miss,
                    node_conflict,
                    zone_conflict,
                    disk_conflict,
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
            None => Err(tally.explain(demand, settings)),
        }
    }
}

impl Tally {
    fn explain(&self, demand: &Demand<'_>, settings: &crate::Settings) -> String {
        if self.nodes == 0 {
            return "no nodes registered".to_string();
        }
        let mut why = Vec::new();
        if self.blocked_by_node > 0 {
            why.push(format!(
                "hard node anti-affinity, only {} schedulable node{}",
                self.candidate_nodes,
                plural(self.candidate_nodes)
            ));
        }
        if self.blocked_by_zone > 0 {
            why.push(format!(
                "hard zone anti-affinity, only {} zone{} with schedulable nodes",
                self.zones.len(),
                plural(self.zones.len())
            ));
        }
        if self.blocked_by_disk > 0 {
            why.push(format!(
                "hard disk anti-affinity on {} disk{}",
                self.blocked_by_disk,
                plural(self.blocked_by_disk)
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
