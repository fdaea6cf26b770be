//! The replicated log under load, side by side with etcd (run through `bench/raft`).
//!
//! Three `shorthorn manager` processes on loopback (flush on, as always) and three etcd
//! members on loopback take the same load: `RAFT_BENCH_CLIENTS` concurrent proposers (64
//! by default) over one gRPC connection to the leader, for `RAFT_BENCH_SECS` seconds (10).
//! Reported: committed writes per second, p50 and p99 commit latency, and leader failover
//! time (SIGKILL of the leader to the first write committed by the survivors; median of 3).
//!
//! `RAFT_BENCH_MANAGER_ARGS` adds arguments to every `shorthorn manager` (for example
//! `--batches-in-flight 8`).
//!
//! Durability differs: etcd syncs its WAL with fdatasync; sled (under Shorthorn) syncs with
//! sync_file_range, which survives a process crash but not a power loss (see
//! `consensus/src/disk.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shorthorn_consensus::{Client, Error, Reply, Rpc};
use shorthorn_state::{Request, Timestamp};

mod etcd_pb {
    tonic::include_proto!("etcdserverpb");
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A child process, SIGKILLed on drop.
struct Proc {
    child: Option<Child>,
    argv: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(argv: Vec<String>, log: PathBuf) -> BenchResult<Proc> {
        let mut proc = Proc {
            child: None,
            argv,
            log,
        };
        proc.start()?;
        Ok(proc)
    }

    fn start(&mut self) -> BenchResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env("SHORTHORN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[derive(Debug, Default)]
struct Figures {
    writes: u64,
    errors: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
    failovers: Vec<Duration>,
}

impl Figures {
    fn per_sec(&self) -> f64 {
        self.writes as f64 / self.secs
    }
    fn failover(&self) -> Duration {
        let mut f = self.failovers.clone();
        f.sort();
        f.get(f.len() / 2).copied().unwrap_or_default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs `clients` loops of `write` until `secs` pass; returns (writes, errors, latencies).
async fn load<F, Fut>(clients: usize, secs: f64, write: F) -> (u64, u64, Vec<Duration>)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let write = Arc::new(write);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (write, stop) = (write.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if write(w, i).await {
                    lat.push(t0.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((lat, e)) = task.await {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort();
    (all.len() as u64, errors, all)
}

fn setting(value: String) -> shorthorn_state::Command {
    shorthorn_state::Command::new(
        Timestamp(1_700_000_000_000),
        "bench",
        Request::SetSetting {
            key: "backupTargetCredentialSecret".to_string(),
            value,
        },
    )
}

// ---------------------------------------------------------------- shorthorn

struct Managers {
    procs: Vec<Proc>,
    addrs: Vec<String>,
}

async fn wait_until<T>(
    within: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> BenchResult<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_managers(bin: &Path, dir: &Path) -> BenchResult<Managers> {
    std::fs::create_dir_all(dir)?;
    let client = Client::new(Duration::from_secs(2));
    let mut procs = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for id in 1..=3u64 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut argv = vec![
            bin.display().to_string(),
            "manager".into(),
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            dir.join(format!("m{id}")).display().to_string(),
            "--listen".into(),
            addr.clone(),
        ];
        if let Ok(extra) = std::env::var("RAFT_BENCH_MANAGER_ARGS") {
            argv.extend(extra.split_whitespace().map(str::to_string));
        }
        if let Some(first) = addrs.first() {
            argv.push("--join".into());
            argv.push(first.clone());
        }
        procs.push(Proc::spawn(argv, dir.join(format!("m{id}.log")))?);
        wait_until(Duration::from_secs(30), "manager to join", async || {
            let s = client.status(&addr).await.ok()?;
            s.voters.contains(&id).then_some(())
        })
        .await?;
        addrs.push(addr);
    }
    Ok(Managers { procs, addrs })
}

async fn shorthorn_leader(client: &Client, addrs: &[String]) -> BenchResult<usize> {
    wait_until(Duration::from_secs(10), "a shorthorn leader", async || {
        for (i, a) in addrs.iter().enumerate() {
            if let Ok(s) = client.status(a).await
                && s.role == "Leader"
            {
                return Some(i);
            }
        }
        None
    })
    .await
}

async fn bench_shorthorn(
    bin: &Path,
    dir: &Path,
    clients: usize,
    secs: f64,
) -> BenchResult<Figures> {
    let mut group = start_managers(bin, dir).await?;
    let client = Client::new(Duration::from_secs(5));
    let leader = shorthorn_leader(&client, &group.addrs).await?;
    let addr = group.addrs[leader].clone();
    let run = |secs: f64| {
        let (client, addr) = (client.clone(), addr.clone());
        load(clients, secs, move |w, i| {
            let (client, addr) = (client.clone(), addr.clone());
            async move {
                let rpc = Rpc::Propose(setting(format!("{w}-{i}")));
                matches!(client.call(&addr, rpc).await, Ok(Reply::Proposed(Ok(_))))
            }
        })
    };
    run(1.0).await; // warm up
    let (writes, errors, lat) = run(secs).await;
    let mut figures = Figures {
        writes,
        errors,
        secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        failovers: Vec::new(),
    };

    let quick = Client::new(Duration::from_millis(300));
    for trial in 0..3 {
        let leader = shorthorn_leader(&client, &group.addrs).await?;
        let survivors: Vec<String> = group
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, a)| a.clone())
            .collect();
        group.procs[leader].kill();
        let killed = Instant::now();
        let mut n = 0u64;
        loop {
            n += 1;
            let target = &survivors[(n as usize) % survivors.len()];
            let rpc = Rpc::Propose(setting(format!("failover-{trial}-{n}")));
            match quick.call(target, rpc).await {
                Ok(Reply::Proposed(Ok(_))) => break,
                Ok(Reply::Proposed(Err(Error::NotLeader { addr, .. })))
                    if survivors.contains(&addr) =>
                {
                    if let Ok(Reply::Proposed(Ok(_))) = quick
                        .call(
                            &addr,
                            Rpc::Propose(setting(format!("failover-{trial}-{n}b"))),
                        )
                        .await
                    {
                        break;
                    }
                }
                _ => {}
            }
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("no shorthorn commit within 30 s of the leader kill".into());
            }
        }
        figures.failovers.push(killed.elapsed());
        group.procs[leader].start()?;
        let addr = group.addrs[leader].clone();
        wait_until(
            Duration::from_secs(30),
            "the killed manager to catch up",
            async || {
                let s = client.status(&addr).await.ok()?;
                (s.leader.is_some() && s.applied.is_some()).then_some(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(figures)
}

// ---------------------------------------------------------------- etcd

struct Etcd {
    procs: Vec<Proc>,
    clients: Vec<String>,
}

async fn start_etcd(dir: &Path) -> BenchResult<Etcd> {
    std::fs::create_dir_all(dir)?;
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        peers.push(format!("http://127.0.0.1:{}", free_port()?));
        clients.push(format!("127.0.0.1:{}", free_port()?));
    }
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("e{}={p}", i + 1))
        .collect();
    let mut procs = Vec::new();
    for i in 0..3 {
        let argv = vec![
            "etcd".to_string(),
            "--name".into(),
            format!("e{}", i + 1),
            "--data-dir".into(),
            dir.join(format!("e{}", i + 1)).display().to_string(),
            "--listen-client-urls".into(),
            format!("http://{}", clients[i]),
            "--advertise-client-urls".into(),
            format!("http://{}", clients[i]),
            "--listen-peer-urls".into(),
            peers[i].clone(),
            "--initial-advertise-peer-urls".into(),
            peers[i].clone(),
            "--initial-cluster".into(),
            initial.join(","),
            "--initial-cluster-token".into(),
            "shorthorn-bench".into(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        procs.push(Proc::spawn(argv, dir.join(format!("e{}.log", i + 1)))?);
    }
    let etcd = Etcd { procs, clients };
    for c in etcd.clients.clone() {
        wait_until(
            Duration::from_secs(30),
            "etcd to accept writes",
            async || {
                etcd_put(&c, b"ready".to_vec(), Duration::from_secs(1))
                    .await
                    .then_some(())
            },
        )
        .await?;
    }
    Ok(etcd)
}

async fn etcd_channel(addr: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .ok()
}

async fn etcd_put(addr: &str, key: Vec<u8>, timeout: Duration) -> bool {
    let Some(channel) = etcd_channel(addr).await else {
        return false;
    };
    let mut kv = etcd_pb::kv_client::KvClient::new(channel);
    let mut request = tonic::Request::new(etcd_pb::PutRequest {
        key,
        value: vec![b'v'; 32],
    });
    request.set_timeout(timeout);
    matches!(
        tokio::time::timeout(timeout, kv.put(request)).await,
        Ok(Ok(_))
    )
}

/// The etcd leader's index, from `etcdctl endpoint status`.
fn etcd_leader(etcd: &Etcd, alive: &[usize]) -> BenchResult<usize> {
    let endpoints: Vec<String> = alive.iter().map(|i| etcd.clients[*i].clone()).collect();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &endpoints.join(","),
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .output()?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    for (row, i) in rows.iter().zip(alive) {
        let member = &row["Status"]["header"]["member_id"];
        if !member.is_null() && *member == row["Status"]["leader"] {
            return Ok(*i);
        }
    }
    Err("etcdctl endpoint status shows no leader".into())
}

async fn bench_etcd(dir: &Path, clients: usize, secs: f64) -> BenchResult<Figures> {
    let mut etcd = start_etcd(dir).await?;
    let leader = etcd_leader(&etcd, &[0, 1, 2])?;
    let channel = etcd_channel(&etcd.clients[leader])
        .await
        .ok_or("cannot connect to the etcd leader")?;
    let run = |secs: f64| {
        let channel = channel.clone();
        load(clients, secs, move |w, i| {
            let mut kv = etcd_pb::kv_client::KvClient::new(channel.clone());
            async move {
                let key = format!("bench/{w}/{}", i % 1000).into_bytes();
                let request = etcd_pb::PutRequest {
                    key,
                    value: vec![b'v'; 32],
                };
                kv.put(request).await.is_ok()
            }
        })
    };
    run(1.0).await;
    let (writes, errors, lat) = run(secs).await;
    let mut figures = Figures {
        writes,
        errors,
        secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        failovers: Vec::new(),
    };
    for trial in 0..3 {
        let leader = etcd_leader(&etcd, &[0, 1, 2])?;
        let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        etcd.procs[leader].kill();
        let killed = Instant::now();
        let mut n = 0usize;
        loop {
            n += 1;
            let target = &etcd.clients[survivors[n % 2]];
            let key = format!("failover/{trial}/{n}").into_bytes();
            if etcd_put(target, key, Duration::from_millis(300)).await {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("no etcd commit within 30 s of the leader kill".into());
            }
        }
        figures.failovers.push(killed.elapsed());
        etcd.procs[leader].start()?;
        let c = etcd.clients[leader].clone();
        wait_until(
            Duration::from_secs(30),
            "the killed etcd member to serve",
            async || {
                etcd_put(&c, b"back".to_vec(), Duration::from_secs(1))
                    .await
                    .then_some(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(figures)
}

// ---------------------------------------------------------------- report

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; there are no other options.
    let secs: f64 = std::env::var("RAFT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let clients: usize = std::env::var("RAFT_BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let bin = PathBuf::from(
        std::env::var("SHORTHORN_BIN")
            .map_err(|_| "set SHORTHORN_BIN to the shorthorn binary (bench/raft does)")?,
    );
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        eprintln!("raft bench: 3 voters on loopback, {clients} concurrent proposers, {secs} s");
        let shorthorn = bench_shorthorn(&bin, &dir.path().join("shorthorn"), clients, secs).await?;
        eprintln!("shorthorn done: {shorthorn:?}");
        let etcd = bench_etcd(&dir.path().join("etcd"), clients, secs).await?;
        eprintln!("etcd done: {etcd:?}");
        let version = Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        println!();
        println!(
            "{:<34}{:>14}{:>14}{:>10}",
            "3 members, loopback", "shorthorn", "etcd", "ratio"
        );
        println!(
            "{:<34}{:>14.0}{:>14.0}{:>10.2}",
            "committed writes/s",
            shorthorn.per_sec(),
            etcd.per_sec(),
            shorthorn.per_sec() / etcd.per_sec().max(1e-9)
        );
        for (label, a, b) in [
            ("p50 commit latency (ms)", shorthorn.p50, etcd.p50),
            ("p99 commit latency (ms)", shorthorn.p99, etcd.p99),
            (
                "leader failover, median of 3 (ms)",
                shorthorn.failover(),
                etcd.failover(),
            ),
        ] {
            println!(
                "{:<34}{:>14}{:>14}{:>10.2}",
                label,
                ms(a),
                ms(b),
                a.as_secs_f64() / b.as_secs_f64().max(1e-9)
            );
        }
        println!(
            "failover trials (ms): shorthorn {:?}, etcd {:?}",
            shorthorn
                .failovers
                .iter()
                .map(|d| ms(*d))
                .collect::<Vec<_>>(),
            etcd.failovers.iter().map(|d| ms(*d)).collect::<Vec<_>>()
        );
        println!(
            "errors during load: shorthorn {}, etcd {}",
            shorthorn.errors, etcd.errors
        );
        println!("etcd: {version}");
        println!(
            "goals: writes/s >= 2x etcd: {}; p99 < 50 ms: {}; failover < 1.5 s: {}",
            shorthorn.per_sec() >= 2.0 * etcd.per_sec(),
            shorthorn.p99 < Duration::from_millis(50),
            shorthorn.failover() < Duration::from_millis(1500)
        );
        BenchResult::Ok(())
    })
}
