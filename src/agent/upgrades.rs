//! Engine upgrades on this node: checking a new engine image before anything stops, and
//! which binary each engine and replica process runs. The phases and which replica is
//! restarted when come from the log (see `shorthorn_state::UpgradePhase`); this module only
//! runs binaries and reports what they did.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use shorthorn_state::Request;

use super::Agent;

/// How long `IMAGE --version` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    /// The binary of engine image `image` ("" = this agent's own).
    pub(super) fn binary(&self, image: &str) -> PathBuf {
        if image.is_empty() {
            self.config.exe.clone()
        } else {
            PathBuf::from(image)
        }
    }

    /// Runs each image this node is asked to check (in the background: a binary that hangs
    /// must not stall the agent's heartbeats) and reports whether it starts.
    pub(super) async fn check_upgrades(&mut self, checks: &[(String, String)]) {
        for (volume, image) in checks {
            let key = (volume.clone(), image.clone());
            if self.upgrade_checked.contains(&key) || self.running_checks.contains_key(&key) {
                continue;
            }
            let binary = self.binary(image);
            let check = tokio::task::spawn_blocking(move || check_image(&binary, CHECK_TIMEOUT));
            self.running_checks.insert(key, check);
        }
        let finished: Vec<(String, String)> = self
            .running_checks
            .iter()
            .filter(|(_, check)| check.is_finished())
            .map(|(key, _)| key.clone())
            .collect();
        for key in finished {
            let check = self.running_checks.remove(&key).expect("present");
            let (volume, image) = &key;
            let outcome = check
                .await
                .unwrap_or_else(|err| Err(format!("the check of {image} panicked: {err}")));
            let request = match &outcome {
                Ok(version) => {
                    tracing::info!(volume, image, version, "engine image checked: upgrading");
                    Request::ReportEngineUpgradeChecked {
                        name: volume.clone(),
                        version: version.clone(),
                    }
                }
                Err(reason) => {
                    tracing::warn!(volume, image, "engine image does not start: {reason}");
                    Request::ReportEngineUpgradeFailed {
                        name: volume.clone(),
                        reason: reason.clone(),
                    }
                }
            };
            match self.propose(request).await {
                Ok(_) => {
                    self.upgrade_checked.insert(key);
                }
                // Run again at a later tick.
                Err(err) => tracing::warn!(volume, "reporting the engine image check: {err}"),
            }
        }
        self.upgrade_checked
            .retain(|(v, i)| checks.iter().any(|(cv, ci)| cv == v && ci == i));
    }

    /// Reports that the upgrade of `volume` failed because `what` of its new image did not
    /// start; the log brings the old image back.
    pub(super) async fn upgrade_failed(&self, volume: &str, what: &str, err: &anyhow::Error) {
        let request = Request::ReportEngineUpgradeFailed {
            name: volume.to_string(),
            reason: format!("{what} of the new image did not start: {err:#}"),
        };
        if let Err(err) = self.propose(request).await {
            tracing::warn!(volume, "reporting the failed upgrade: {err}");
        }
    }
}

/// Runs `binary --version`: it must exit 0 within `timeout` and name itself shorthorn.
/// Returns the version it printed, or why not.
fn check_image(binary: &Path, timeout: Duration) -> Result<String, String> {
    let mut child = Process::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("running {}: {err}", binary.display()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --version did not finish within {} s",
                    binary.display(),
                    timeout.as_secs()
                ));
            }
            Err(err) => return Err(format!("waiting for {}: {err}", binary.display())),
        }
    };
    let output = child
        .wait_with_output()
        .map_err(|err| format!("reading {}: {err}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{} --version: {status}: {}",
            binary.display(),
            stderr.trim().lines().last().unwrap_or("")
        ));
    }
    match stdout.trim().strip_prefix("shorthorn ") {
        Some(version) => Ok(version.trim().to_string()),
        None => Err(format!(
            "{} is not a shorthorn binary (--version said \"{}\")",
            binary.display(),
            stdout.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_checked_by_running_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            path
        };
        let check = |path: &Path| check_image(path, Duration::from_secs(1));
        let good = script("good", "echo 'shorthorn 9.9.9'");
        assert_eq!(check(&good).unwrap(), "9.9.9");
        let failing = script("failing", "echo 'cannot start' >&2; exit 3");
        let err = check(&failing).unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("cannot start"),
            "{err}"
        );
        let other = script("other", "echo 'busybox 1.0'");
        assert!(
            check(&other)
                .unwrap_err()
                .contains("not a shorthorn binary")
        );
        let missing = dir.path().join("missing");
        assert!(check(&missing).unwrap_err().contains("No such file"));
        let hangs = script("hangs", "exec sleep 30");
        let started = Instant::now();
        let err = check(&hangs).unwrap_err();
        assert!(err.contains("did not finish within 1 s"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hung check was not killed"
        );
    }
}
