//! Loop devices over the FUSE file, through util-linux's `losetup`, and the clean-up of
//! what a crashed device process left behind (loop devices over its file, its mount).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DeviceError;

fn losetup(args: &[&std::ffi::OsStr]) -> Result<String, DeviceError> {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(DeviceError::io("running losetup (util-linux)"))?;
    if !out.status.success() {
        return Err(DeviceError::Command(format!(
            "losetup {}: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Attaches `file` to a free loop device with direct I/O; returns `/dev/loopN`.
pub fn attach(file: &Path) -> Result<PathBuf, DeviceError> {
    let device = losetup(&[
        "--find".as_ref(),
        "--show".as_ref(),
        "--direct-io=on".as_ref(),
        file.as_os_str(),
    ])?;
    Ok(PathBuf::from(device))
}

/// Has a loop device take its backing file's current size.
pub fn set_capacity(device: &Path) -> Result<(), DeviceError> {
    losetup(&["--set-capacity".as_ref(), device.as_os_str()]).map(|_| ())
}

/// Detaches a loop device (the kernel defers it while the device is still open).
pub fn detach(device: &Path) -> Result<(), DeviceError> {
    losetup(&["--detach".as_ref(), device.as_os_str()]).map(|_| ())
}

/// Whether something holds `device` open exclusively (a mounted filesystem does), found
/// by trying an exclusive open (O_EXCL on a block device), which fails with EBUSY then.
pub fn in_use(device: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
    {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    }
}

/// The loop devices whose backing file is under `dir`, as (device, backing file).
pub fn backed_by_under(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, DeviceError> {
    let list = losetup(&[
        "--list".as_ref(),
        "--noheadings".as_ref(),
        "--raw".as_ref(),
        "--output".as_ref(),
        "NAME,BACK-FILE".as_ref(),
    ])?;
    Ok(parse_list(&list)
        .into_iter()
        .filter(|(_, file)| file.starts_with(dir))
        .collect())
}

/// Parses `losetup --list --noheadings --raw --output NAME,BACK-FILE` (the raw format
/// escapes spaces as `\x20`).
fn parse_list(list: &str) -> Vec<(PathBuf, PathBuf)> {
    list.lines()
        .filter_map(|line| {
            let (name, file) = line.trim().split_once(' ')?;
            let file = file.trim().replace("\\x20", " ");
            // A file deleted (or on a dead mount) after attaching is shown "(deleted)".
            let file = file.trim_end_matches(" (deleted)");
            Some((PathBuf::from(name), PathBuf::from(file)))
        })
        .collect()
}

/// Unmounts `mountpoint` lazily (MNT_DETACH): it goes from the namespace now and from the
/// kernel when nothing uses it any more. Errors (not mounted) are ignored.
pub fn unmount_lazily(mountpoint: &Path) {
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; umount2 reads it only.
    unsafe {
        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
    }
}

/// Removes what a dead device process of `dir` left: detaches every loop device over a
/// file under `dir` and unmounts `mountpoint`. Returns the loop devices it detached.
pub fn clean_up(dir: &Path, mountpoint: &Path) -> Result<Vec<PathBuf>, DeviceError> {
    let mut detached = Vec::new();
    for (device, _) in backed_by_under(dir)? {
        detach(&device)?;
        detached.push(device);
    }
    unmount_lazily(mountpoint);
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_lists_parse() {
        let list = "/dev/loop0 /var/lib/x/engines/db/fuse/db\n\
                    /dev/loop1 /tmp/a\\x20b/file (deleted)\n\
                    garbage\n";
        assert_eq!(
            parse_list(list),
            vec![
                (
                    PathBuf::from("/dev/loop0"),
                    PathBuf::from("/var/lib/x/engines/db/fuse/db")
                ),
                (PathBuf::from("/dev/loop1"), PathBuf::from("/tmp/a b/file")),
            ]
        );
    }
}
