//! A real NFS server for the backup tests: nfs-ganesha (Debian's `nfs-ganesha` and
//! `nfs-ganesha-vfs`; `scripts/build-tools` installs them) started in the foreground as a
//! child process, on loopback ports of its own, with the VFS FSAL exporting directories of a
//! test, NFSv3 over TCP only. Killed (by its pid) on drop.
//!
//! ganesha registers with rpcbind at startup and dies when it cannot, so the kit starts
//! rpcbind when none listens on port 111 and stops it (by its pid) once ganesha is up:
//! the clients here are given both ports and never ask the portmapper. Startups are
//! serialized across test processes by a file lock, so one test's rpcbind is never stopped
//! under another test's starting ganesha. [`NfsServer::start_with_portmapper`] keeps
//! rpcbind (and the lock) until the server is dropped, for the tests of port lookup.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::free_port;

/// Exported by every server this kit starts, under its `root`:
/// - `/backups`: read-write, root not squashed (the good target),
/// - `/squashed`: read-write but root squashed to nobody, over a directory only root may
///   write (permission denied on the first write),
/// - `/readonly`: read-only,
/// - `/noaccess`: no client may mount it (ganesha then leaves it out of its export list),
/// - `/kerberos`: only with Kerberos (sec=krb5), which the store's client does not speak.
pub const EXPORTS: [(&str, &str, &str, &str); 5] = [
    ("backups", "RW", "No_Root_Squash", "sys"),
    ("squashed", "RW", "Root_Squash", "sys"),
    ("readonly", "RO", "No_Root_Squash", "sys"),
    ("noaccess", "None", "No_Root_Squash", "sys"),
    ("kerberos", "RW", "No_Root_Squash", "krb5"),
];

pub struct NfsServer {
    child: Option<Child>,
    pub port: u16,
    pub mount_port: u16,
    pub root: PathBuf,
    pub log: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    /// Whether it serves NFSv3 and the MOUNT protocol (false: NFSv4 alone).
    v3: bool,
    /// Held while a started-here rpcbind is kept for the server's life.
    portmapper: Option<(File, Option<Child>)>,
}

fn ganesha_binary() -> PathBuf {
    let p = std::env::var("SHORTHORN_GANESHA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/usr/bin/ganesha.nfsd".into());
    assert!(
        p.exists(),
        "nfs-ganesha is not installed at {}: run scripts/build-tools",
        p.display()
    );
    p
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Takes the machine-wide lock of ganesha startups (blocking).
fn startup_lock() -> File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/var/tmp/shorthorn-ganesha-startup.lock")
        .expect("lock file");
    // SAFETY: flock on an open descriptor we own; it blocks until the lock is ours and is
    // released when the file is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    f
}

/// Starts rpcbind when nothing serves port 111; returns the child when it is ours.
fn ensure_rpcbind(log: &Path) -> Option<Child> {
    if listening(111) {
        return None;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("rpcbind log");
    let mut child = Command::new("rpcbind")
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn rpcbind (Debian's rpcbind; scripts/build-tools installs it)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !listening(111) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "rpcbind exited {st}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "rpcbind did not listen on 111");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl NfsServer {
    /// ganesha over directories under `dir` (see [`EXPORTS`]); rpcbind only for its startup.
    pub fn start(dir: &Path) -> NfsServer {
        Self::start_inner(dir, false, "3")
    }

    /// ganesha serving NFSv4 alone (no NFSv3, no MOUNT protocol), as many servers now do.
    pub fn start_v4_only(dir: &Path) -> NfsServer {
        Self::start_inner(dir, false, "4")
    }

    /// The same, with rpcbind kept running (and ganesha registered in it) until drop.
    pub fn start_with_portmapper(dir: &Path) -> NfsServer {
        Self::start_inner(dir, true, "3")
    }

    fn start_inner(dir: &Path, keep_portmapper: bool, protocols: &str) -> NfsServer {
        let bin = ganesha_binary();
        let root = dir.join("nfs-exports");
        let mut blocks = String::new();
        for (i, (name, access, squash, sec)) in EXPORTS.iter().enumerate() {
            let path = root.join(name);
            std::fs::create_dir_all(&path).expect("export dir");
            // Only its owner (root) may write into it: a squashed root is refused.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            blocks.push_str(&format!(
                "EXPORT {{\n  Export_Id = {id};\n  Path = {path};\n  Pseudo = /{name};\n  \
                 Access_Type = {access};\n  Squash = {squash};\n  Anonymous_Uid = 65534;\n  \
                 Anonymous_Gid = 65534;\n  SecType = {sec};\n  Protocols = {protocols};\n  \
                 Transports = TCP;\n  FSAL {{ Name = VFS; }}\n}}\n",
                id = i + 1,
                path = path.display(),
            ));
        }
        let recovery = dir.join("ganesha-recovery");
        std::fs::create_dir_all(&recovery).expect("recovery dir");
        let log = dir.join("ganesha.log");
        let conf = dir.join("ganesha.conf");

        let lock = startup_lock();
        let (port, mount_port) = (free_port(), free_port());
        let mut f = File::create(&conf).expect("ganesha.conf");
        write!(
            f,
            "NFS_CORE_PARAM {{\n  Bind_addr = 127.0.0.1;\n  NFS_Port = {port};\n  \
             MNT_Port = {mount_port};\n  NLM_Port = {nlm};\n  Rquota_Port = {rq};\n  \
             Enable_NLM = false;\n  Enable_RQUOTA = false;\n  Enable_UDP = false;\n  \
             Protocols = {protocols};\n  mount_path_pseudo = true;\n}}\n\
             NFSV4 {{\n  Graceless = true;\n  RecoveryBackend = fs;\n  RecoveryRoot = {rec};\n}}\n\
             LOG {{\n  Default_Log_Level = EVENT;\n}}\n{blocks}",
            nlm = free_port(),
            rq = free_port(),
            rec = recovery.display(),
        )
        .expect("write ganesha.conf");
        drop(f);
        let mut s = NfsServer {
            child: None,
            port,
            mount_port,
            root,
            log,
            conf,
            dir: dir.to_owned(),
            bin,
            v3: protocols.contains('3'),
            portmapper: None,
        };
        s.spawn(lock, keep_portmapper);
        s
    }

    /// Starts ganesha on the written config and waits until it serves; rpcbind around
    /// its startup as the module says. `lock` is the startup lock, held until then.
    fn spawn(&mut self, lock: File, keep_portmapper: bool) {
        let rpcbind = ensure_rpcbind(&self.dir.join("rpcbind.log"));
        let _ = std::fs::remove_file(&self.log);
        let child = Command::new(&self.bin)
            .arg("-F")
            .arg("-f")
            .arg(&self.conf)
            .arg("-L")
            .arg(&self.log)
            .arg("-p")
            .arg(self.dir.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ganesha.nfsd");
        self.child = Some(child);
        // Up once it says so (its ports are registered and its threads serve).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("NFS SERVER INITIALIZED")
                && listening(self.port)
                && (!self.v3 || listening(self.mount_port))
            {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("ganesha exited {st}: {text}");
            }
            assert!(Instant::now() < deadline, "ganesha did not start: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
        if keep_portmapper {
            self.portmapper = Some((lock, rpcbind));
        } else if let Some(mut r) = rpcbind {
            stop(&mut r);
        }
    }

    /// Starts the server again (same ports, same exports) after [`Self::stop`].
    pub fn resume(&mut self) {
        assert!(
            self.portmapper.is_none(),
            "resume is for servers without a kept portmapper"
        );
        let lock = startup_lock();
        self.spawn(lock, false);
    }

    /// The backup target URL of export `name` (with both ports: no portmapper needed).
    pub fn url(&self, name: &str) -> String {
        format!(
            "nfs://127.0.0.1:{}:/{name}?mountport={}",
            self.port, self.mount_port
        )
    }

    /// The directory behind export `name`.
    pub fn export_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A libnfs URL (for `nfs-ls`, `nfs-cp`) of `rel` under export `name`.
    pub fn libnfs_url(&self, name: &str, rel: &str) -> String {
        let rel = rel.trim_start_matches('/');
        let sep = if rel.is_empty() { "" } else { "/" };
        format!(
            "nfs://127.0.0.1/{name}{sep}{rel}?version=3&nfsport={}&mountport={}",
            self.port, self.mount_port
        )
    }

    /// SIGKILLs the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop();
        if let Some((_lock, Some(mut rpcbind))) = self.portmapper.take() {
            stop(&mut rpcbind);
        }
    }
}
