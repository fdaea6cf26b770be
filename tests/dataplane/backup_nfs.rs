//! Backups to an NFS export reached from userspace: a real nfs-ganesha (VFS FSAL, NFSv3)
//! started here, the store's NFS client (`nfs3_client`) driven by real replica and engine
//! processes, and what it wrote read back by an independent client (libnfs's `nfs-ls` and
//! `nfs-cp`, Debian's libnfs-utils).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use shorthorn_dataplane::backup::nfs::{NfsConfig, NfsStore};
use shorthorn_dataplane::backup::store::decode_block;
use shorthorn_dataplane::backup::{BackupError, BackupTarget, Credentials, Store};

use crate::backup::round_trip_incremental_dedup;
use crate::backup_kit::{Target, free_port};
use crate::nfs::NfsServer;

fn nfs_target(url: String) -> Target {
    Target::new(url, HashMap::new())
}

fn run_out(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The data-path round trip against ganesha (full, incremental, restores, dedup, base
/// gone), then an independent client: `nfs-ls` lists the manifests and `nfs-cp` copies a
/// block out, which decodes (zstd or plain) to the bytes its blake3 names and that the
/// restored image holds at its offset.
#[test]
fn backup_restore_nfs_ganesha() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nfs = NfsServer::start(dir.path());
    let t = nfs_target(nfs.url("backups"));
    round_trip_incremental_dedup(&t);

    let ls = run_out(
        Command::new("nfs-ls")
            .arg(nfs.libnfs_url("backups", "shorthorn-backupstore/volumes/vola/backups")),
    );
    for name in ["b1.json", "b2.json", "b3.json"] {
        assert!(ls.contains(name), "nfs-ls does not list {name}: {ls}");
    }
    assert!(!ls.contains(".shorthorn-tmp"), "temporary files left: {ls}");

    let store = t.store();
    let m = t
        .block_on(store.get_manifest("vola", "b1"))
        .expect("manifest");
    let src = dir.path().join("src.img");
    crate::backup_kit::image(&src, 48 << 20, 20 << 20, 7);
    let image = std::fs::read(&src).expect("image");
    for (offset, hash) in [m.blocks[0].clone(), m.blocks[m.blocks.len() - 1].clone()] {
        let out = dir.path().join(format!("{hash}.blk"));
        run_out(
            Command::new("nfs-cp")
                .arg(nfs.libnfs_url("backups", &store.block_location(&hash)))
                .arg(&out),
        );
        let raw = std::fs::read(&out).expect("copied block");
        let plain = decode_block(raw.into(), &hash).expect("the block nfs-cp read decodes");
        let at = offset as usize;
        assert_eq!(
            &plain[..],
            &image[at..at + plain.len()],
            "block at {offset}"
        );
    }
}

/// `check_target` on NFS: the good export passes; a missing export (and one ganesha hides
/// from this host), a squashed root over a root-only directory, a read-only export, a
/// Kerberos-only export, a port nothing listens on and a malformed URL each give one clear
/// reason, fast.
#[test]
fn check_reasons_nfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nfs = NfsServer::start(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let check = |url: &str| {
        let target = BackupTarget::parse(url).expect("url");
        let started = Instant::now();
        let r = rt.block_on(Store::check_target(&target, &Credentials::default()));
        if let Err(e) = &r {
            eprintln!("{url}: {e}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url}: {:?}",
            started.elapsed()
        );
        r
    };
    check(&nfs.url("backups")).expect("the good export passes");

    for name in ["nosuchexport", "noaccess"] {
        let e = check(&nfs.url(name)).expect_err(name);
        assert!(matches!(e, BackupError::NoSuchExport { .. }), "{name}: {e}");
        assert!(e.to_string().contains("export does not exist"), "{e}");
        assert!(e.to_string().contains("exports /backups"), "{e}");
    }

    for name in ["squashed", "readonly", "kerberos"] {
        let e = check(&nfs.url(name)).expect_err(name);
        assert!(
            matches!(e, BackupError::PermissionDenied { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("permission denied"), "{name}: {e}");
    }

    let down = format!(
        "nfs://127.0.0.1:{}:/backups?mountport={}",
        free_port(),
        free_port()
    );
    let e = check(&down).expect_err("nothing listens");
    assert!(matches!(e, BackupError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");

    let e = BackupTarget::parse("nfs://server:notaport:/export").expect_err("malformed");
    assert!(e.to_string().contains("is not a port"), "{e}");
    let e = BackupTarget::parse("nfs://server").expect_err("malformed");
    assert!(e.to_string().contains("export path is missing"), "{e}");
}

/// `nfs://host:/export` (Longhorn's form, no ports): the MOUNT and NFS ports come from
/// the portmapper (rpcbind, with ganesha registered in it). A directory below an export
/// is a target too, as with a kernel mount; one that does not exist is refused.
#[test]
fn nfs_ports_from_the_portmapper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nfs = NfsServer::start_with_portmapper(dir.path());
    std::fs::create_dir_all(nfs.export_dir("backups").join("sub/dir")).expect("subdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let check = |url: &str| {
        let target = BackupTarget::parse(url).expect("url");
        rt.block_on(Store::check_target(&target, &Credentials::default()))
    };
    for url in [
        "nfs://127.0.0.1:/backups",
        "nfs://localhost/backups/sub/dir",
    ] {
        check(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    // The probe went where the URL said.
    assert!(
        nfs.export_dir("backups")
            .join("sub/dir/shorthorn-backupstore/probe")
            .is_dir()
    );
    let e = check("nfs://127.0.0.1:/backups/sub/none").expect_err("missing subdirectory");
    assert!(matches!(e, BackupError::NoSuchExport { .. }), "{e}");
    let e = check("nfs://127.0.0.1:/nosuchexport").expect_err("missing export");
    assert!(matches!(e, BackupError::NoSuchExport { .. }), "{e}");
}

/// The NFS object store passes object_store's own conformance checks that apply to it
/// (put/get/head/delete/list with prefixes and delimiters, ranges, odd names, copy, rename,
/// create-only puts, preconditions, missing objects) against ganesha.
#[test]
fn nfs_object_store_conformance() {
    use object_store::integration as it;
    let dir = tempfile::tempdir().expect("tempdir");
    let nfs = NfsServer::start(dir.path());
    let store: Arc<dyn ObjectStore> = Arc::new(NfsStore::new(NfsConfig {
        server: "127.0.0.1".into(),
        port: Some(nfs.port),
        mount_port: Some(nfs.mount_port),
        export: "/backups".into(),
        url: nfs.url("backups"),
        connect_timeout: Duration::from_secs(5),
        rpc_timeout: Duration::from_secs(30),
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        connections: 4,
    }));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        it::put_get_delete_list(store.as_ref()).await;
        it::get_opts(store.as_ref()).await;
        it::put_opts(store.as_ref(), false).await;
        it::list_uses_directories_correctly(store.as_ref()).await;
        it::list_with_delimiter(store.as_ref()).await;
        it::rename_and_copy(store.as_ref()).await;
        it::copy_if_not_exists(store.as_ref()).await;
        it::copy_rename_nonexistent_object(store.as_ref()).await;
        it::get_nonexistent_object(store.as_ref(), None)
            .await
            .expect_err("missing");
    });
    // What a put leaves on the server is the object alone: no temporary file.
    rt.block_on(store.put(&"k/v".into(), "x".into()))
        .expect("put");
    let names: Vec<_> = std::fs::read_dir(nfs.export_dir("backups").join("k"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["v"]);

    // A temporary file a client that died mid-put left over a day ago is removed by the
    // next full listing (the collector's); a recent one, maybe a put in progress, is kept.
    let k = nfs.export_dir("backups").join("k");
    let old = k.join(".shorthorn-tmp.4242.0.19a0.v");
    let recent = k.join(".shorthorn-tmp.4242.1.19a0.v");
    std::fs::write(&old, "partial").expect("old temporary");
    std::fs::write(&recent, "partial").expect("recent temporary");
    let status = Command::new("touch")
        .args(["-m", "-d", "2 days ago"])
        .arg(&old)
        .status()
        .expect("touch");
    assert!(status.success());
    let listed: Vec<String> = rt
        .block_on(store.list(Some(&"k".into())).collect::<Vec<_>>())
        .into_iter()
        .map(|m| m.expect("listed").location.to_string())
        .collect();
    assert_eq!(listed, ["k/v"], "temporary files are never listed");
    assert!(!old.exists(), "the stale temporary file is still there");
    assert!(recent.exists(), "a recent temporary file was removed");
}

/// ganesha SIGKILLed mid-backup and started again a few seconds later on the same ports:
/// the job reconnects (retries with backoff, writes cut off by the restart written again)
/// and completes; the backup restores byte-identical and no temporary file is left.
#[test]
fn nfs_server_restarted_mid_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nfs = NfsServer::start(dir.path());
    let t = nfs_target(nfs.url("backups"));
    let size = 128u64 << 20;
    let (mut a, src, job) = crate::backup_kit::backup_under_way(&t, size, 120 << 20, 5);
    nfs.stop();
    std::thread::sleep(Duration::from_secs(3));
    let j = a.ctl.job(&job).expect("status");
    assert_eq!(
        j.state,
        shorthorn_dataplane::proto::JobState::Running as i32,
        "gave up at once: {j:?}"
    );
    nfs.resume();
    let j = a.ctl.wait_job(&job, 300);
    assert_eq!(
        j.state,
        shorthorn_dataplane::proto::JobState::Completed as i32,
        "{}",
        j.error
    );
    let mut r = crate::backup_kit::Vol::new("restored", size);
    let st = r.restore(&t, "vola", "b1");
    assert_eq!(
        st.state,
        shorthorn_dataplane::proto::JobState::Completed as i32,
        "{}",
        st.error
    );
    assert_eq!(r.image_sha("r.img"), crate::testkit::sha256(&src));
    let leftovers: Vec<_> = walk(&nfs.export_dir("backups"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".shorthorn-tmp."))
        .collect();
    // Only the put the kill cut off (one block in flight) may have left its temporary file.
    assert!(leftovers.len() <= 1, "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A server that serves NFSv4 alone (no NFSv3, no MOUNT protocol) is refused at check time
/// with what it lacks and what to do, both with the ports given and through the portmapper,
/// instead of a bare RPC error.
#[test]
fn an_nfsv4_only_server_is_refused_naming_the_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nfs = NfsServer::start_v4_only(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for url in [
        nfs.url("backups"),
        format!("nfs://127.0.0.1:{}:/backups", nfs.port),
    ] {
        let target = BackupTarget::parse(&url).expect("url");
        let e = rt
            .block_on(Store::check_target(&target, &Credentials::default()))
            .expect_err("an NFSv4-only server");
        eprintln!("{url}: {e}");
        assert!(e.to_string().contains("NFSv3"), "{url}: {e}");
    }
}
