//! The Node service: turns the kernel block device of a volume attached to this node into
//! what the kubelet asked for: a filesystem mounted at the staging path (formatted only when
//! empty), bind mounts at the publish paths, or the raw device bound onto a file.
//!
//! Every call first looks at what is already mounted (`/proc/self/mountinfo`), so it may be
//! repeated after a crash of the plugin and does only what is still missing.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::process::Command;
use tonic::{Request, Response, Status};

use crate::api::{self, segment};
use crate::proto::{self, node_service_capability as ncap, volume_capability};
use crate::{Driver, TOPOLOGY_NODE, TOPOLOGY_REGION, TOPOLOGY_ZONE};

pub struct NodeService {
    driver: Driver,
}

impl NodeService {
    pub fn new(driver: Driver) -> Self {
        NodeService { driver }
    }

    /// The volume as JSON (the device field arrives with the kernel frontend).
    async fn volume(&self, id: &str) -> Result<Value, Status> {
        api::call::<Value>(
            &self.driver.api,
            "GET",
            format!("/v1/volumes/{}", segment(id)),
            None,
        )
        .await
        .map_err(|e| e.to_status(&format!("reading volume {id}")))
    }

    /// The kernel block device of a volume attached to this node, once the node agent set
    /// it up (a moment after ControllerPublish): waited for up to [`DEVICE_WAIT`].
    async fn device(&self, id: &str) -> Result<PathBuf, Status> {
        let deadline = tokio::time::Instant::now() + DEVICE_WAIT;
        loop {
            let volume = self.volume(id).await?;
            let attachment = &volume["attachment"];
            let node = attachment["node"].as_str();
            if node != Some(self.driver.node_id.as_str()) {
                return Err(Status::failed_precondition(format!(
                    "volume \"{id}\" is not attached to node {} (attached: {}); \
                     ControllerPublish it to this node first",
                    self.driver.node_id,
                    node.unwrap_or("nowhere")
                )));
            }
            if let Some(d) = attachment["device"].as_str().filter(|d| !d.is_empty()) {
                return Ok(PathBuf::from(d));
            }
            if let Some(error) = attachment["error"].as_str() {
                return Err(Status::failed_precondition(format!(
                    "volume \"{id}\" has no kernel block device on {}: {error}",
                    self.driver.node_id
                )));
            }
            if attachment["frontend"] == "none" {
                return Err(Status::failed_precondition(format!(
                    "volume \"{id}\" is attached to {} without a kernel block device (for \
                     NBD clients); detach it and ControllerPublish it again",
                    self.driver.node_id
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "volume \"{id}\" is attached to {} but its kernel block device is not set \
                     up after {} s; retry",
                    self.driver.node_id,
                    DEVICE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// How long a node call waits for the device of a just-attached volume.
const DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn invalid(m: impl Into<String>) -> Status {
    Status::invalid_argument(m)
}

fn internal(doing: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{doing}: {e}"))
}

/// Unescapes the octal escapes of mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> Result<bool, Status> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| internal("reading /proc/self/mountinfo", e))?;
    let want = path.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want))
}

async fn run(program: &str, args: &[&str]) -> Result<std::process::Output, Status> {
    Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| internal(&format!("running {program}"), e))
}

async fn run_ok(program: &str, args: &[&str]) -> Result<String, Status> {
    let out = run(program, args).await?;
    if !out.status.success() {
        return Err(Status::internal(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The filesystem on a device, if any (`blkid` exits 2 when it finds none).
async fn filesystem(device: &Path) -> Result<Option<String>, Status> {
    let d = device.to_string_lossy();
    let out = run("blkid", &["-p", "-s", "TYPE", "-o", "value", &d]).await?;
    match out.status.code() {
        Some(0) => Ok(
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|t| !t.is_empty()),
        ),
        Some(2) => Ok(None),
        _ => Err(Status::internal(format!(
            "blkid {d} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// The size of a block device in bytes.
async fn device_bytes(device: &Path) -> Result<u64, Status> {
    let d = device.to_string_lossy();
    let out = run_ok("blockdev", &["--getsize64", &d]).await?;
    out.trim()
        .parse()
        .map_err(|e| internal(&format!("reading the size of {d} ({out:?})"), e))
}

/// The size of the ext2/3/4 filesystem on `device` in bytes (its superblock's block count
/// times block size).
async fn ext_bytes(device: &Path) -> Result<u64, Status> {
    let d = device.to_string_lossy();
    let header = run_ok("dumpe2fs", &["-h", &d]).await?;
    let field = |name: &str| {
        header
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (field("Block count:"), field("Block size:")) {
        (Some(count), Some(size)) => Ok(count * size),
        _ => Err(Status::internal(format!(
            "dumpe2fs -h {d} shows no block count and size: {header}"
        ))),
    }
}

/// Grows an unmounted ext2/3/4 filesystem to its device when the device is larger (the
/// volume was expanded while no pod used it): `e2fsck -f -p`, which resize2fs wants first,
/// then `resize2fs`. Offline growth needs only the device, whereas growing a mounted ext4
/// (NodeExpandVolume) needs CAP_SYS_RESOURCE, which a plugin may lack; after this, the
/// kubelet's NodeExpandVolume finds nothing left to do.
async fn grow_ext_unmounted(device: &Path) -> Result<(), Status> {
    let (device_size, fs_size) = (device_bytes(device).await?, ext_bytes(device).await?);
    // resize2fs rounds down to whole blocks (and block groups): only a real difference.
    if device_size < fs_size + (1 << 20) {
        return Ok(());
    }
    let d = device.to_string_lossy();
    let checked = run("e2fsck", &["-f", "-p", &d]).await?;
    // 0: clean, 1: errors corrected; anything else needs a human.
    if !matches!(checked.status.code(), Some(0) | Some(1)) {
        return Err(Status::failed_precondition(format!(
            "the filesystem on {d} needs checking before it can grow to its volume's new \
             size: e2fsck -f -p exited {}: {}{}",
            checked.status,
            String::from_utf8_lossy(&checked.stdout).trim(),
            String::from_utf8_lossy(&checked.stderr).trim()
        )));
    }
    run_ok("resize2fs", &[&d]).await?;
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), Status> {
    std::fs::create_dir_all(path).map_err(|e| internal(&format!("creating {}", path.display()), e))
}

async fn mount(args: &[&str]) -> Result<(), Status> {
    run_ok("mount", args).await.map(|_| ())
}

async fn unmount_if_mounted(path: &Path) -> Result<(), Status> {
    while is_mounted(path)? {
        run_ok("umount", &[&path.to_string_lossy()]).await?;
    }
    Ok(())
}

fn is_block(cap: &proto::VolumeCapability) -> bool {
    matches!(
        cap.access_type,
        Some(volume_capability::AccessType::Block(_))
    )
}

#[tonic::async_trait]
impl proto::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.staging_target_path.is_empty() {
            return Err(invalid("the staging target path is required"));
        }
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("the volume capability is required"))?;
        crate::controller::check_capabilities(std::slice::from_ref(cap)).map_err(invalid)?;
        let staging = PathBuf::from(&req.staging_target_path);
        let device = self.device(&req.volume_id).await?;
        if is_block(cap) {
            // A raw block volume is published straight from the device.
            mkdir(&staging)?;
            return Ok(Response::new(proto::NodeStageVolumeResponse {}));
        }
        if is_mounted(&staging)? {
            return Ok(Response::new(proto::NodeStageVolumeResponse {}));
        }
        let Some(volume_capability::AccessType::Mount(m)) = &cap.access_type else {
            return Err(invalid("the volume capability needs an access type"));
        };
        let wanted = [
            m.fs_type.as_str(),
            req.volume_context.get("fsType").map_or("", |s| s),
        ]
        .into_iter()
        .find(|f| !f.is_empty())
        .unwrap_or("ext4")
        .to_string();
        let fs = match filesystem(&device).await? {
            Some(fs) => {
                if matches!(fs.as_str(), "ext4" | "ext3" | "ext2") {
                    grow_ext_unmounted(&device).await?;
                }
                fs
            }
            None => {
                let d = device.to_string_lossy().into_owned();
                let mut args: Vec<String> = req
                    .volume_context
                    .get("mkfsParams")
                    .map(|p| p.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                if wanted == "ext4" {
                    args.insert(0, "-F".into());
                }
                args.push(d);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_ok(&format!("mkfs.{wanted}"), &args).await?;
                wanted.clone()
            }
        };
        mkdir(&staging)?;
        let mut args = vec!["-t".to_string(), fs];
        if !m.mount_flags.is_empty() {
            args.push("-o".into());
            args.push(m.mount_flags.join(","));
        }
        args.push(device.to_string_lossy().into_owned());
        args.push(req.staging_target_path.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mount(&args).await?;
        Ok(Response::new(proto::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.staging_target_path.is_empty() {
            return Err(invalid("the staging target path is required"));
        }
        unmount_if_mounted(Path::new(&req.staging_target_path)).await?;
        Ok(Response::new(proto::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.target_path.is_empty() {
            return Err(invalid("the target path is required"));
        }
        if req.staging_target_path.is_empty() {
            return Err(invalid(
                "the staging target path is required (this driver stages)",
            ));
        }
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("the volume capability is required"))?;
        crate::controller::check_capabilities(std::slice::from_ref(cap)).map_err(invalid)?;
        let target = PathBuf::from(&req.target_path);
        if is_mounted(&target)? {
            return Ok(Response::new(proto::NodePublishVolumeResponse {}));
        }
        let source = if is_block(cap) {
            let device = self.device(&req.volume_id).await?;
            if let Some(parent) = target.parent() {
                mkdir(parent)?;
            }
            if !target.exists() {
                std::fs::File::create(&target)
                    .map_err(|e| internal(&format!("creating {}", target.display()), e))?;
            }
            device.to_string_lossy().into_owned()
        } else {
            if !is_mounted(Path::new(&req.staging_target_path))? {
                return Err(Status::failed_precondition(format!(
                    "volume \"{}\" is not staged at {}; NodeStageVolume first",
                    req.volume_id, req.staging_target_path
                )));
            }
            mkdir(&target)?;
            req.staging_target_path.clone()
        };
        mount(&["--bind", &source, &req.target_path]).await?;
        if req.readonly {
            mount(&["-o", "remount,bind,ro", &req.target_path]).await?;
        }
        Ok(Response::new(proto::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.target_path.is_empty() {
            return Err(invalid("the target path is required"));
        }
        let target = Path::new(&req.target_path);
        unmount_if_mounted(target).await?;
        let removed = if target.is_dir() {
            std::fs::remove_dir(target)
        } else {
            std::fs::remove_file(target)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(&format!("removing {}", target.display()), e)),
        }
        Ok(Response::new(proto::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<proto::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<proto::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.volume_path.is_empty() {
            return Err(invalid("the volume path is required"));
        }
        let volume = match api::call::<Value>(
            &self.driver.api,
            "GET",
            format!("/v1/volumes/{}", segment(&req.volume_id)),
            None,
        )
        .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => {
                return Err(Status::not_found(format!(
                    "volume \"{}\" does not exist",
                    req.volume_id
                )));
            }
            Err(e) => return Err(e.to_status("reading the volume")),
        };
        let path = Path::new(&req.volume_path);
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                req.volume_path
            )));
        }
        let robustness = volume["robustness"].as_str().unwrap_or("");
        let condition = match (robustness, volume["condition"].as_str()) {
            ("faulted", _) => Some("the volume has no healthy replica".to_string()),
            (_, Some(c)) => Some(c.to_string()),
            _ => None,
        };
        let usage = if path.is_dir() {
            let s = statvfs(path)?;
            vec![
                proto::VolumeUsage {
                    available: (s.f_bavail * s.f_frsize) as i64,
                    total: (s.f_blocks * s.f_frsize) as i64,
                    used: ((s.f_blocks - s.f_bfree) * s.f_frsize) as i64,
                    unit: proto::volume_usage::Unit::Bytes as i32,
                },
                proto::VolumeUsage {
                    available: s.f_favail as i64,
                    total: s.f_files as i64,
                    used: (s.f_files - s.f_ffree) as i64,
                    unit: proto::volume_usage::Unit::Inodes as i32,
                },
            ]
        } else {
            vec![proto::VolumeUsage {
                available: 0,
                total: volume["size"].as_i64().unwrap_or(0),
                used: 0,
                unit: proto::volume_usage::Unit::Bytes as i32,
            }]
        };
        Ok(Response::new(proto::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(proto::VolumeCondition {
                abnormal: condition.is_some(),
                message: condition.unwrap_or_else(|| "healthy".into()),
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<proto::NodeExpandVolumeRequest>,
    ) -> Result<Response<proto::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.volume_path.is_empty() {
            return Err(invalid("the volume path is required"));
        }
        let volume = self.volume(&req.volume_id).await?;
        let size = volume["size"].as_i64().unwrap_or(0);
        let path = Path::new(&req.volume_path);
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                req.volume_path
            )));
        }
        let device = self.device(&req.volume_id).await?;
        // The loop device follows the backing file's new size only when told.
        let d = device.to_string_lossy().into_owned();
        if d.starts_with("/dev/loop") {
            run_ok("losetup", &["-c", &d]).await?;
        }
        // A raw block volume (the capability is optional here: a publish path that is a
        // file, not a directory, is one) has no filesystem to grow.
        if req.volume_capability.as_ref().is_some_and(is_block) || !path.is_dir() {
            return Ok(Response::new(proto::NodeExpandVolumeResponse {
                capacity_bytes: size,
            }));
        }
        match filesystem(&device).await?.as_deref() {
            Some("ext4") | Some("ext3") | Some("ext2") => {
                let out = run("resize2fs", &[&d]).await?;
                let said = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() && said.contains("Permission denied") {
                    // The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE.
                    return Err(Status::failed_precondition(format!(
                        "cannot grow the mounted ext4 on {d}: the kernel refused (growing a \
                         mounted ext4 needs CAP_SYS_RESOURCE, which this plugin lacks; run it \
                         privileged). It grows when the volume is next staged"
                    )));
                }
                if !out.status.success() {
                    return Err(Status::internal(format!(
                        "resize2fs {d} failed ({}): {}",
                        out.status,
                        said.trim()
                    )));
                }
            }
            Some("xfs") => {
                run_ok("xfs_growfs", &[&req.volume_path]).await?;
            }
            other => {
                return Err(Status::failed_precondition(format!(
                    "cannot grow filesystem {other:?} on {d}: only ext4 and xfs are supported"
                )));
            }
        }
        Ok(Response::new(proto::NodeExpandVolumeResponse {
            capacity_bytes: size,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        use ncap::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
        ]
        .into_iter()
        .map(|t| proto::NodeServiceCapability {
            r#type: Some(ncap::Type::Rpc(ncap::Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        let id = self.driver.node_id.clone();
        let node = api::call::<Value>(
            &self.driver.api,
            "GET",
            format!("/v1/nodes/{}", segment(&id)),
            None,
        )
        .await
        .map_err(|e| e.to_status(&format!("reading node {id}")))?;
        let mut segments = std::collections::HashMap::new();
        segments.insert(TOPOLOGY_NODE.to_string(), id.clone());
        if let Some(zone) = node["zone"].as_str().filter(|z| !z.is_empty()) {
            segments.insert(TOPOLOGY_ZONE.to_string(), zone.to_string());
        }
        if let Some(region) = node["labels"][TOPOLOGY_REGION].as_str() {
            segments.insert(TOPOLOGY_REGION.to_string(), region.to_string());
        }
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: id,
            max_volumes_per_node: 0,
            accessible_topology: Some(proto::Topology { segments }),
        }))
    }
}

fn statvfs(path: &Path) -> Result<libc::statvfs, Status> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid("the volume path contains a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(internal(
            &format!("statvfs {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(s)
}
