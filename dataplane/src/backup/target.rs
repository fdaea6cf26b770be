//! Backup target URLs (`s3://bucket@region/prefix`, `nfs://server:/export/path`,
//! `file:///abs/path`) and the credentials that go with them (Longhorn's key names).

use std::collections::BTreeMap;
use std::fmt;

use super::BackupError;

/// Where backups are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTarget {
    /// An S3 bucket (any S3-compatible endpoint through `AWS_ENDPOINTS`).
    S3 {
        bucket: String,
        region: String,
        prefix: String,
    },
    /// An NFS export (NFSv3), reached from userspace (no kernel client). The ports are
    /// found through the server's portmapper unless given.
    Nfs {
        /// Host name or address (an IPv6 address without its brackets).
        server: String,
        /// The NFS service's port (`nfs://server:PORT:/export`).
        port: Option<u16>,
        /// The MOUNT service's port (`?mountport=PORT`).
        mount_port: Option<u16>,
        /// The directory to mount: an export, or a directory below one.
        export: String,
    },
    /// A local (or mounted) directory.
    File { path: String },
}

fn malformed(url: &str, why: &str) -> BackupError {
    BackupError::BadTarget {
        url: url.to_owned(),
        reason: why.to_owned(),
    }
}

impl BackupTarget {
    /// Parses a target URL; a malformed one is one error naming what is wrong.
    pub fn parse(url: &str) -> Result<BackupTarget, BackupError> {
        let url_t = url.trim();
        if let Some(rest) = url_t.strip_prefix("s3://") {
            let (bucket_region, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p.trim_matches('/')),
                None => (rest, ""),
            };
            let Some((bucket, region)) = bucket_region.split_once('@') else {
                return Err(malformed(
                    url,
                    "an S3 target is s3://BUCKET@REGION/PREFIX (the region is missing)",
                ));
            };
            if bucket.is_empty() || region.is_empty() {
                return Err(malformed(
                    url,
                    "an S3 target is s3://BUCKET@REGION/PREFIX (empty bucket or region)",
                ));
            }
            if !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(malformed(
                    url,
                    "a bucket name is lowercase letters, digits, '-' and '.'",
                ));
            }
            return Ok(BackupTarget::S3 {
                bucket: bucket.to_owned(),
                region: region.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if let Some(rest) = url_t.strip_prefix("nfs://") {
            return parse_nfs(url, rest);
        }
        if let Some(rest) = url_t.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(malformed(
                    url,
                    "a file target is file:///ABSOLUTE/PATH (the path must be absolute)",
                ));
            }
            let path = rest.trim_end_matches('/');
            return Ok(BackupTarget::File {
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
            });
        }
        Err(malformed(
            url,
            "a backup target starts with s3://, nfs:// or file://",
        ))
    }
}

/// `SERVER[:PORT]:/EXPORT/PATH` or `SERVER[:PORT]/EXPORT/PATH`, then optionally
/// `?mountport=PORT` (libnfs's option name; `nfsport=` is the same as `:PORT`).
fn parse_nfs(url: &str, rest: &str) -> Result<BackupTarget, BackupError> {
    const FORM: &str =
        "an NFS target is nfs://SERVER:/EXPORT/PATH (or nfs://SERVER:PORT:/EXPORT/PATH)";
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let port_of = |s: &str, what: &str| -> Result<u16, BackupError> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(malformed(
                url,
                &format!("{what} {s:?} is not a port (1-65535)"),
            )),
        }
    };
    // The server: a bracketed IPv6 address, or everything up to the first ':' or '/'.
    let (server, after) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(malformed(url, "an IPv6 server is written [ADDRESS]"));
        };
        (addr, after)
    } else {
        let end = rest.find([':', '/']).unwrap_or(rest.len());
        rest.split_at(end)
    };
    if server.is_empty() {
        return Err(malformed(url, &format!("the NFS server is empty; {FORM}")));
    }
    if server.contains(['@', ' ']) {
        return Err(malformed(
            url,
            &format!("{server:?} is not a host name; {FORM}"),
        ));
    }
    let mut port = None;
    let path = if let Some(p) = after.strip_prefix(":/") {
        p
    } else if let Some(p) = after.strip_prefix('/') {
        p
    } else if let Some(p) = after.strip_prefix(':') {
        let Some((digits, path)) = p.split_once('/') else {
            return Err(malformed(
                url,
                &format!("the export path is missing; {FORM}"),
            ));
        };
        let digits = digits.strip_suffix(':').unwrap_or(digits);
        port = Some(port_of(digits, "the NFS port")?);
        path
    } else {
        return Err(malformed(
            url,
            &format!("the export path is missing; {FORM}"),
        ));
    };
    let export = path.trim_matches('/');
    if export.is_empty() {
        return Err(malformed(
            url,
            &format!("the export path is missing; {FORM}"),
        ));
    }
    if export
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(malformed(
            url,
            "the export path has an empty, '.' or '..' component",
        ));
    }
    let mut mount_port = None;
    for kv in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|kv| !kv.is_empty())
    {
        match kv.split_once('=') {
            Some(("mountport", v)) => mount_port = Some(port_of(v, "mountport")?),
            Some(("nfsport", v)) => port = Some(port_of(v, "nfsport")?),
            _ => {
                return Err(malformed(
                    url,
                    &format!("unknown NFS option {kv:?} (known: mountport=PORT, nfsport=PORT)"),
                ));
            }
        }
    }
    Ok(BackupTarget::Nfs {
        server: server.to_owned(),
        port,
        mount_port,
        export: format!("/{export}"),
    })
}

impl fmt::Display for BackupTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupTarget::S3 {
                bucket,
                region,
                prefix,
            } => write!(f, "s3://{bucket}@{region}/{prefix}"),
            BackupTarget::Nfs {
                server,
                port,
                mount_port,
                export,
            } => {
                if server.contains(':') {
                    write!(f, "nfs://[{server}]")?;
                } else {
                    write!(f, "nfs://{server}")?;
                }
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, ":{export}")?;
                if let Some(m) = mount_port {
                    write!(f, "?mountport={m}")?;
                }
                Ok(())
            }
            BackupTarget::File { path } => write!(f, "file://{path}"),
        }
    }
}

/// Credentials for a target, with Longhorn's key names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `AWS_ENDPOINTS`: the S3-compatible endpoint URL (e.g. `http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// `AWS_CERT`: a PEM CA bundle to trust for the endpoint.
    pub cert: Option<String>,
    /// `VIRTUAL_HOSTED_STYLE`: `true` for bucket.host addressing (default path style).
    pub virtual_hosted_style: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("endpoint", &self.endpoint)
            .field("cert", &self.cert.as_ref().map(|_| "<pem>"))
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

impl Credentials {
    /// Longhorn's credential keys, the names [`Credentials::from_map`] reads.
    pub const KEYS: [&'static str; 5] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINTS",
        "AWS_CERT",
        "VIRTUAL_HOSTED_STYLE",
    ];

    /// From a map with Longhorn's keys (a Secret's data, the environment, a gRPC map).
    /// Unknown keys are ignored; empty values count as absent.
    pub fn from_map<'a>(
        map: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Credentials, BackupError> {
        let mut c = Credentials::default();
        for (k, v) in map {
            let v = v.trim();
            let val = (!v.is_empty()).then(|| v.to_owned());
            match k.trim() {
                "AWS_ACCESS_KEY_ID" => c.access_key_id = val,
                "AWS_SECRET_ACCESS_KEY" => c.secret_access_key = val,
                "AWS_ENDPOINTS" => c.endpoint = val,
                "AWS_CERT" => c.cert = val,
                "VIRTUAL_HOSTED_STYLE" => {
                    c.virtual_hosted_style = match v.to_ascii_lowercase().as_str() {
                        "" | "false" | "0" | "no" => false,
                        "true" | "1" | "yes" => true,
                        other => {
                            return Err(BackupError::BadCredentials(format!(
                                "VIRTUAL_HOSTED_STYLE is {other:?}; use true or false"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// From `KEY=value` lines (a credentials file); `#` comments and blank lines are
    /// skipped. A multi-line `AWS_CERT` is not expressible here; use the map form.
    pub fn parse_lines(text: &str) -> Result<Credentials, BackupError> {
        let mut pairs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(BackupError::BadCredentials(format!(
                    "line {}: expected KEY=value",
                    n + 1
                )));
            };
            pairs.push((k.trim(), v.trim().trim_matches('"')));
        }
        Credentials::from_map(pairs)
    }

    /// The map form (for the engine's gRPC request).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v.clone());
            }
        };
        put("AWS_ACCESS_KEY_ID", &self.access_key_id);
        put("AWS_SECRET_ACCESS_KEY", &self.secret_access_key);
        put("AWS_ENDPOINTS", &self.endpoint);
        put("AWS_CERT", &self.cert);
        if self.virtual_hosted_style {
            m.insert("VIRTUAL_HOSTED_STYLE".into(), "true".into());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_rejects_malformed_ones() {
        assert_eq!(
            BackupTarget::parse("s3://backupbucket@us-east-1/backupstore").unwrap(),
            BackupTarget::S3 {
                bucket: "backupbucket".into(),
                region: "us-east-1".into(),
                prefix: "backupstore".into()
            }
        );
        let nfs = |server: &str, port, mount_port, export: &str| BackupTarget::Nfs {
            server: server.into(),
            port,
            mount_port,
            export: export.into(),
        };
        for (url, want, shown) in [
            (
                "nfs://10.0.0.1:/exports/bk/",
                nfs("10.0.0.1", None, None, "/exports/bk"),
                "nfs://10.0.0.1:/exports/bk",
            ),
            (
                "nfs://nas.local/exports/bk",
                nfs("nas.local", None, None, "/exports/bk"),
                "nfs://nas.local:/exports/bk",
            ),
            (
                "nfs://127.0.0.1:20490:/backups?mountport=20491",
                nfs("127.0.0.1", Some(20490), Some(20491), "/backups"),
                "nfs://127.0.0.1:20490:/backups?mountport=20491",
            ),
            (
                "nfs://h:2049/e",
                nfs("h", Some(2049), None, "/e"),
                "nfs://h:2049:/e",
            ),
            (
                "nfs://[::1]:/e?nfsport=2049&mountport=20048",
                nfs("::1", Some(2049), Some(20048), "/e"),
                "nfs://[::1]:2049:/e?mountport=20048",
            ),
        ] {
            let t = BackupTarget::parse(url).unwrap();
            assert_eq!(t, want, "{url}");
            assert_eq!(t.to_string(), shown, "{url}");
            assert_eq!(BackupTarget::parse(shown).unwrap(), want, "{shown}");
        }
        assert_eq!(
            BackupTarget::parse("file:///mnt/backups").unwrap(),
            BackupTarget::File {
                path: "/mnt/backups".into()
            }
        );
        for bad in [
            "s3://bucket/prefix",
            "s3://@r/p",
            "s3://Bad_Bucket@r",
            "nfs://:/export",
            "nfs://server",
            "nfs://server:/",
            "nfs://server:x:/export",
            "nfs://server:0:/export",
            "nfs://server:/export?mountport=big",
            "nfs://server:/export?vers=4",
            "nfs://server:/a/../b",
            "file://relative",
            "ftp://x",
            "",
        ] {
            let e = BackupTarget::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) || bad.is_empty(), "{e}");
        }
    }

    #[test]
    fn credentials_from_lines() {
        let c = Credentials::parse_lines(
            "# s3s\nAWS_ACCESS_KEY_ID=ak\nexport AWS_SECRET_ACCESS_KEY=\"sk\"\n\nAWS_ENDPOINTS=http://127.0.0.1:9\nVIRTUAL_HOSTED_STYLE=false\n",
        )
        .unwrap();
        assert_eq!(c.access_key_id.as_deref(), Some("ak"));
        assert_eq!(c.secret_access_key.as_deref(), Some("sk"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert!(!c.virtual_hosted_style);
        assert!(!format!("{c:?}").contains("sk\""));
        assert!(Credentials::parse_lines("nonsense").is_err());
        assert!(Credentials::parse_lines("VIRTUAL_HOSTED_STYLE=maybe").is_err());
    }
}
