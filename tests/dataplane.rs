//! The block data path end to end: real `shorthorn replica serve` and `shorthorn engine
//! serve` processes on unix sockets, driven by NBD clients nobody here wrote (qemu-img,
//! qemu-io, nbdinfo, fio's nbd engine). One scenario per module.

#[path = "dataplane/testkit.rs"]
mod testkit;

// Shared with the dev-cluster backup tests, which use more of it.
#[allow(dead_code)]
#[path = "testkit/s3.rs"]
mod s3;

// Shared with the dev-cluster backup tests.
#[allow(dead_code)]
#[path = "testkit/nfs.rs"]
mod nfs;

#[path = "dataplane/backup.rs"]
mod backup;
#[path = "dataplane/backup_kit.rs"]
mod backup_kit;
#[path = "dataplane/backup_nfs.rs"]
mod backup_nfs;
#[path = "dataplane/device_replay.rs"]
mod device_replay;
#[path = "dataplane/disk_full.rs"]
mod disk_full;
#[path = "dataplane/fio_replica_killed.rs"]
mod fio_replica_killed;
#[path = "dataplane/layer_corruption.rs"]
mod layer_corruption;
#[path = "dataplane/nbd_errors.rs"]
mod nbd_errors;
#[path = "dataplane/qemu_img_round_trip.rs"]
mod qemu_img_round_trip;
#[path = "dataplane/qemu_io_odd_offsets.rs"]
mod qemu_io_odd_offsets;
#[path = "dataplane/rebuild.rs"]
mod rebuild;
#[path = "dataplane/rebuild_history.rs"]
mod rebuild_history;
#[path = "dataplane/replica_restart.rs"]
mod replica_restart;
#[path = "dataplane/replica_timeout.rs"]
mod replica_timeout;
#[path = "dataplane/scrub.rs"]
mod scrub;
#[path = "dataplane/snapshot_copy.rs"]
mod snapshot_copy;
#[path = "dataplane/snapshot_crash.rs"]
mod snapshot_crash;
#[path = "dataplane/snapshot_revert.rs"]
mod snapshot_revert;
