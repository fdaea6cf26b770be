//! The web UI against a dev cluster: its files are served by every manager without the
//! token while `/v1` still needs it; the REST routes the console needs (node and disk
//! scheduling and tags, an engine's rebuild progress from any manager); and the console
//! itself in headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/ui/console.mjs`): sign in, volumes, snapshots, a rebuild, backups, restore, a DR
//! standby, settings, recurring jobs and node scheduling, each step checked on the page.
//!
//! The browser test needs `chromium` and `node` on PATH and `SHORTHORN_PLAYWRIGHT_CORE`
//! (printed by `scripts/build-tools`); without them it prints SKIPPED, and fails under
//! `CI=true`. Its screenshots stay in `$TMPDIR/shorthorn-ui-screenshots-<pid>/`.

mod testkit;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{DevCluster, text_of};

/// GET `url` with an optional bearer token: (status, headers by lowercase name, body).
fn fetch(url: &str, token: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let mut request = ureq::get(url).timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("GET {url}: {err}"),
    };
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_string();
            (name.to_lowercase(), value)
        })
        .collect();
    let status = response.status();
    let body = response.into_string().expect("body");
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn the_ui_is_served_without_the_token_while_the_api_still_needs_it() {
    // Every manager serves the page and its files with their types and a policy that
    // allows only this origin; /v1 answers 401 without the token, in the API's words.
    let cluster = DevCluster::up();
    for n in 1..=3 {
        let (status, headers, body) = fetch(&format!("{}/", cluster.api_of(n)), None);
        assert_eq!(status, 200, "manager {n}: {body}");
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
        assert!(
            body.contains(r#"<script type="module" src="/ui/js/app.js">"#),
            "{body}"
        );
        let policy = header(&headers, "content-security-policy");
        assert!(policy.contains("default-src 'self'"), "{policy}");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(header(&headers, "cache-control"), "no-cache");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(header(&headers, "etag").starts_with('"'));
    }
    for (path, kind) in [
        ("/ui/js/app.js", "text/javascript; charset=utf-8"),
        ("/ui/js/pages/volume.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = fetch(&format!("{}{path}", cluster.api()), None);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(header(&headers, "content-type"), kind, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    // An unchanged file is not sent again.
    let (_, headers, _) = fetch(&format!("{}/ui/app.css", cluster.api()), None);
    let etag = header(&headers, "etag").to_string();
    let again = ureq::get(&format!("{}/ui/app.css", cluster.api()))
        .set("If-None-Match", &etag)
        .call()
        .expect("conditional GET");
    assert_eq!(again.status(), 304);

    let (status, _, body) = fetch(&format!("{}/ui/nothing.js", cluster.api()), None);
    assert_eq!(status, 404, "{body}");
    let (status, headers, body) = fetch(&format!("{}/v1/volumes", cluster.api()), None);
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "content-type"), "application/json");
    let refusal: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        refusal["message"],
        "missing `Authorization: Bearer <token>` header"
    );
    let (status, _, body) = fetch(&format!("{}/v1/volumes", cluster.api()), Some("wrong"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("the bearer token is not valid for this cluster"));
    let (status, _, _) = fetch(
        &format!("{}/v1/volumes", cluster.api()),
        Some(&cluster.token()),
    );
    assert_eq!(status, 200);
}

#[test]
fn node_and_disk_scheduling_and_tags_are_set_through_the_api() {
    // With scheduling off on node-3, a 3-replica volume gets two replicas and says why;
    // on again, it gets its third. Tags replace what was there; a bad body is refused.
    let cluster = DevCluster::up();
    let (status, node) = cluster.post(
        "/v1/nodes/node-3/update",
        &json!({ "schedulable": false, "tags": ["ssd", "fast"] }).to_string(),
    );
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["schedulable"], false);
    assert_eq!(node["tags"], json!(["fast", "ssd"]));
    cluster.create_volume("db", 16, 3, &[]);
    let volume = cluster.wait_volume("db", "short of a replica", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 2) && v["condition"].is_string()
    });
    assert!(
        !text_of(&volume["condition"]).is_empty(),
        "{}",
        volume["condition"]
    );
    let (status, node) = cluster.post(
        "/v1/nodes/node-3/update",
        &json!({ "schedulable": true }).to_string(),
    );
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["schedulable"], true);
    assert_eq!(node["tags"], json!(["fast", "ssd"]), "tags are kept");
    cluster.wait_volume("db", "given its third replica", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 3)
    });

    let (status, node) = cluster.post(
        "/v1/nodes/node-1/disks/disk-1/update",
        &json!({ "schedulable": false, "tags": ["nvme"], "reserved": "64Mi" }).to_string(),
    );
    assert_eq!(status, 200, "{node}");
    let disk = &node["disks"]["disk-1"];
    assert_eq!(disk["schedulable"], false, "{disk}");
    assert_eq!(disk["tags"], json!(["nvme"]));
    assert_eq!(disk["reserved"], 64 << 20);

    let (status, refusal) = cluster.post("/v1/nodes/node-1/update", "{}");
    assert_eq!(status, 400);
    assert_eq!(
        refusal["message"],
        "nothing to change: give schedulable or tags"
    );
    let (status, refusal) = cluster.post(
        "/v1/nodes/node-9/update",
        &json!({ "schedulable": false }).to_string(),
    );
    assert_eq!(status, 404, "{refusal}");
    assert_eq!(refusal["message"], "node \"node-9\" not found");
    let (status, refusal) = cluster.post(
        "/v1/nodes/node-1/disks/disk-9/update",
        &json!({ "schedulable": false }).to_string(),
    );
    assert_eq!(status, 404, "{refusal}");
    assert!(text_of(&refusal["message"]).contains("disk-9"), "{refusal}");
}

#[test]
fn any_manager_answers_with_the_engine_of_a_volume_attached_elsewhere() {
    // The engine runs on node-2; manager 1 and manager 3 forward to manager 2, which asks
    // it: every replica read-write with its log id. A detached volume has no engine (409).
    let cluster = DevCluster::up();
    cluster.create_volume("db", 16, 3, &[]);
    cluster.attach("db", "node-2");
    let token = cluster.token();
    let ids: Vec<Value> = {
        let mut ids = cluster.json(&["volume", "get", "db"])["replicas"]
            .as_array()
            .expect("replicas")
            .clone();
        ids.sort_by_key(text_of);
        ids
    };
    for n in 1..=3 {
        let url = format!("{}/v1/volumes/db/engine", cluster.api_of(n));
        let (status, _, body) = fetch(&url, Some(&token));
        assert_eq!(status, 200, "manager {n}: {body}");
        let engine: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(engine["node"], "node-2", "{engine}");
        let replicas = engine["replicas"].as_array().expect("replicas");
        let mut seen: Vec<Value> = replicas.iter().map(|r| r["id"].clone()).collect();
        seen.sort_by_key(text_of);
        assert_eq!(seen, ids, "{engine}");
        assert!(replicas.iter().all(|r| r["mode"] == "RW"), "{engine}");
        assert!(engine["stats"]["epoch"].as_u64().is_some(), "{engine}");
    }
    cluster.detach("db");
    let (status, _, body) = fetch(
        &format!("{}/v1/volumes/db/engine", cluster.api()),
        Some(&token),
    );
    assert_eq!(status, 409, "{body}");
    let refusal: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        refusal["message"],
        "volume \"db\" is not attached: it has no engine"
    );
}

/// Chromium, node and playwright-core, or why not.
fn browser_tools() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let which = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    let chromium = std::env::var_os("SHORTHORN_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| which("chromium"))
        .ok_or("no chromium on PATH (scripts/test installs the Debian package chromium)")?;
    let node =
        which("node").ok_or("no node on PATH (scripts/test installs the Debian package nodejs)")?;
    let playwright = std::env::var_os("SHORTHORN_PLAYWRIGHT_CORE")
        .map(PathBuf::from)
        .ok_or("SHORTHORN_PLAYWRIGHT_CORE is not set (scripts/build-tools installs playwright-core and prints it)")?;
    if !playwright.join("package.json").is_file() {
        return Err(format!(
            "SHORTHORN_PLAYWRIGHT_CORE={} holds no package",
            playwright.display()
        ));
    }
    Ok((chromium, node, playwright))
}

/// The node script, stopped when the test ends early (a panic while it runs): SIGTERM,
/// which playwright answers by closing the browser it launched (in a process group of its
/// own, so killing node alone would leave headless Chromium behind), then SIGKILL.
struct Script(std::process::Child);

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_console_in_chromium_manages_a_dev_cluster() {
    // Sign in (a wrong token first: the API's refusal shown), create and attach a volume
    // and see it healthy, snapshot and revert, a replica SIGKILLed and its rebuild progress
    // shown until healthy, a file:// backup target, a bad setting's reason, a backup, its
    // restore into a new volume, a DR standby of its backup volume activated, a recurring
    // job, node scheduling off and on and tags, the event stream resumed after its manager
    // restarted, two volumes deleted at once; screenshots of each page.
    let (chromium, node, playwright) = match browser_tools() {
        Ok(tools) => tools,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let started = Instant::now();
    let cluster = DevCluster::up();
    let backups = tempfile::tempdir().expect("tempdir");
    // Kept after the test, for a person to look at; scripts/test empties the scratch
    // directory at its start.
    let shots =
        std::env::temp_dir().join(format!("shorthorn-ui-screenshots-{}", std::process::id()));
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/console.mjs");
    let mut child = Command::new(node)
        .arg(&script)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", &chromium)
        .env("UI_URL", cluster.api())
        .env("UI_TOKEN", cluster.token())
        .env("UI_SHOTS", &shots)
        .env(
            "UI_BACKUP_TARGET",
            format!("file://{}", backups.path().display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starts node");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut child = Script(child);
    let mut said = Vec::new();
    for line in stdout.lines() {
        let line = line.expect("a line from the script");
        println!("console.mjs: {line}");
        if let Some(volume) = line.strip_prefix("need kill-replica ") {
            let pid = cluster.replica_pids(volume.trim()).remove(0);
            let killed = Command::new("kill").args(["-9", pid.trim()]).status();
            let answer = match killed {
                Ok(status) if status.success() => format!("done {pid}\n"),
                other => format!("failed to kill {pid}: {other:?}\n"),
            };
            stdin
                .write_all(answer.as_bytes())
                .expect("answers the script");
        }
        if let Some(job) = line.strip_prefix("need restart-manager-and-create-job ") {
            cluster.restart_manager(1);
            cluster.ok(&[
                "job",
                "create",
                job.trim(),
                "--task",
                "snapshot",
                "--cron",
                "0 0 * * *",
            ]);
            stdin.write_all(b"done\n").expect("answers the script");
        }
        said.push(line);
    }
    let status = child.0.wait().expect("node exits");
    println!(
        "screenshots in {} ({:.0} s in all)",
        shots.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "the console test failed ({status}):\n{}",
        said.join("\n")
    );
    assert!(
        said.iter().any(|l| l.starts_with("console test passed")),
        "{said:?}"
    );
}
