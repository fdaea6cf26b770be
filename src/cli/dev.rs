//! `shorthorn dev up|down`: a 3-manager cluster on 127.0.0.1, one machine, no Kubernetes.
//!
//! Layout of `--dir` (default `.shorthorn-dev/`): `token` (the API bearer token, mode 0600),
//! `cluster.json` (API URLs and the token file, read by the CLI), and `mN/` per manager with
//! its data directory `mN/data`, its disk `mN/disk`, its log `mN/manager.log` and `mN/pid`.
//! `dev up` on an existing directory resumes the cluster with its data.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::process;

const MANAGERS: u16 = 3;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory holding the cluster's data, disks, logs and token.
    #[arg(long, default_value = ".shorthorn-dev")]
    pub dir: PathBuf,
    /// Manager N serves its REST API on 127.0.0.1:PORT_BASE+N and Raft on PORT_BASE+10+N.
    #[arg(long, default_value_t = 9500)]
    pub port_base: u16,
    /// Return once the cluster is healthy and leave it running (stop it with `dev down`).
    #[arg(long)]
    pub detach: bool,
    /// File of `KEY=value` lines with the backup target's credentials (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ENDPOINTS, ...), handed to every manager.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Directory of the cluster started by `dev up`.
    #[arg(long, default_value = ".shorthorn-dev")]
    pub dir: PathBuf,
}

/// What the CLI reads to find a dev cluster (`cluster.json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevConfig {
    pub apis: Vec<String>,
    pub token_file: PathBuf,
    /// The managers' `--credentials` file, kept so that a resumed cluster has it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
}

impl DevConfig {
    pub fn load(dir: &Path) -> anyhow::Result<DevConfig> {
        let path = dir.join("cluster.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

struct Manager {
    n: u16,
    dir: PathBuf,
    api: String,
    raft: String,
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let token_file = dir.join("token");
    if !token_file.exists() {
        write_token(&token_file)?;
    }
    let managers: Vec<Manager> = (1..=MANAGERS)
        .map(|n| Manager {
            n,
            dir: dir.join(format!("m{n}")),
            api: format!("127.0.0.1:{}", args.port_base + n),
            raft: format!("127.0.0.1:{}", args.port_base + 10 + n),
        })
        .collect();
    for m in &managers {
        if let Some(pid) = running_pid(&m.dir) {
            bail!(
                "manager {} of {} is already running (pid {pid}); `shorthorn dev down --dir {}` first",
                m.n,
                dir.display(),
                dir.display()
            );
        }
    }
    // Someone else's process on our ports would answer our health checks: refuse early.
    for m in &managers {
        for (what, address) in [("REST API", &m.api), ("Raft", &m.raft)] {
            if let Err(err) = std::net::TcpListener::bind(address.as_str()) {
                bail!(
                    "the {what} port of manager {} ({address}) is taken: {err}; choose \
                     another --port-base",
                    m.n
                );
            }
        }
    }
    let resuming = managers[0].dir.join("data").exists();
    let credentials = match &args.credentials {
        Some(file) => Some(
            file.canonicalize()
                .with_context(|| format!("the credentials file {}", file.display()))?,
        ),
        // A resumed cluster keeps the credentials file it was started with.
        None => DevConfig::load(&dir).ok().and_then(|c| c.credentials),
    };
    let config = DevConfig {
        apis: managers
            .iter()
            .map(|m| format!("http://{}", m.api))
            .collect(),
        token_file: token_file.clone(),
        credentials: credentials.clone(),
    };
    fs::write(
        dir.join("cluster.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;

    let mut children = Vec::new();
    let first_raft = managers[0].raft.clone();
    for m in &managers {
        let join = (m.n > 1).then_some(first_raft.as_str());
        children.push(start(
            m,
            join,
            &token_file,
            credentials.as_deref(),
            args.detach,
        )?);
        // A new group forms one member at a time; a resumed one starts all at once.
        if !resuming {
            wait_ready(&m.api, Duration::from_secs(60)).with_context(|| {
                format!(
                    "manager {} did not become ready; see {}",
                    m.n,
                    m.dir.join("manager.log").display()
                )
            })?;
        }
    }
    for m in &managers {
        wait_ready(&m.api, Duration::from_secs(60)).with_context(|| {
            format!(
                "manager {} did not become ready; see {}",
                m.n,
                m.dir.join("manager.log").display()
            )
        })?;
    }
    wait_nodes(
        &config.apis[0],
        &token_file,
        usize::from(MANAGERS),
        Duration::from_secs(60),
    )?;
    println!(
        "Shorthorn dev cluster is up ({} managers{}).",
        MANAGERS,
        if resuming { ", resumed" } else { "" }
    );
    println!("  API:        {}", config.apis.join(", "));
    println!("  token file: {}", token_file.display());
    println!(
        "  web UI:     {}/ (any manager's; sign in with the token)",
        config.apis[0]
    );
    println!("  logs:       {}/m*/manager.log", dir.display());
    println!("Try: shorthorn volume create db --size 1Gi && shorthorn volume ls");
    if args.detach {
        println!("Stop it with: shorthorn dev down --dir {}", dir.display());
        return Ok(());
    }
    println!("Ctrl-C stops it.");
    wait_for_interrupt()?;
    stop_children(&mut children);
    for m in &managers {
        let _ = fs::remove_file(m.dir.join("pid"));
        stop_instances(&m.dir);
    }
    Ok(())
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let mut stopped = 0;
    // Every manager directory, including managers added by hand with `--join`.
    let mut dirs: Vec<PathBuf> = fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('m'))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        if let Some(pid) = running_pid(&dir) {
            process::terminate(pid, Duration::from_secs(15));
            stopped += 1;
        }
        let _ = fs::remove_file(dir.join("pid"));
        stop_instances(&dir);
    }
    println!(
        "stopped {stopped} manager{}",
        if stopped == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Stops the device, engine and replica processes the node agent of manager `dir` left
/// running (they outlive their manager on purpose, so that a manager crash does not stop
/// I/O), devices first so that their last flush reaches the engine, and removes loop
/// devices and FUSE mounts a dead device process left.
fn stop_instances(dir: &Path) {
    for kind in ["devices", "engines", "replicas"] {
        let Ok(entries) = fs::read_dir(dir.join("disk").join(kind)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path().join("process.json")) else {
                continue;
            };
            let Some(pid) = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["pid"].as_i64())
                .and_then(|p| i32::try_from(p).ok())
            else {
                continue;
            };
            if process::is_shorthorn(pid) {
                process::terminate(pid, Duration::from_secs(10));
            }
            if kind == "devices" {
                let device_dir = entry.path();
                if let Err(err) = shorthorn_dataplane::device::loopdev::clean_up(
                    &device_dir,
                    &device_dir.join("fuse"),
                ) {
                    eprintln!("cleaning up {}: {err}", device_dir.display());
                }
            }
        }
    }
}

fn write_token(path: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the API token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn start(
    m: &Manager,
    join: Option<&str>,
    token_file: &Path,
    credentials: Option<&Path>,
    detach: bool,
) -> anyhow::Result<Child> {
    let data = m.dir.join("data");
    let disk = m.dir.join("disk");
    fs::create_dir_all(&disk)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.dir.join("manager.log"))
        .with_context(|| format!("opening {}", m.dir.join("manager.log").display()))?;
    let exe = std::env::current_exe().context("finding the shorthorn executable")?;
    let mut command = Command::new(exe);
    command
        .arg("manager")
        .arg("--node-id")
        .arg(m.n.to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(&m.raft)
        .arg("--api-listen")
        .arg(&m.api)
        .arg("--token-file")
        .arg(token_file)
        .arg("--disk")
        .arg(&disk)
        .arg("--name")
        .arg(format!("node-{}", m.n))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(join) = join {
        command.arg("--join").arg(join);
    }
    if let Some(file) = credentials {
        command.arg("--credentials").arg(file);
    }
    if detach {
        // Its own session: the terminal's Ctrl-C does not reach a detached cluster.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let child = command.spawn().context("starting a manager")?;
    fs::write(m.dir.join("pid"), child.id().to_string())?;
    Ok(child)
}

fn wait_ready(api: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let url = format!("http://{api}/readyz");
    loop {
        match ureq::get(&url).timeout(Duration::from_secs(2)).call() {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => bail!("{url}: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until `count` nodes have registered (each manager's agent registers its node).
fn wait_nodes(api: &str, token_file: &Path, count: usize, within: Duration) -> anyhow::Result<()> {
    let token = fs::read_to_string(token_file)?;
    let deadline = Instant::now() + within;
    let url = format!("{api}/v1/nodes");
    loop {
        let registered = ureq::get(&url)
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
            .and_then(|r| r.into_json::<serde_json::Value>().ok())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if registered >= count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("only {registered} of {count} nodes registered in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_interrupt() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        anyhow::Ok(())
    })
}

fn stop_children(children: &mut [Child]) {
    for child in children.iter() {
        process::signal(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for child in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pid in `dir/pid` if that process is alive and is a shorthorn manager.
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = process::cmdline(pid)?;
    (process::alive(pid) && cmdline.contains("shorthorn") && cmdline.contains("manager"))
        .then_some(pid)
}
