//! Where a manager finds the backup target's credentials: Longhorn's keys
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINTS`, `AWS_CERT`,
//! `VIRTUAL_HOSTED_STYLE`) from the `--credentials FILE` of `KEY=value` lines when the
//! manager was started with one, else from its environment.
//!
//! The `backupTargetCredentialSecret` setting names a Secret; in Kubernetes the chart hands
//! that Secret to each manager as its environment (or a file), so the manager itself never
//! reads Secrets. The file is read at every use, so an edited file counts at once, and a
//! missing or malformed one is an error naming the file, never a silent fallback.

use std::collections::HashMap;
use std::path::PathBuf;

use shorthorn_dataplane::backup::Credentials;

/// The credentials a manager (its API and its node agent) uses for backup targets.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    file: Option<PathBuf>,
}

impl CredentialSource {
    pub fn new(file: Option<PathBuf>) -> CredentialSource {
        CredentialSource { file }
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
