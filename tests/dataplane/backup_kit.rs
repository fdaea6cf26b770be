//! Helpers for the backup scenarios: a volume (2 real replica processes and a real engine)
//! written and read through NBD by qemu-img, backup and restore jobs driven over the
//! engine's control API, the store opened in-process to inspect or damage the target, and
//! real S3 servers (s3s-fs, versitygw) started as child processes on free loopback ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use shorthorn_dataplane::backup::{Credentials, Store};
use shorthorn_dataplane::proto;

use crate::testkit::{Cluster, Control, Daemon, run_ok, sha256};

/// A volume of `size` bytes on two replicas with its engine at epoch 1.
pub struct Vol {
    pub c: Cluster,
    pub _replicas: Vec<Daemon>,
    pub engine: Daemon,
    pub ctl: Control,
    pub epoch: u64,
}

impl Vol {
    pub fn new(name: &str, size: u64) -> Vol {
        let mut c = Cluster::new(size);
        c.volume = name.into();
        let replicas = vec![c.replica(0), c.replica(1)];
        let engine = c.engine(1, &[0, 1]);
        let ctl = Control::connect(&c, 1);
        Vol {
            c,
            _replicas: replicas,
            engine,
            ctl,
            epoch: 1,
        }
    }

    /// SIGKILLs the engine and starts a new one at the next epoch.
    pub fn restart_engine(&mut self) {
        self.engine.kill();
        self.epoch += 1;
        self.engine = self.c.engine(self.epoch, &[0, 1]);
        self.ctl = Control::connect(&self.c, self.epoch);
    }

    /// Writes the raw image `src` (the volume's size) over the whole volume.
    pub fn write_image(&self, src: &Path) {
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-n", "-f", "raw", "-O", "raw"])
                .arg(src)
                .arg(self.c.nbd_uri(self.epoch)),
        );
    }

    /// Reads the whole volume into a file and returns its sha256.
    pub fn image_sha(&self, name: &str) -> String {
        let out = self.c.path(name);
        let _ = std::fs::remove_file(&out);
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(self.c.nbd_uri(self.epoch))
                .arg(&out),
        );
        let sha = sha256(&out);
        let _ = std::fs::remove_file(&out);
        sha
    }

    pub fn backup_request(
        &self,
        t: &Target,
        name: &str,
        snapshot: &str,
        base: Option<&str>,
    ) -> proto::StartBackupRequest {
        proto::StartBackupRequest {
            name: name.into(),
            snapshot: snapshot.into(),
            base_snapshot: String::new(),
            base_backup: base.unwrap_or_default().into(),
            target_url: t.url.clone(),
            credentials: t.creds.clone(),
            labels: HashMap::from([("test".to_owned(), "yes".to_owned())]),
            concurrency: 4,
        }
    }

    /// Runs a backup to completion and returns its final status (asserting success).
    pub fn backup(
        &mut self,
        t: &Target,
        name: &str,
        snapshot: &str,
        base: Option<&str>,
    ) -> proto::JobStatusReply {
        let req = self.backup_request(t, name, snapshot, base);
        let job = self.ctl.start_backup(req).expect("start backup");
        let s = self.ctl.wait_job(&job, 300);
        assert_eq!(
            s.state,
            proto::JobState::Completed as i32,
            "backup {name} failed: {}",
            s.error
        );
        s
    }

    /// Runs a restore of `volume/name` into this volume; returns the final status.
    pub fn restore(&mut self, t: &Target, volume: &str, name: &str) -> proto::JobStatusReply {
        self.restore_over(t, volume, name, "")
    }

    /// Runs an incremental restore of `volume/name` over `base` (the data this volume
    /// holds; "" for a full restore); returns the final status.
    pub fn restore_over(
        &mut self,
        t: &Target,
        volume: &str,
        name: &str,
        base: &str,
    ) -> proto::JobStatusReply {
        self.restore_with(t, volume, name, base, false)
    }

    /// A restore of `volume/name` over `base`, with the volume's own blocks compared first
    /// when `compare_local`; returns the final status.
    pub fn restore_with(
        &mut self,
        t: &Target,
        volume: &str,
        name: &str,
        base: &str,
        compare_local: bool,
    ) -> proto::JobStatusReply {
        let job = self
            .ctl
            .start_restore(proto::StartRestoreRequest {
                target_url: t.url.clone(),
                credentials: t.creds.clone(),
                backup_volume: volume.into(),
                backup_name: name.into(),
                concurrency: 4,
                base_backup_name: base.into(),
                compare_local,
            })
            .expect("start restore");
        self.ctl.wait_job(&job, 300)
    }
}

/// Volume "vola" of `size` bytes written from an image with `random` bytes of random data
/// (seed `seed`), snapshot s1, and backup b1 of it started with one block in flight and
/// seen under way (bytes read, not finished). Returns the volume, the image and the job.
pub fn backup_under_way(t: &Target, size: u64, random: usize, seed: u64) -> (Vol, PathBuf, String) {
    let mut a = Vol::new("vola", size);
    let src = a.c.path("src.img");
    image(&src, size as usize, random, seed);
    a.write_image(&src);
    a.ctl.snapshot("create", "s1").expect("s1");
    let mut req = a.backup_request(t, "b1", "s1", None);
    req.concurrency = 1;
    let job = a.ctl.start_backup(req).expect("start");
    crate::testkit::eventually(60, "the backup to be under way", || {
        let j = a.ctl.job(&job).expect("status");
        assert_eq!(
            j.state,
            proto::JobState::Running as i32,
            "finished too early: {j:?}"
        );
        j.done_bytes > 0
    });
    (a, src, job)
}

/// A backup target as the engine is given it.
pub struct Target {
    pub url: String,
    pub creds: HashMap<String, String>,
    pub rt: tokio::runtime::Runtime,
}

impl Target {
    pub fn new(url: String, creds: HashMap<String, String>) -> Target {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Target { url, creds, rt }
    }

    pub fn file(dir: &Path) -> Target {
        Target::new(format!("file://{}", dir.display()), HashMap::new())
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::from_map(self.creds.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("credentials")
    }

    /// The store, opened in this process (as the manager opens it).
    pub fn store(&self) -> Store {
        let _g = self.rt.enter();
        Store::open_url(&self.url, &self.credentials()).expect("open store")
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// A raw image of `size` bytes: `random` bytes of random data from `seed` at offset 0, a
/// pattern block in the middle, zeros elsewhere.
pub fn image(path: &Path, size: usize, random: usize, seed: u64) {
    crate::testkit::random_file(path, random, seed);
    let mut data = std::fs::read(path).expect("read");
    data.resize(size, 0);
    let mid = size / 2;
    data[mid..mid + 3 * 4096].fill(0x5a);
    std::fs::write(path, data).expect("write image");
}

pub use crate::s3::{S3Server, free_port};

/// The store of a bucket on a test S3 server, as the data-path tests open it.
impl S3Server {
    pub fn target(&self, bucket: &str) -> Target {
        self.target_with(bucket, &self.access_key, &self.secret_key)
    }

    pub fn target_with(&self, bucket: &str, ak: &str, sk: &str) -> Target {
        Target::new(
            format!("s3://{bucket}@us-east-1/backupstore"),
            HashMap::from([
                ("AWS_ACCESS_KEY_ID".to_owned(), ak.to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), sk.to_owned()),
                ("AWS_ENDPOINTS".to_owned(), self.endpoint.clone()),
            ]),
        )
    }
}
