//! The CSI driver (`shorthorn csi --mode all`) on a dev cluster, driven as Kubernetes drives
//! it: over its unix socket by csi-sanity (the CSI conformance suite, built by
//! `tools/csi-sanity/build.sh`) and by a gRPC client making the calls an external
//! provisioner and attacher make.

mod testkit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use shorthorn_csi::proto::{
    self, controller_client::ControllerClient, identity_client::IdentityClient,
    node_client::NodeClient, volume_capability,
};
use testkit::mariadb::{MariaDb, mariadb_sql};
use testkit::{DevCluster, read_image, run, sha256, text_of, write_random};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

/// `shorthorn csi` running against a dev cluster; killed on drop.
struct Plugin {
    child: Child,
    socket: PathBuf,
}

impl Plugin {
    fn start(cluster: &DevCluster, node: &str) -> Plugin {
        let socket = cluster.dir().join(format!("csi-{node}.sock"));
        let endpoint = format!("unix://{}", socket.display());
        let log = std::fs::File::create(cluster.dir().join(format!("csi-{node}.log")))
            .expect("plugin log");
        let child = cluster
            .command(&[
                "csi",
                "--endpoint",
                &endpoint,
                "--node-id",
                node,
                "--mode",
                "all",
            ])
            .stderr(log)
            .spawn()
            .expect("starts shorthorn csi");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the CSI socket never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
        Plugin { child, socket }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:1")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connects to the CSI socket")
}

fn mount_cap(fs: &str) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs.into(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create(name: &str, bytes: i64, params: &[(&str, &str)]) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(proto::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap("ext4")],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn controller_answers_a_provisioner_and_an_attacher_with_the_right_codes() {
    let cluster = DevCluster::up();
    let plugin = Plugin::start(&cluster, "node-1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ch = channel(&plugin.socket).await;
        let mut identity = IdentityClient::new(ch.clone());
        let mut ctl = ControllerClient::new(ch);

        let info = identity
            .get_plugin_info(proto::GetPluginInfoRequest {})
            .await
            .expect("plugin info")
            .into_inner();
        assert_eq!(info.name, "driver.shorthorn.io");
        let probe = identity
            .probe(proto::ProbeRequest {})
            .await
            .expect("probe")
            .into_inner();
        assert_eq!(
            probe.ready,
            Some(true),
            "a manager answers, so the plugin is ready"
        );

        // Bad StorageClass parameters are refused before anything is created.
        for params in [
            vec![("numberOfReplica", "3")],
            vec![("numberOfReplicas", "0")],
            vec![("numberOfReplicas", "100")],
            vec![("fsType", "btrfs")],
        ] {
            let err = ctl
                .create_volume(create("bad", 64 << 20, &params))
                .await
                .expect_err("bad parameters are refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{params:?}: {err:?}");
            assert!(!err.message().is_empty());
        }
        let err = ctl
            .create_volume(create("restored", 64 << 20, &[("fromBackup", "s3://b/x")]))
            .await
            .expect_err("a malformed backup URL");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        // Far beyond what the dev disks hold: no placement fits, and nothing is left behind.
        let err = ctl
            .create_volume(create("huge", 1 << 50, &[]))
            .await
            .expect_err("beyond capacity");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        let (found, _, _) = cluster.cli(&["volume", "get", "huge"]);
        assert!(
            !found,
            "a volume that could not be placed is not left behind"
        );

        // Sizes round up to 2 MiB; the same request again is the same volume.
        let made = ctl
            .create_volume(create("db", (10 << 20) + 1, &[("numberOfReplicas", "2")]))
            .await
            .expect("create")
            .into_inner()
            .volume
            .expect("volume");
        assert_eq!(made.capacity_bytes, 12 << 20);
        assert_eq!(made.volume_id, "db");
        let again = ctl
            .create_volume(create("db", (10 << 20) + 1, &[("numberOfReplicas", "2")]))
            .await
            .expect("create again")
            .into_inner();
        assert_eq!(again.volume.expect("volume").capacity_bytes, 12 << 20);
        let err = ctl
            .create_volume(create("db", 64 << 20, &[]))
            .await
            .expect_err("same name, other size");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        let volume = cluster.json(&["volume", "get", "db"]);
        assert_eq!(volume["numberOfReplicas"], 2, "{volume}");

        // Publish attaches on that node (twice is fine), unpublish detaches.
        let publish = proto::ControllerPublishVolumeRequest {
            volume_id: "db".into(),
            node_id: "node-2".into(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        };
        ctl.controller_publish_volume(publish.clone())
            .await
            .expect("publish");
        ctl.controller_publish_volume(publish.clone())
            .await
            .expect("publish again");
        let volume = cluster.json(&["volume", "get", "db"]);
        assert_eq!(volume["attachment"]["node"], "node-2", "{volume}");
        assert_eq!(volume["state"], "attached", "{volume}");
        let mut elsewhere = publish.clone();
        elsewhere.node_id = "node-3".into();
        let err = ctl
            .controller_publish_volume(elsewhere)
            .await
            .expect_err("attached elsewhere");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let mut nowhere = publish.clone();
        nowhere.volume_id = "nope".into();
        let err = ctl
            .controller_publish_volume(nowhere)
            .await
            .expect_err("no volume");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");

        // A snapshot of the attached volume; `type: bak` needs a backup target, which this
        // cluster has not.
        let snap = ctl
            .create_snapshot(proto::CreateSnapshotRequest {
                source_volume_id: "db".into(),
                name: "snap-1".into(),
                parameters: [("type".to_string(), "snap".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect("snapshot")
            .into_inner()
            .snapshot
            .expect("snapshot");
        assert!(snap.ready_to_use, "{snap:?}");
        let listed = ctl
            .list_snapshots(proto::ListSnapshotsRequest {
                source_volume_id: "db".into(),
                ..Default::default()
            })
            .await
            .expect("list snapshots")
            .into_inner();
        assert_eq!(listed.entries.len(), 1);
        let err = ctl
            .create_snapshot(proto::CreateSnapshotRequest {
                source_volume_id: "db".into(),
                name: "bak-1".into(),
                parameters: [("type".to_string(), "bak".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect_err("no backup target");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("no backup target is set"), "{err:?}");

        ctl.controller_expand_volume(proto::ControllerExpandVolumeRequest {
            volume_id: "db".into(),
            capacity_range: Some(proto::CapacityRange {
                required_bytes: 32 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("expand");
        assert_eq!(cluster.json(&["volume", "get", "db"])["size"], 32 << 20);

        let unpublish = proto::ControllerUnpublishVolumeRequest {
            volume_id: "db".into(),
            node_id: "node-2".into(),
            ..Default::default()
        };
        ctl.controller_unpublish_volume(unpublish.clone())
            .await
            .expect("unpublish");
        ctl.controller_unpublish_volume(unpublish)
            .await
            .expect("unpublish again");
        assert_eq!(cluster.json(&["volume", "get", "db"])["state"], "detached");

        // Paging walks every volume once.
        for n in 0..3 {
            ctl.create_volume(create(
                &format!("page-{n}"),
                4 << 20,
                &[("numberOfReplicas", "1")],
            ))
            .await
            .expect("create");
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = ctl
                .list_volumes(proto::ListVolumesRequest {
                    max_entries: 2,
                    starting_token: token.clone(),
                })
                .await
                .expect("list")
                .into_inner();
            assert!(page.entries.len() <= 2);
            seen.extend(
                page.entries
                    .into_iter()
                    .map(|e| e.volume.expect("v").volume_id),
            );
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!(seen, ["db", "page-0", "page-1", "page-2"]);

        for id in ["db", "db", "never-was"] {
            ctl.delete_volume(proto::DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            })
            .await
            .expect("delete is idempotent");
        }
    });
}

#[test]
fn a_volume_from_a_backup_is_restored_before_it_can_be_published() {
    // The StorageClass parameter fromBackup: CreateVolume restores the backup into the new
    // volume; ControllerPublish answers ABORTED (the attacher retries) until the restore
    // completed, then attaches it, and the bytes read back are the backed-up ones.
    let cluster = DevCluster::up();
    let store = tempfile::tempdir().expect("store dir");
    let target = format!("file://{}", store.path().display());
    cluster.ok(&["setting", "set", "backupTarget", &target]);
    cluster.create_volume("src", 32, 2, &[]);
    let endpoint = cluster.attach("src", "node-1");
    let written = write_random(&endpoint, 12);
    let backup = cluster.json(&["backup", "create", "src", "--name", "b1", "--wait"]);
    assert_eq!(backup["state"], "completed", "{backup}");
    let url = backup["url"].as_str().expect("url").to_string();

    let plugin = Plugin::start(&cluster, "node-1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let restored = rt.block_on(async {
        let mut ctl = ControllerClient::new(channel(&plugin.socket).await);
        let too_small = ctl
            .create_volume(create("pvc-small", 16 << 20, &[("fromBackup", &url)]))
            .await
            .expect_err("a volume smaller than the backup");
        assert_eq!(too_small.code(), Code::InvalidArgument, "{too_small:?}");
        let missing = format!("{target}?backup=nope&volume=src");
        let gone = ctl
            .create_volume(create("pvc-gone", 32 << 20, &[("fromBackup", &missing)]))
            .await
            .expect_err("a backup that is not on the target");
        assert_eq!(gone.code(), Code::NotFound, "{gone:?}");

        let params = [("fromBackup", url.as_str()), ("numberOfReplicas", "2")];
        let made = ctl
            .create_volume(create("pvc-restored", 32 << 20, &params))
            .await
            .expect("create from backup")
            .into_inner()
            .volume
            .expect("volume");
        assert_eq!(made.capacity_bytes, 32 << 20);
        // Same name and source again: the same volume. Same name, no source: not the same.
        ctl.create_volume(create("pvc-restored", 32 << 20, &params))
            .await
            .expect("idempotent create from backup");
        let other = ctl
            .create_volume(create("pvc-restored", 32 << 20, &[]))
            .await
            .expect_err("same name without the backup");
        assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");

        let publish = proto::ControllerPublishVolumeRequest {
            volume_id: made.volume_id.clone(),
            node_id: "node-1".into(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match ctl.controller_publish_volume(publish.clone()).await {
                Ok(_) => break,
                Err(e) if e.code() == Code::Aborted => {
                    assert!(
                        e.message().contains("being restored")
                            || e.message().contains("still detaching"),
                        "{e:?}"
                    );
                    assert!(
                        Instant::now() < deadline,
                        "the restore never completed: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("publish of the restored volume: {e:?}"),
            }
        }
        made.volume_id
    });
    let volume = cluster.wait_volume(&restored, "attached", |v| v["state"] == "attached");
    assert_eq!(volume["restore"]["state"], "completed", "{volume}");
    let back = written.work.path().join("back.img");
    read_image(
        volume["attachment"]["endpoint"].as_str().expect("endpoint"),
        &back,
    );
    let head = written.work.path().join("head.img");
    let bytes = std::fs::read(&back).expect("read back");
    std::fs::write(&head, &bytes[..12 << 20]).expect("head");
    assert_eq!(
        sha256(&written.data),
        sha256(&head),
        "restored bytes differ"
    );
    assert!(
        bytes[12 << 20..].iter().all(|b| *b == 0),
        "past the backed-up data the volume reads zeros"
    );
}

/// Publishes `volume_id` on `node`, retrying while the controller answers ABORTED (a
/// restore running, a detach finishing), as the external-attacher does.
async fn publish_retrying(ctl: &mut ControllerClient<Channel>, volume_id: &str, node: &str) {
    let publish = proto::ControllerPublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: node.into(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match ctl.controller_publish_volume(publish.clone()).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::Aborted => {
                assert!(Instant::now() < deadline, "never published: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish of {volume_id}: {e:?}"),
        }
    }
}

#[test]
fn a_bak_snapshot_is_a_backup_that_restores_into_a_new_volume_and_is_deleted_with_it() {
    // VolumeSnapshotClass `type: bak`: CreateSnapshot backs the detached volume up to the
    // target (ready once completed), ListSnapshots shows it as `bak:`, CreateVolume from it
    // restores the bytes, DeleteSnapshot removes the backup from the target and the log.
    let cluster = DevCluster::up();
    let store = tempfile::tempdir().expect("store dir");
    let target = format!("file://{}", store.path().display());
    cluster.ok(&["setting", "set", "backupTarget", &target]);
    cluster.create_volume("src", 32, 2, &[]);
    let endpoint = cluster.attach("src", "node-1");
    let written = write_random(&endpoint, 12);
    cluster.detach("src");

    let plugin = Plugin::start(&cluster, "node-1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (snapshot_id, restored) = rt.block_on(async {
        let mut ctl = ControllerClient::new(channel(&plugin.socket).await);
        let request = |kind: &str| proto::CreateSnapshotRequest {
            source_volume_id: "src".into(),
            name: "snapshot-bak-1".into(),
            parameters: [("type".to_string(), kind.to_string())].into(),
            ..Default::default()
        };
        // Repeated with the same name: the same backup, ready once it completed.
        let deadline = Instant::now() + Duration::from_secs(120);
        let snap = loop {
            let snap = ctl
                .create_snapshot(request("bak"))
                .await
                .expect("create a bak snapshot")
                .into_inner()
                .snapshot
                .expect("snapshot");
            assert_eq!(snap.snapshot_id, "bak:src/snapshot-bak-1");
            assert_eq!(snap.source_volume_id, "src");
            if snap.ready_to_use {
                break snap;
            }
            assert!(Instant::now() < deadline, "the backup never completed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(snap.size_bytes, 32 << 20);
        let taken = ctl
            .create_snapshot(request("snap"))
            .await
            .expect_err("the name is the backup's");
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

        // Listed once, as the backup (its own snapshot is part of it), by volume and by id.
        for list in [
            proto::ListSnapshotsRequest {
                source_volume_id: "src".into(),
                ..Default::default()
            },
            proto::ListSnapshotsRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            },
        ] {
            let listed = ctl
                .list_snapshots(list)
                .await
                .expect("list snapshots")
                .into_inner();
            let ids: Vec<_> = listed
                .entries
                .iter()
                .filter_map(|e| e.snapshot.as_ref())
                .map(|s| (s.snapshot_id.as_str(), s.ready_to_use))
                .collect();
            assert_eq!(ids, [("bak:src/snapshot-bak-1", true)]);
        }

        let mut from = create("pvc-from-bak", 32 << 20, &[("numberOfReplicas", "2")]);
        from.volume_content_source = Some(proto::VolumeContentSource {
            r#type: Some(proto::volume_content_source::Type::Snapshot(
                proto::volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let made = ctl
            .create_volume(from.clone())
            .await
            .expect("create from the bak snapshot")
            .into_inner()
            .volume
            .expect("volume");
        ctl.create_volume(from)
            .await
            .expect("idempotent create from the bak snapshot");
        publish_retrying(&mut ctl, &made.volume_id, "node-1").await;
        (snap.snapshot_id, made.volume_id)
    });
    let volume = cluster.wait_volume(&restored, "attached", |v| v["state"] == "attached");
    assert_eq!(volume["restore"]["state"], "completed", "{volume}");
    assert!(
        volume["restore"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("backup=snapshot-bak-1")),
        "{volume}"
    );
    let back = written.work.path().join("back.img");
    read_image(
        volume["attachment"]["endpoint"].as_str().expect("endpoint"),
        &back,
    );
    let head = written.work.path().join("head.img");
    let bytes = std::fs::read(&back).expect("read back");
    std::fs::write(&head, &bytes[..12 << 20]).expect("head");
    assert_eq!(
        sha256(&written.data),
        sha256(&head),
        "restored bytes differ"
    );

    let listed = |cluster: &DevCluster| {
        cluster
            .json(&["backup", "ls"])
            .as_array()
            .expect("backups")
            .iter()
            .filter_map(|b| b["name"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&cluster), ["snapshot-bak-1"]);
    rt.block_on(async {
        let mut ctl = ControllerClient::new(channel(&plugin.socket).await);
        let delete = proto::DeleteSnapshotRequest {
            snapshot_id: snapshot_id.clone(),
            ..Default::default()
        };
        ctl.delete_snapshot(delete.clone())
            .await
            .expect("delete the bak snapshot");
        ctl.delete_snapshot(delete).await.expect("delete it again");
        let listed = ctl
            .list_snapshots(proto::ListSnapshotsRequest {
                source_volume_id: "src".into(),
                ..Default::default()
            })
            .await
            .expect("list snapshots")
            .into_inner();
        assert!(listed.entries.is_empty(), "{listed:?}");
        let mut from = create("pvc-from-gone", 32 << 20, &[]);
        from.volume_content_source = Some(proto::VolumeContentSource {
            r#type: Some(proto::volume_content_source::Type::Snapshot(
                proto::volume_content_source::SnapshotSource { snapshot_id },
            )),
        });
        let gone = ctl
            .create_volume(from)
            .await
            .expect_err("the backup is deleted");
        assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    });
    assert!(listed(&cluster).is_empty(), "the backup is still listed");
    let src = cluster.json(&["volume", "get", "src"]);
    assert!(
        src["snapshots"].get("snapshot-bak-1").is_none(),
        "the backup's own snapshot is left behind: {src}"
    );
}

#[test]
fn volumes_from_a_snap_snapshot_and_clones_are_copied_before_they_can_be_published() {
    // CreateVolume with a `snap:` content source copies the snapshot's bytes (not the
    // writes after it) into the new volume; with a volume content source it clones the
    // volume as it is; a size below the source's is OUT_OF_RANGE, an unknown source
    // NOT_FOUND; ControllerPublish answers ABORTED until the copy completed; the response
    // names its content source.
    let cluster = DevCluster::up();
    cluster.create_volume("src", 32, 2, &[]);
    let endpoint = cluster.attach("src", "node-1");
    let first = write_random(&endpoint, 12);
    let plugin = Plugin::start(&cluster, "node-1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let snapshot_id = rt.block_on(async {
        let mut ctl = ControllerClient::new(channel(&plugin.socket).await);
        let snap = ctl
            .create_snapshot(proto::CreateSnapshotRequest {
                source_volume_id: "src".into(),
                name: "snapshot-1".into(),
                ..Default::default()
            })
            .await
            .expect("snapshot")
            .into_inner()
            .snapshot
            .expect("snapshot");
        assert!(snap.ready_to_use, "{snap:?}");
        snap.snapshot_id
    });
    // Written after the snapshot: the clone has these, the copy of the snapshot not.
    let later = write_random(&endpoint, 12);
    cluster.detach("src");

    let source =
        |t: proto::volume_content_source::Type| proto::VolumeContentSource { r#type: Some(t) };
    let of_snapshot = source(proto::volume_content_source::Type::Snapshot(
        proto::volume_content_source::SnapshotSource {
            snapshot_id: snapshot_id.clone(),
        },
    ));
    let of_volume = |id: &str| {
        source(proto::volume_content_source::Type::Volume(
            proto::volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        ))
    };
    let made = rt.block_on(async {
        let mut ctl = ControllerClient::new(channel(&plugin.socket).await);
        let mut made = Vec::new();
        for (name, content) in [
            ("pvc-from-snap", of_snapshot.clone()),
            ("pvc-clone", of_volume("src")),
        ] {
            let mut small = create(name, 16 << 20, &[]);
            small.volume_content_source = Some(content.clone());
            let err = ctl.create_volume(small).await.expect_err("too small");
            assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
            let mut req = create(name, 32 << 20, &[("numberOfReplicas", "2")]);
            req.volume_content_source = Some(content.clone());
            let volume = ctl
                .create_volume(req.clone())
                .await
                .expect("create from the source")
                .into_inner()
                .volume
                .expect("volume");
            assert_eq!(volume.content_source.as_ref(), Some(&content));
            ctl.create_volume(req).await.expect("idempotent");
            let other = ctl
                .create_volume(create(name, 32 << 20, &[("numberOfReplicas", "2")]))
                .await
                .expect_err("same name, no source");
            assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
            made.push(volume.volume_id);
        }
        for content in [
            of_volume("ghost"),
            source(proto::volume_content_source::Type::Snapshot(
                proto::volume_content_source::SnapshotSource {
                    snapshot_id: "snap:src/nope".into(),
                },
            )),
        ] {
            let mut req = create("pvc-nothing", 32 << 20, &[]);
            req.volume_content_source = Some(content);
            let err = ctl.create_volume(req).await.expect_err("unknown source");
            assert_eq!(err.code(), Code::NotFound, "{err:?}");
        }
        for (id, node) in made.iter().zip(["node-1", "node-2"]) {
            publish_retrying(&mut ctl, id, node).await;
        }
        made
    });
    for (id, want) in made.iter().zip([&first, &later]) {
        let volume = cluster.wait_volume(id, "attached", |v| v["state"] == "attached");
        assert_eq!(volume["restore"]["state"], "completed", "{volume}");
        let work = want.work.path();
        let back = work.join(format!("{id}.img"));
        read_image(text_of(&volume["attachment"]["endpoint"]).as_str(), &back);
        let bytes = std::fs::read(&back).expect("read back");
        let head = work.join(format!("{id}-head.img"));
        std::fs::write(&head, &bytes[..12 << 20]).expect("head");
        assert_eq!(
            sha256(&want.data),
            sha256(&head),
            "{id}: copied bytes differ"
        );
        assert!(
            bytes[12 << 20..].iter().all(|b| *b == 0),
            "{id}: zeros after"
        );
    }
}

/// Builds csi-sanity (cached under /var/tmp/shorthorn-tools) and returns its path.
fn csi_sanity() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/csi-sanity/build.sh");
    let out = Command::new(&script)
        .output()
        .expect("runs tools/csi-sanity/build.sh");
    assert!(
        out.status.success(),
        "building csi-sanity failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn csi_sanity_passes_identity_controller_and_node_specs() {
    let sanity = csi_sanity();
    let cluster = DevCluster::up();
    let plugin = Plugin::start(&cluster, "node-1");
    let endpoint = format!("unix://{}", plugin.socket.display());
    // Once with filesystem volumes (mkfs, mount, bind mounts, expansion with the filesystem
    // grown) and once with raw block volumes (the loop device bound onto a file).
    for access in ["mount", "block"] {
        let work = cluster.dir().join(format!("sanity-{access}"));
        std::fs::create_dir_all(&work).expect("sanity dir");
        // Snapshot specs snapshot detached volumes: the managers attach them internally
        // for it. Volumes from a snapshot, and clones, are copied from the source's
        // replicas before they can be published; every spec runs.
        let out = Command::new(&sanity)
            .arg(format!("--csi.endpoint={endpoint}"))
            .arg(format!("--csi.mountdir={}", work.join("mount").display()))
            .arg(format!(
                "--csi.stagingdir={}",
                work.join("staging").display()
            ))
            .arg(format!("--csi.testvolumesize={}", 64 << 20))
            .arg(format!("--csi.testvolumeexpandsize={}", 128 << 20))
            .arg(format!("--csi.testvolumeaccesstype={access}"))
            .arg("--csi.testvolumeparameters=")
            .arg("--ginkgo.no-color")
            .output()
            .expect("runs csi-sanity");
        let stdout = String::from_utf8_lossy(&out.stdout);
        std::fs::write(work.join("sanity.log"), stdout.as_bytes()).ok();
        let summary: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("Passed") || l.contains("FAIL") || l.contains("Ran "))
            .collect();
        eprintln!("{access}: {}", summary.join("\n"));
        assert!(
            out.status.success(),
            "csi-sanity ({access} volumes) failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The CSI calls a kubelet and the external-attacher make to run a pod on `node` with the
/// volume mounted at `target`: ControllerPublish, NodeStage, NodePublish.
async fn mount_on(
    ctl: &mut ControllerClient<Channel>,
    node: &mut NodeClient<Channel>,
    volume: &str,
    node_id: &str,
    staging: &Path,
    target: &Path,
) {
    let cap = mount_cap("ext4");
    let published = loop {
        match ctl
            .controller_publish_volume(proto::ControllerPublishVolumeRequest {
                volume_id: volume.into(),
                node_id: node_id.into(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
        {
            Ok(p) => break p.into_inner(),
            // The attacher retries while the previous node's detach finishes.
            Err(e) if matches!(e.code(), Code::FailedPrecondition | Code::Aborted) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("ControllerPublish on {node_id}: {e:?}"),
        }
    };
    node.node_stage_volume(proto::NodeStageVolumeRequest {
        volume_id: volume.into(),
        publish_context: published.publish_context.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    })
    .await
    .expect("NodeStage");
    node.node_publish_volume(proto::NodePublishVolumeRequest {
        volume_id: volume.into(),
        publish_context: published.publish_context,
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    })
    .await
    .expect("NodePublish");
}

/// NodeUnpublish, NodeUnstage, ControllerUnpublish: the pod is gone from `node_id`.
async fn unmount_from(
    ctl: &mut ControllerClient<Channel>,
    node: &mut NodeClient<Channel>,
    volume: &str,
    node_id: &str,
    staging: &Path,
    target: &Path,
) {
    node.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    })
    .await
    .expect("NodeUnpublish");
    node.node_unstage_volume(proto::NodeUnstageVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .expect("NodeUnstage");
    ctl.controller_unpublish_volume(proto::ControllerUnpublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node_id.into(),
        ..Default::default()
    })
    .await
    .expect("ControllerUnpublish");
}

#[test]
fn the_seeds_mysql_example_runs_on_a_volume_and_survives_a_move_and_an_engine_kill() {
    // The seed's mysql-pvc walk-through without Kubernetes: the CSI calls a kubelet makes
    // put MariaDB's datadir on a 3-replica volume on node-1; `create database longhorn`;
    // the pod moves to node-2 (unpublish, unstage, publish there) and MariaDB finds the
    // database. Then the engine is SIGKILLed while MariaDB commits a stream of
    // transactions: no statement fails, and every committed row is there, also after a
    // restart of MariaDB.
    let cluster = DevCluster::up();
    let plugin1 = Plugin::start(&cluster, "node-1");
    let plugin2 = Plugin::start(&cluster, "node-2");
    let work = tempfile::tempdir().expect("work dir");
    let paths = |n: u16| {
        let (staging, target) = (
            work.path().join(format!("staging-{n}")),
            work.path().join(format!("pod-{n}/mysql")),
        );
        let run = work.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&run).expect("run dir");
        (staging, target, run)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut ctl = rt.block_on(async { ControllerClient::new(channel(&plugin1.socket).await) });
    let mut node1 = rt.block_on(async { NodeClient::new(channel(&plugin1.socket).await) });
    let mut node2 = rt.block_on(async { NodeClient::new(channel(&plugin2.socket).await) });
    let volume = rt.block_on(async {
        ctl.create_volume(create(
            "mysql-pvc",
            512 << 20,
            &[("numberOfReplicas", "3"), ("staleReplicaTimeout", "30")],
        ))
        .await
        .expect("CreateVolume mysql-pvc")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id
    });

    let (staging1, target1, run1) = paths(1);
    rt.block_on(mount_on(
        &mut ctl, &mut node1, &volume, "node-1", &staging1, &target1,
    ));
    let db = MariaDb::start(&target1, &run1);
    db.sql("create database longhorn").expect("create database");
    db.stop();
    rt.block_on(unmount_from(
        &mut ctl, &mut node1, &volume, "node-1", &staging1, &target1,
    ));

    let (staging2, target2, run2) = paths(2);
    rt.block_on(mount_on(
        &mut ctl, &mut node2, &volume, "node-2", &staging2, &target2,
    ));
    let on_node2 = cluster.json(&["volume", "get", &volume]);
    assert_eq!(on_node2["attachment"]["node"], "node-2", "{on_node2}");
    let db = MariaDb::start(&target2, &run2);
    let databases = db.sql("show databases").expect("show databases");
    assert!(databases.lines().any(|l| l == "longhorn"), "{databases}");

    db.sql("create table longhorn.t (id int primary key, pad varchar(200)) engine=innodb")
        .expect("create table");
    let socket = db.socket.clone();
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            // One transaction a statement (autocommit, flushed at commit): each Ok is a
            // commit MariaDB acknowledged. Goes on for 100 commits after the kill.
            let mut committed = Vec::new();
            let mut after = 0;
            for id in 0.. {
                let sql = format!("insert into longhorn.t values ({id}, repeat('x', 200))");
                if let Err(e) = mariadb_sql(&socket, &sql) {
                    return Err(format!("insert {id} failed: {e}"));
                }
                committed.push(id);
                if killed.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                    if after == 100 {
                        break;
                    }
                }
            }
            Ok(committed)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let epoch = cluster.json(&["volume", "get", &volume])["epoch"]
        .as_u64()
        .expect("epoch");
    run("kill", &["-9", &cluster.engine_pid(2, &volume)]);
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    let restarted = cluster.wait_volume(&volume, "served by a new engine", |v| {
        v["state"] == "attached" && v["epoch"].as_u64().is_some_and(|e| e > epoch)
    });
    assert_eq!(restarted["attachment"]["node"], "node-2", "{restarted}");
    let committed = writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("MariaDB stopped serving across the engine kill: {e}"));
    assert!(committed.len() > 100, "{} commits", committed.len());
    let device_log = std::fs::read_to_string(
        cluster
            .dir()
            .join(format!("m2/disk/devices/{volume}/device.log")),
    )
    .unwrap_or_default();
    assert!(
        device_log.contains("replaying requests to the new engine")
            || device_log.contains("connected to the new engine"),
        "the device never went over to the new engine\n{device_log}"
    );
    eprintln!(
        "{} commits, the last 100 after the engine was killed",
        committed.len()
    );
    let count = |db: &MariaDb| -> usize {
        db.sql("select count(*) from longhorn.t")
            .expect("count")
            .trim()
            .parse()
            .expect("a number")
    };
    assert_eq!(count(&db), committed.len(), "rows lost while serving");
    db.stop();
    let db = MariaDb::start(&target2, &run2);
    assert_eq!(count(&db), committed.len(), "rows lost after a restart");
    db.stop();
    rt.block_on(unmount_from(
        &mut ctl, &mut node2, &volume, "node-2", &staging2, &target2,
    ));
}
