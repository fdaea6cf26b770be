//! Backups end to end: real replica and engine processes, data written and read by
//! qemu-img over NBD, backup and restore jobs driven over the engine's control API, against
//! a directory, s3s-fs and Versity's S3 gateway (real servers, started here).

use std::time::Duration;

use shorthorn_dataplane::backup::{BackupError, BackupTarget, Store};
use shorthorn_dataplane::proto;

use crate::backup_kit::{S3Server, Target, Vol, backup_under_way, image};
use crate::testkit::{qemu_io, sha256};

const SIZE: u64 = 48 << 20;
const BS: u64 = 2 << 20;

/// Full backup, byte-identical restore into a new volume, an incremental backup that reads
/// and uploads only the changed block, a restore of the older backup over the newer data,
/// dedup across two volumes, and a backup whose base snapshot is gone (reads everything,
/// uploads nothing new).
pub(crate) fn round_trip_incremental_dedup(t: &Target) {
    let mut a = Vol::new("vola", SIZE);
    let src = a.c.path("src.img");
    image(&src, SIZE as usize, 20 << 20, 7);
    a.write_image(&src);
    let sha1 = a.image_sha("a1.img");
    assert_eq!(sha1, sha256(&src));
    a.ctl.snapshot("create", "s1").expect("snapshot s1");
    let b1 = a.backup(t, "b1", "s1", None);
    // 10 random blocks and the pattern block: 11 stored; zero blocks are not read twice.
    assert_eq!(b1.blocks, 11, "{b1:?}");
    assert!(b1.uploaded_bytes >= 20 << 20, "{b1:?}");
    assert!(b1.manifest_url.ends_with("backup=b1&volume=vola"), "{b1:?}");

    // One block changes; the incremental backup reads and uploads only it.
    qemu_io(
        &a.c.nbd_uri(a.epoch),
        &["write -P 0x77 4194404 5000", "flush"],
    );
    let sha2 = a.image_sha("a2.img");
    a.ctl.snapshot("create", "s2").expect("snapshot s2");
    let store = t.store();
    let b2 = a.backup(t, "b2", "s2", Some("b1"));
    assert_eq!(b2.done_bytes, BS, "read only the changed block: {b2:?}");
    assert_eq!(b2.total_bytes, BS, "{b2:?}");
    assert!(
        b2.uploaded_bytes > 0 && b2.uploaded_bytes <= BS + 64,
        "{b2:?}"
    );
    let m2 = t
        .block_on(store.get_manifest("vola", "b2"))
        .expect("manifest b2");
    assert_eq!(m2.base_backup.as_deref(), Some("b1"));
    assert_eq!(m2.blocks.len(), 11);
    // Requests: 2 per changed block (HEAD, PUT) plus a fixed 8 (name taken?, base manifest,
    // marker put/delete, gc lock, manifest, index get/put); the full backup paid per block.
    assert!(b2.requests <= 10, "{b2:?}");
    assert!(b1.requests >= 2 * 11, "{b1:?}");

    // Restores: b2 into a new volume, then b1 over it (its extra data is trimmed away).
    let mut r = Vol::new("restored", SIZE);
    let st = r.restore(t, "vola", "b2");
    assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
    assert_eq!(r.image_sha("r2.img"), sha2);
    qemu_io(&r.c.nbd_uri(r.epoch), &["write -P 0x33 30000000 100000"]);
    let st = r.restore(t, "vola", "b1");
    assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
    assert_eq!(r.image_sha("r1.img"), sha1);

    // Another volume with the same data uploads nothing: blocks are shared per target.
    let mut o = Vol::new("volb", SIZE);
    o.write_image(&src);
    o.ctl.snapshot("create", "x").expect("snapshot");
    let ob = o.backup(t, "ob1", "x", None);
    assert_eq!(ob.uploaded_bytes, 0, "{ob:?}");
    assert_eq!(ob.blocks, 11);

    // The base snapshot is gone: everything is read, nothing new uploaded.
    a.ctl.snapshot("delete", "s1").expect("delete s1");
    a.ctl.snapshot("create", "s3").expect("snapshot s3");
    let b3 = a.backup(t, "b3", "s3", Some("b1"));
    assert_eq!(b3.uploaded_bytes, 0, "{b3:?}");
    assert!(b3.done_bytes >= 11 * BS, "{b3:?}");

    let vols = t.block_on(store.list_volumes()).expect("list volumes");
    assert_eq!(vols, ["vola", "volb"]);
    let names: Vec<_> = t
        .block_on(store.list_backups("vola"))
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["b1", "b2", "b3"]);
    // A second backup of the same name is refused.
    let req = a.backup_request(t, "b3", "s3", None);
    let job = a.ctl.start_backup(req).expect("start");
    let st = a.ctl.wait_job(&job, 60);
    assert!(st.error.contains("already exists"), "{st:?}");
}

/// A disaster-recovery standby's restores: over the data of b1, b2 writes only the block
/// that changed and zeroes the one that became zeros, without fetching it; the result is
/// b2 byte for byte. A base gone from the target, or data of no known backup, is compared
/// block by block with the volume's own data.
#[test]
fn incremental_restore_writes_only_what_changed_since_the_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::file(dir.path());
    let mut a = Vol::new("vola", SIZE);
    let src = a.c.path("src.img");
    image(&src, SIZE as usize, 20 << 20, 7);
    a.write_image(&src);
    let uri = a.c.nbd_uri(a.epoch);
    qemu_io(&uri, &["write -P 0x55 10485760 2097152", "flush"]);
    a.ctl.snapshot("create", "s1").expect("snapshot s1");
    a.backup(&t, "b1", "s1", None);
    let mut r = Vol::new("standby", SIZE);
    let full = r.restore(&t, "vola", "b1");
    assert_eq!(
        full.state,
        proto::JobState::Completed as i32,
        "{}",
        full.error
    );
    assert!(
        full.uploaded_bytes >= 10 * BS,
        "a full restore fetches every block: {full:?}"
    );

    qemu_io(
        &uri,
        &[
            "write -P 0x77 4194404 5000",
            "write -z 10485760 2097152",
            "flush",
        ],
    );
    let sha2 = a.image_sha("a2.img");
    a.ctl.snapshot("create", "s2").expect("snapshot s2");
    a.backup(&t, "b2", "s2", Some("b1"));
    let inc = r.restore_over(&t, "vola", "b2", "b1");
    assert_eq!(
        inc.state,
        proto::JobState::Completed as i32,
        "{}",
        inc.error
    );
    assert_eq!(
        inc.uploaded_bytes, BS,
        "only the changed block is fetched (the zeroed one is trimmed): {inc:?}"
    );
    assert_eq!(r.image_sha("r2.img"), sha2, "the standby holds b2");

    // Run again over the same base (as after a cut-short restore): the same data.
    let again = r.restore_over(&t, "vola", "b2", "b1");
    assert_eq!(
        again.state,
        proto::JobState::Completed as i32,
        "{}",
        again.error
    );
    assert_eq!(r.image_sha("r2b.img"), sha2);

    // The base deleted on the target: the volume's own blocks are compared, so a volume
    // holding b2 fetches nothing, and one holding other data gets b2 whole.
    let same = r.restore_over(&t, "vola", "b2", "gone");
    assert_eq!(
        same.state,
        proto::JobState::Completed as i32,
        "{}",
        same.error
    );
    assert_eq!(same.uploaded_bytes, 0, "{same:?}");
    assert_eq!(r.image_sha("r2c.img"), sha2);
    let mut o = Vol::new("other", SIZE);
    qemu_io(&o.c.nbd_uri(o.epoch), &["write -P 0x11 0 4194304", "flush"]);
    let st = o.restore_over(&t, "vola", "b2", "gone");
    assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
    assert!(st.uploaded_bytes >= 10 * BS, "{st:?}");
    assert_eq!(o.image_sha("o2.img"), sha2);

    // Data of no known backup (a restore cut short, its backup then deleted): with
    // compare_local only the blocks that differ from b2 are fetched, and a block that
    // should be zeros is zeroed.
    let r_uri = r.c.nbd_uri(r.epoch);
    qemu_io(
        &r_uri,
        &[
            "write -P 0x33 2097152 4096",
            "write -P 0x44 10485760 4096",
            "flush",
        ],
    );
    let mixed = r.restore_with(&t, "vola", "b2", "", true);
    assert_eq!(
        mixed.state,
        proto::JobState::Completed as i32,
        "{}",
        mixed.error
    );
    assert_eq!(
        mixed.uploaded_bytes, BS,
        "one differing data block: {mixed:?}"
    );
    assert_eq!(r.image_sha("r2d.img"), sha2, "the mix is b2 again");
}

#[test]
fn backup_restore_file_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::file(&dir.path().join("target"));
    round_trip_incremental_dedup(&t);
}

#[test]
fn backup_restore_s3s_fs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start("s3s-fs", dir.path(), "backupbucket");
    round_trip_incremental_dedup(&s3.target("backupbucket"));
}

/// The S3 server SIGKILLed mid-backup and restarted a few seconds later: the job retries
/// with backoff and completes; the backup restores byte-identical.
#[test]
fn s3_server_restarted_mid_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s3 = S3Server::start("s3s-fs", dir.path(), "backupbucket");
    let t = s3.target("backupbucket");
    let size = 128u64 << 20;
    let (mut a, src, job) = backup_under_way(&t, size, 120 << 20, 5);
    s3.stop();
    std::thread::sleep(Duration::from_secs(3));
    let j = a.ctl.job(&job).expect("status");
    assert_eq!(
        j.state,
        proto::JobState::Running as i32,
        "gave up at once: {j:?}"
    );
    s3.resume();
    let j = a.ctl.wait_job(&job, 300);
    assert_eq!(j.state, proto::JobState::Completed as i32, "{}", j.error);
    let mut r = Vol::new("restored", size);
    let st = r.restore(&t, "vola", "b1");
    assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
    assert_eq!(r.image_sha("r.img"), sha256(&src));
}

#[test]
fn backup_restore_versitygw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start("versitygw", dir.path(), "backupbucket");
    round_trip_incremental_dedup(&s3.target("backupbucket"));
}

/// check(): wrong credentials, a missing bucket, an unreachable server and a malformed URL
/// each give one clear message, fast; the good target passes with a put/get/delete probe.
fn check_messages(s3: &S3Server, strict_buckets: bool) {
    let t = s3.target("backupbucket");
    let check = |t: &Target| {
        let target = BackupTarget::parse(&t.url).expect("url");
        t.block_on(Store::check_target(&target, &t.credentials()))
    };
    check(&t).expect("good target passes");
    let wrong = s3.target_with("backupbucket", &s3.access_key, "not-the-secret");
    let e = check(&wrong).expect_err("wrong secret");
    assert!(matches!(e, BackupError::AccessDenied { .. }), "{e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    // s3s-fs creates a bucket's directory on the first put into it; versitygw refuses.
    if strict_buckets {
        let e = check(&s3.target("nosuchbucket")).expect_err("missing bucket");
        assert!(matches!(e, BackupError::NoSuchBucket { .. }), "{e}");
        assert!(e.to_string().contains("bucket does not exist"), "{e}");
    }
    let mut down = s3.target("backupbucket");
    down.creds.insert(
        "AWS_ENDPOINTS".into(),
        format!("http://127.0.0.1:{}", crate::backup_kit::free_port()),
    );
    let started = std::time::Instant::now();
    let e = check(&down).expect_err("nothing listens");
    assert!(matches!(e, BackupError::Unreachable { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let e = BackupTarget::parse("s3://backupbucket/backupstore").expect_err("malformed");
    assert!(e.to_string().contains("region is missing"), "{e}");
}

#[test]
fn check_reasons_s3s_fs() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_messages(
        &S3Server::start("s3s-fs", dir.path(), "backupbucket"),
        false,
    );
}

#[test]
fn check_reasons_versitygw() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_messages(
        &S3Server::start("versitygw", dir.path(), "backupbucket"),
        true,
    );
}

/// A corrupted block and a deleted block on the target: verify names each; a restore
/// fails naming offset, hash and backup; a backup that does not use them still restores.
#[test]
fn damaged_blocks_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::file(&dir.path().join("target"));
    let mut a = Vol::new("vola", SIZE);
    qemu_io(
        &a.c.nbd_uri(1),
        &["write -P 0x11 0 4194304", "write -P 0x22 10485760 2097152"],
    );
    a.ctl.snapshot("create", "s1").expect("s1");
    a.backup(&t, "b1", "s1", None);
    let mut other = Vol::new("volo", SIZE);
    qemu_io(&other.c.nbd_uri(1), &["write -P 0x44 0 2097152"]);
    let sha_other = other.image_sha("o.img");
    other.ctl.snapshot("create", "s").expect("s");
    other.backup(&t, "ob", "s", None);

    let store = t.store();
    let m = t
        .block_on(store.get_manifest("vola", "b1"))
        .expect("manifest");
    // Blocks at 0 and 2 MiB are identical (0x11): one object. Corrupt it; delete 10 MiB's.
    assert_eq!(m.blocks.len(), 3);
    let (h0, h10) = (m.blocks[0].1.clone(), m.blocks[2].1.clone());
    let path = dir.path().join("target").join(store.block_location(&h0));
    let mut raw = std::fs::read(&path).expect("block file");
    let n = raw.len();
    raw[n - 1] ^= 0xff;
    std::fs::write(&path, raw).expect("corrupt");
    t.block_on(store.remove_block(&h10)).expect("remove");

    let bad = t.block_on(store.verify("vola", "b1", 4)).expect("verify");
    let named: Vec<_> = bad.iter().map(|b| (b.offset, b.hash.clone())).collect();
    assert_eq!(
        named,
        [
            (0, h0.clone()),
            (2 << 20, h0.clone()),
            (10 << 20, h10.clone())
        ],
        "{bad:?}"
    );
    assert!(bad[2].reason.contains("missing"), "{bad:?}");
    assert!(
        t.block_on(store.verify("volo", "ob", 4))
            .expect("verify")
            .is_empty()
    );

    let mut r = Vol::new("restored", SIZE);
    let st = r.restore(&t, "vola", "b1");
    assert_eq!(st.state, proto::JobState::Error as i32);
    assert!(st.error.contains("backup=b1&volume=vola"), "{}", st.error);
    assert!(
        st.error.contains(&h0) || st.error.contains(&h10),
        "{}",
        st.error
    );
    assert!(st.error.contains("offset"), "{}", st.error);
    let st = r.restore(&t, "volo", "ob");
    assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
    assert_eq!(r.image_sha("r.img"), sha_other);
}

/// The engine SIGKILLed mid-backup: no manifest, the retry (same name) completes, the
/// volume's data is untouched.
#[test]
fn engine_killed_mid_backup_leaves_no_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::file(&dir.path().join("target"));
    let size = 256u64 << 20;
    let (mut a, src, _job) = backup_under_way(&t, size, 200 << 20, 3);
    a.restart_engine();
    let store = t.store();
    assert!(matches!(
        t.block_on(store.get_manifest("vola", "b1")),
        Err(BackupError::BackupNotFound { .. })
    ));
    assert!(
        t.block_on(store.list_backups("vola"))
            .expect("list")
            .is_empty()
    );
    assert_eq!(a.image_sha("a.img"), sha256(&src));
    let b = a.backup(&t, "b1", "s1", None);
    assert_eq!(b.blocks, 100, "{b:?}");
    let mut r = Vol::new("restored", size);
    let st = r.restore(&t, "vola", "b1");
    assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
    assert_eq!(r.image_sha("r.img"), sha256(&src));
}

/// Two volumes sharing blocks back up concurrently while a backup is deleted and the
/// collector runs: every remaining backup restores byte-identical, and once no backup is
/// in progress the deleted backup's own blocks are collected.
#[test]
fn concurrent_backups_with_delete_and_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::file(&dir.path().join("target"));
    let size = 64u64 << 20;
    let src = dir.path().join("src.img");
    image(&src, size as usize, 40 << 20, 11);
    let mut a = Vol::new("vola", size);
    let mut b = Vol::new("volb", size);
    a.write_image(&src);
    b.write_image(&src);
    // An old backup of volb with its own blocks, to be deleted.
    qemu_io(&b.c.nbd_uri(1), &["write -P 0x99 50331648 4194304"]);
    b.ctl.snapshot("create", "old").expect("old");
    b.backup(&t, "old", "old", None);
    qemu_io(&b.c.nbd_uri(1), &["write -P 0x00 50331648 4194304"]);
    let sha = sha256(&src);
    a.ctl.snapshot("create", "s").expect("s");
    b.ctl.snapshot("create", "s").expect("s");
    let store = t.store();
    let ja = a
        .ctl
        .start_backup(a.backup_request(&t, "a1", "s", None))
        .expect("a1");
    let jb = b
        .ctl
        .start_backup(b.backup_request(&t, "b1", "s", None))
        .expect("b1");
    t.block_on(store.delete_backup("volb", "old"))
        .expect("delete old");
    // A collection before the jobs' markers are up may take the old backup's blocks the
    // jobs were about to reuse (they upload them again then); wait for the markers, or for
    // a job to have finished (its manifest then names the shared blocks).
    loop {
        let marked = t.block_on(store.in_progress()).expect("in progress").len();
        let running = [(&mut a, &ja), (&mut b, &jb)]
            .into_iter()
            .all(|(v, j)| v.ctl.job(j).expect("status").state == proto::JobState::Running as i32);
        if marked == 2 || !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut deferred = 0;
    let mut deleted = 0;
    loop {
        let r = t.block_on(store.gc(Duration::ZERO)).expect("gc");
        deleted += r.deleted;
        let running = [(&mut a, &ja), (&mut b, &jb)]
            .into_iter()
            .any(|(v, j)| v.ctl.job(j).expect("status").state == proto::JobState::Running as i32);
        if r.deferred_by.is_empty() && !running {
            break;
        }
        deferred += u64::from(!r.deferred_by.is_empty());
        std::thread::sleep(Duration::from_millis(20));
    }
    for (v, j) in [(&mut a, &ja), (&mut b, &jb)] {
        let s = v.ctl.wait_job(j, 120);
        assert_eq!(s.state, proto::JobState::Completed as i32, "{}", s.error);
    }
    assert_eq!(
        deleted, 1,
        "the old backup's 0x99 block (both its blocks are the same) (deferred {deferred} times)"
    );
    for (vol, name) in [("vola", "a1"), ("volb", "b1")] {
        assert!(
            t.block_on(store.verify(vol, name, 4))
                .expect("verify")
                .is_empty()
        );
        let mut r = Vol::new("restored", size);
        let st = r.restore(&t, vol, name);
        assert_eq!(st.state, proto::JobState::Completed as i32, "{}", st.error);
        assert_eq!(r.image_sha("r.img"), sha);
    }
}
