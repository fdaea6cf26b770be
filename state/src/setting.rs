//! Cluster settings: typed, with the defaults Longhorn users know, set by key and string value
//! (as they arrive from `values.yaml`, the REST API or the CLI).
//!
//! Every key of the Longhorn `defaultSettings` example in the seed is accepted; keys whose
//! Longhorn spelling names Longhorn or uses dashes are accepted under that spelling as an alias.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{DataLocality, Rejection};

/// A type a setting can hold: parsed from and rendered to the string form users write.
trait SettingValue: Sized {
    fn parse(text: &str) -> Result<Self, String>;
    fn render(&self) -> String;
}

impl SettingValue for bool {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("\"{other}\" is not a boolean (true or false)")),
        }
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for u64 {
    fn parse(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("\"{text}\" is not a non-negative integer"))
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
    fn render(&self) -> String {
        self.clone()
    }
}

impl SettingValue for DataLocality {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "disabled" => Ok(DataLocality::Disabled),
            "best-effort" => Ok(DataLocality::BestEffort),
            other => Err(format!(
                "\"{other}\" is not a data locality (disabled or best-effort)"
            )),
        }
    }
    fn render(&self) -> String {
        self.as_str().to_string()
    }
}

fn any<T>(_: &T) -> Result<(), String> {
    Ok(())
}

fn range(low: u64, high: u64) -> impl Fn(&u64) -> Result<(), String> {
    move |value| {
        if (low..=high).contains(value) {
            Ok(())
        } else {
            Err(format!("{value} is out of range {low}..={high}"))
        }
    }
}

fn one_of(choices: &'static [&'static str]) -> impl Fn(&String) -> Result<(), String> {
    move |value| {
        if choices.contains(&value.as_str()) {
            Ok(())
        } else {
            Err(format!("\"{value}\" is not one of {}", choices.join(", ")))
        }
    }
}

fn backup_target(value: &String) -> Result<(), String> {
    if value.is_empty()
        || value.starts_with("s3://")
        || value.starts_with("nfs://")
        || value.starts_with("file://")
    {
        Ok(())
    } else {
        Err(format!(
            "\"{value}\" is not a backup target (s3://bucket@region/path, nfs://server:/export/path or file:///path)"
        ))
    }
}

/// The settings: first those of state format 11, then each added since, so that a state of
/// format 11 is read through [`SettingsV11`] (its archived layout) with the added settings
/// at their defaults.
macro_rules! settings {
    (
        $(
            $(#[doc = $doc:literal])*
            $field:ident: $ty:ty = $default:expr, $key:literal $(| $alias:literal)*, $check:expr;
        )*
        @added_after_format_11 {
            $(
                $(#[doc = $ndoc:literal])*
                $nfield:ident: $nty:ty = $ndefault:expr, $nkey:literal $(| $nalias:literal)*, $ncheck:expr;
            )*
        }
    ) => {
        settings!(@all
            $( $(#[doc = $doc])* $field: $ty = $default, $key $(| $alias)*, $check; )*
            $( $(#[doc = $ndoc])* $nfield: $nty = $ndefault, $nkey $(| $nalias)*, $ncheck; )*
        );

        /// The settings as state format 11 archived them.
        #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        pub struct SettingsV11 {
            $( pub $field: $ty, )*
        }

        impl SettingsV11 {
            /// `settings` as format 11 holds them, if every setting added since is at its
            /// default (else format 11 would lose it).
            pub(crate) fn lossless(settings: &Settings) -> Option<SettingsV11> {
                let defaults = Settings::default();
                if $( settings.$nfield != defaults.$nfield || )* false {
                    return None;
                }
                Some(SettingsV11 { $( $field: settings.$field.clone(), )* })
            }

            /// Whether `key` (canonical) is a setting format 11 does not know: builds of
            /// that format refuse it, so it needs cluster version 2.
            pub fn is_new(key: &str) -> bool {
                [$($nkey),*].contains(&key)
            }
        }

        impl From<SettingsV11> for Settings {
            fn from(old: SettingsV11) -> Settings {
                let defaults = Settings::default();
                Settings {
                    $( $field: old.$field, )*
                    $( $nfield: defaults.$nfield, )*
                }
            }
        }
    };
    (@all $(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $default:expr, $key:literal $(| $alias:literal)*, $check:expr;
    )*) => {
        /// Every cluster setting with its current value. Changed only by `SettingChanged` events.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize,
                 rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// The canonical key of every setting, in declaration order.
        pub const SETTING_KEYS: &[&str] = &[$($key),*];

        impl Settings {
            /// The canonical spelling of `key`, which may be an alias; `None` if unknown.
            pub fn canonical_key(key: &str) -> Option<&'static str> {
                $( if key == $key $(|| key == $alias)* { return Some($key); } )*
                None
            }

            /// Checks `value` for `key` and returns the canonical key and value, or a
            /// rejection naming the key.
            pub fn validate(key: &str, value: &str) -> Result<(&'static str, String), Rejection> {
                let Some(canonical) = Self::canonical_key(key) else {
                    return Err(Rejection::invalid(format!(
                        "unknown setting \"{key}\"; known settings: {}", SETTING_KEYS.join(", ")
                    )));
                };
                let bad = |why: String| Rejection::invalid(format!("setting \"{canonical}\": {why}"));
                $( if canonical == $key {
                    let parsed = <$ty as SettingValue>::parse(value).map_err(bad)?;
                    ($check)(&parsed).map_err(bad)?;
                    return Ok((canonical, parsed.render()));
                } )*
                unreachable!("canonical_key returned a key that has no field")
            }

            /// Sets a value that [`Settings::validate`] accepted. Values that do not parse are
            /// ignored: events only carry validated values.
            pub fn set(&mut self, key: &str, value: &str) {
                $( if key == $key {
                    if let Ok(parsed) = <$ty as SettingValue>::parse(value) {
                        self.$field = parsed;
                    }
                    return;
                } )*
            }

            /// The current value of `key` (canonical or alias) in its string form.
            pub fn get(&self, key: &str) -> Option<String> {
                let canonical = Self::canonical_key(key)?;
                $( if canonical == $key { return Some(self.$field.render()); } )*
                None
            }

            /// Every (key, value) pair, in declaration order.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                vec![$( ($key, self.$field.render()) ),*]
            }

            /// One line per setting: key, default and what it does (for `--help` and docs).
            pub fn describe() -> String {
                let defaults = Self::default();
                let mut out = String::new();
                $(
                    let doc: &[&str] = &[$($doc),*];
                    let _ = writeln!(out, "{} (default \"{}\"):{}", $key, defaults.$field.render(), doc.join(""));
                )*
                out
            }
        }
    };
}

settings! {
    /// Allow two replicas of a volume on one node when nothing else fits.
    replica_soft_anti_affinity: bool = false, "replicaSoftAntiAffinity", any;
    /// Allow two replicas of a volume in one zone when nothing else fits.
    replica_zone_soft_anti_affinity: bool = true, "replicaZoneSoftAntiAffinity", any;
    /// Allow two replicas of a volume on one disk when nothing else fits (needs node soft anti-affinity too).
    replica_disk_soft_anti_affinity: bool = true, "replicaDiskSoftAntiAffinity", any;
    /// Scheduled bytes may reach this percentage of a disk's capacity minus its reserved bytes.
    storage_over_provisioning_percentage: u64 = 100, "storageOverProvisioningPercentage", range(0, 10_000);
    /// A disk whose free space is at or below this percentage of its capacity takes no new replica.
    storage_minimal_available_percentage: u64 = 25, "storageMinimalAvailablePercentage", range(0, 100);
    /// Replicas of a new volume when the request does not say.
    default_replica_count: u64 = 3, "defaultReplicaCount", range(1, 20);
    /// Data locality of a new volume when the request does not say.
    default_data_locality: DataLocality = DataLocality::Disabled, "defaultDataLocality", any;
    /// Minutes a failed replica is kept for a delta rebuild before a replacement is scheduled.
    stale_replica_timeout: u64 = 2880, "staleReplicaTimeout", range(0, 525_600);
    /// Seconds a failed replica may take to come back for a delta rebuild before a
    /// replacement is scheduled anyway, when that is sooner than its volume's
    /// staleReplicaTimeout: a volume is not left degraded for days by a dead node.
    replica_replenishment_wait_interval: u64 = 600, "replicaReplenishmentWaitInterval", range(0, 604_800);
    /// Where backups go: s3://bucket@region/path, nfs://server[:port]:/export/path (NFSv3,
    /// reached from userspace; ports from the server's portmapper, or :port and
    /// ?mountport=N) or file:///path; empty for none.
    backup_target: String = String::new(), "backupTarget", backup_target;
    /// Name of the Secret holding the backup target's credentials.
    backup_target_credential_secret: String = String::new(), "backupTargetCredentialSecret", any;
    /// Seconds between polls of the backup target (DR volumes, backup listing); 0 disables.
    backupstore_poll_interval: u64 = 300, "backupstorePollInterval", range(0, 86_400);
    /// Seconds between a disaster-recovery standby's polls of its backup volume's index
    /// (one request each; its node's agent restores what is newer at once); 0 stops
    /// following until activation. Short, for an RPO of seconds (Longhorn's DR volumes
    /// poll every backupstorePollInterval).
    standby_poll_interval: u64 = 2, "standbyPollInterval", range(0, 86_400);
    /// Blocks a backup job uploads at once.
    backup_concurrent_limit: u64 = 8, "backupConcurrentLimit", range(1, 64);
    /// Blocks a restore job downloads at once.
    restore_concurrent_limit: u64 = 8, "restoreConcurrentLimit", range(1, 64);
    /// When every replica failed, bring the volume back from the replica with the newest data.
    auto_salvage: bool = true, "autoSalvage", any;
    /// Seconds without a heartbeat (sent every 2 s) after which the log marks a node down:
    /// its replicas fail and volumes attached there can be attached elsewhere.
    node_down_timeout: u64 = 10, "nodeDownTimeout", range(4, 3_600);
    /// Seconds between scrubs of an attached volume (its replicas compared chunk by chunk; a
    /// replica the majority contradicts is failed and rebuilt); 0 disables.
    scrub_interval: u64 = 0, "scrubInterval", range(0, 31_536_000);
    /// Delete replica directories on a node that the log no longer places there (replaced
    /// while the node was down). Off: they are kept and reported in the node agent's log.
    orphan_auto_deletion: bool = false, "orphanAutoDeletion", any;
    /// Schedule no replica on a node that Kubernetes cordoned.
    disable_scheduling_on_cordoned_node: bool = true, "disableSchedulingOnCordonedNode", any;
    /// Create the default disk only on nodes labelled node.shorthorn.io/create-default-disk=true.
    create_default_disk_labeled_nodes: bool = false, "createDefaultDiskLabeledNodes", any;
    /// Directory of a node's default disk.
    default_data_path: String = "/var/lib/shorthorn/".to_string(), "defaultDataPath", any;
    /// Check for new releases (this build never does; kept for values.yaml compatibility).
    upgrade_checker: bool = false, "upgradeChecker", any;
    /// CPU share reserved for each engine, in millicpu; empty for none.
    guaranteed_engine_cpu: String = String::new(), "guaranteedEngineCPU", any;
    /// Percentage of a node's CPU reserved for the engine processes.
    guaranteed_engine_manager_cpu: u64 = 12, "guaranteedEngineManagerCPU" | "guaranteed-engine-manager-cpu", range(0, 40);
    /// Percentage of a node's CPU reserved for the replica processes.
    guaranteed_replica_manager_cpu: u64 = 12, "guaranteedReplicaManagerCPU" | "guaranteed-replica-manager-cpu", range(0, 40);
    /// StorageClass for volumes created outside CSI.
    default_static_storage_class: String = "shorthorn-static".to_string(), "defaultShorthornStaticStorageClass" | "defaultLonghornStaticStorageClass", any;
    /// Tolerations for system components, `key=value:Effect` separated by `;`.
    taint_toleration: String = String::new(), "taintToleration", any;
    /// Node selector for system components, `key:value` separated by `;`.
    system_managed_components_node_selector: String = String::new(), "systemManagedComponentsNodeSelector", any;
    /// PriorityClass of the system components.
    priority_class: String = String::new(), "priorityClass" | "priority-class", any;
    /// What happens to a volume's attachment when its node goes down.
    volume_attachment_recovery_policy: String = "wait".to_string(), "volumeAttachmentRecoveryPolicy", one_of(&["never", "wait", "immediate"]);
    /// Whether pods of a down node are deleted so they can start elsewhere.
    node_down_pod_deletion_policy: String = "do-nothing".to_string(), "nodeDownPodDeletionPolicy", one_of(&["do-nothing", "delete-statefulset-pod", "delete-deployment-pod", "delete-both-statefulset-and-deployment-pod"]);
    /// Extra mkfs.ext4 parameters used when a volume is formatted.
    mkfs_ext4_parameters: String = String::new(), "mkfsExt4Parameters", any;
    /// The kernel block device frontend of an attach that asks for `auto`: `auto` takes the
    /// best the node's kernel offers (nbd, else fuse); `fuse` or `nbd` forces one.
    block_device_frontend: String = "auto".to_string(), "blockDeviceFrontend", one_of(&["auto", "fuse", "nbd"]);
    /// Most snapshots a volume may hold.
    snapshot_max_count: u64 = 250, "snapshotMaxCount", range(2, 250);
    /// Let recurring jobs attach a detached volume (without a frontend) to do their work;
    /// off, a detached volume's job run is skipped with that reason.
    allow_recurring_job_while_volume_detached: bool = false, "allowRecurringJobWhileVolumeDetached", any;
    /// Finished runs of a recurring job kept in its history where every volume succeeded.
    recurring_successful_jobs_history_limit: u64 = 1, "recurringSuccessfulJobsHistoryLimit", range(0, 100);
    /// Finished runs of a recurring job kept in its history where some volume failed.
    recurring_failed_jobs_history_limit: u64 = 1, "recurringFailedJobsHistoryLimit", range(0, 100);
    @added_after_format_11 {
    /// Volumes a node may have in an engine upgrade job at once (the job upgrades every
    /// volume to one image); 0 turns upgrade jobs off.
    concurrent_automatic_engine_upgrade_per_node_limit: u64 = 0, "concurrentAutomaticEngineUpgradePerNodeLimit", range(0, 64);
    }
}
