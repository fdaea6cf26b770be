//! Where a manager finds the backup target's credentials: Longhorn's keys
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINTS`, `AWS_CERT`,
//! `VIRTUAL_HOSTED_STYLE`) from the `--credentials FILE` of `KEY=value` lines when the
//! manager was started with one, else from its environment.
//!
//! In Kubernetes (a manager with a kubeconfig or in the cluster, and no `--credentials`),
//! the `backupTargetCredentialSecret` setting names a Secret of the manager's namespace
//! holding those keys: [`follow_secret`] keeps each manager's copy of it current (read
//! again within half a second of the setting changing, and every 10 s for rotated keys). A
//! setting naming a Secret that cannot be read is an error naming it, not a fallback to the
//! environment.
//!
//! The file is read at every use, so an edited file counts at once, and a missing or
//! malformed one is an error naming the file, never a silent fallback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shorthorn_consensus::Handle;
use shorthorn_dataplane::backup::Credentials;

/// The credentials a manager (its API and its node agent) uses for backup targets.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    file: Option<PathBuf>,
    /// Set when the manager follows `backupTargetCredentialSecret` ([`follow_secret`]).
    secret: Option<Arc<RwLock<SecretState>>>,
}

/// What the manager last read of the Secret the setting names.
#[derive(Debug, Clone, Default)]
pub enum SecretState {
    /// The setting is empty (or not read yet): the environment's credentials count.
    #[default]
    Unset,
    Loaded {
        name: String,
        pairs: Vec<(String, String)>,
    },
    Failed(String),
}

impl CredentialSource {
    pub fn new(file: Option<PathBuf>) -> CredentialSource {
        CredentialSource { file, secret: None }
    }

    /// A source that also follows the Secret named by `backupTargetCredentialSecret`
    /// (without a file); the slot is what [`follow_secret`] fills.
    pub fn following_secret(&mut self) -> Option<Arc<RwLock<SecretState>>> {
        if self.file.is_some() {
            return None;
        }
        let slot = Arc::new(RwLock::new(SecretState::Unset));
        self.secret = Some(slot.clone());
        Some(slot)
    }

    /// The credentials as of now.
    pub fn load(&self) -> Result<Credentials, String> {
        match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the credentials file {}: {e}", path.display()))?;
                Credentials::parse_lines(&text)
                    .map_err(|e| format!("the credentials file {}: {e}", path.display()))
            }
            None => {
                let state = self
                    .secret
                    .as_ref()
                    .map(|slot| slot.read().map(|s| s.clone()).unwrap_or_default());
                match state {
                    Some(SecretState::Loaded { name, pairs }) => {
                        return Credentials::from_map(
                            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                        )
                        .map_err(|e| format!("the Secret {name}: {e}"));
                    }
                    Some(SecretState::Failed(why)) => return Err(why),
                    Some(SecretState::Unset) | None => {}
                }
                let env: Vec<(String, String)> = Credentials::KEYS
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                    .collect();
                Credentials::from_map(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .map_err(|e| format!("the manager's environment: {e}"))
            }
        }
    }

    /// The credentials as the engine's gRPC requests carry them.
    pub fn map(&self) -> Result<HashMap<String, String>, String> {
        Ok(self.load()?.to_map().into_iter().collect())
    }
}

/// Keeps `slot` what the Secret named by `backupTargetCredentialSecret` holds (in
/// `namespace`); runs forever.
pub async fn follow_secret(
    slot: Arc<RwLock<SecretState>>,
    handle: Handle,
    client: kube::Client,
    namespace: String,
) {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    let mut last: Option<(String, Instant)> = None;
    loop {
        let name = handle
            .read(|s| s.settings.backup_target_credential_secret.clone())
            .await;
        if let Ok(name) = name {
            let due = match &last {
                Some((read, at)) => *read != name || at.elapsed() > Duration::from_secs(10),
                None => true,
            };
            if due {
                let state = if name.is_empty() {
                    SecretState::Unset
                } else {
                    match secrets.get_opt(&name).await {
                        Ok(Some(secret)) => SecretState::Loaded {
                            name: format!("{namespace}/{name}"),
                            pairs: secret_pairs(&secret),
                        },
                        Ok(None) => SecretState::Failed(format!(
                            "backupTargetCredentialSecret names the Secret {namespace}/{name}, \
                             which does not exist"
                        )),
                        Err(err) => SecretState::Failed(format!(
                            "reading the Secret {namespace}/{name} (backupTargetCredentialSecret): {err}"
                        )),
                    }
                };
                if let Ok(mut slot) = slot.write() {
                    *slot = state;
                }
                last = Some((name, Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Secret's keys Longhorn reads (data, then stringData), as text.
fn secret_pairs(secret: &k8s_openapi::api::core::v1::Secret) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in secret.data.iter().flatten() {
        if Credentials::KEYS.contains(&key.as_str()) {
            pairs.push((key.clone(), String::from_utf8_lossy(&value.0).into_owned()));
        }
    }
    for (key, value) in secret.string_data.iter().flatten() {
        if Credentials::KEYS.contains(&key.as_str()) && !pairs.iter().any(|(k, _)| k == key) {
            pairs.push((key.clone(), value.clone()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_at_each_use_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creds");
        let source = CredentialSource::new(Some(path.clone()));
        let missing = source.load().unwrap_err();
        assert!(missing.contains(&path.display().to_string()), "{missing}");
        std::fs::write(&path, "AWS_ACCESS_KEY_ID=ak\nAWS_SECRET_ACCESS_KEY=sk\n").expect("write");
        assert_eq!(
            source.load().expect("loads").access_key_id.as_deref(),
            Some("ak")
        );
        std::fs::write(&path, "AWS_ENDPOINTS=http://127.0.0.1:9\n").expect("write");
        let map = source.map().expect("loads");
        assert_eq!(
            map.get("AWS_ENDPOINTS").map(String::as_str),
            Some("http://127.0.0.1:9")
        );
        assert!(!map.contains_key("AWS_ACCESS_KEY_ID"));
        std::fs::write(&path, "no equals sign\n").expect("write");
        assert!(source.load().unwrap_err().contains("line 1"));
    }
}
