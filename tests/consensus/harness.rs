//! Real `shorthorn manager` processes on 127.0.0.1 for the multi-process consensus tests.
//! Every process is killed (SIGKILL, by pid) when its guard drops, so a failing test
//! leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shorthorn_consensus::{Client, Status};
use shorthorn_state::{Request, State, Timestamp, VolumeSpec};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One manager process; SIGKILLed on drop.
pub struct Manager {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Manager {
    /// Starts `shorthorn manager` for node `id` with its data under `root`.
    pub fn start(root: &Path, id: u64, addr: &str, join: Option<&str>) -> Manager {
        let dir = root.join(format!("m{id}"));
        let mut manager = Manager {
            id,
            addr: addr.to_string(),
            log: root.join(format!("m{id}.log")),
            dir,
            child: None,
        };
        manager.spawn(join);
        manager
    }

    fn spawn(&mut self, join: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the manager's log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_shorthorn"));
        command
            .arg("manager")
            .arg("--node-id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--heartbeat-ms")
            .arg("100")
            .env("SHORTHORN_LOG", "warn,shorthorn=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(join) = join {
            command.arg("--join").arg(join);
        }
        self.child = Some(command.spawn().expect("spawn shorthorn manager"));
    }

    /// Starts the process again on the same data directory.
    pub fn restart(&mut self, join: Option<&str>) {
        self.kill();
        self.spawn(join);
    }

    /// Sends SIGTERM (a clean stop request) to the process.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; returns whether it succeeded.
    pub fn wait_exit(&mut self, within: Duration) -> Option<bool> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.success());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client with short timeouts for tests.
pub fn client() -> Client {
    Client::new(Duration::from_secs(5))
}

/// Waits until `check` holds for the status of the manager at `addr`.
pub async fn wait_status(
    client: &Client,
    addr: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + within;
    loop {
        let last = match client.status(addr).await {
            Ok(status) if check(&status) => return status,
            Ok(status) => format!("{status:?}"),
            Err(err) => err.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{addr}: not {what} within {within:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts manager 1 (bootstrap) and managers 2..=n joining through it; waits for `n` voters.
pub async fn start_group(root: &Path, n: u64) -> Vec<Manager> {
    let client = client();
    let mut managers = Vec::new();
    for id in 1..=n {
        let addr = format!("127.0.0.1:{}", free_port());
        let join = managers.first().map(|m: &Manager| m.addr.clone());
        managers.push(Manager::start(root, id, &addr, join.as_deref()));
        wait_status(&client, &addr, Duration::from_secs(30), "a member", |s| {
            s.voters.contains(&id)
        })
        .await;
    }
    for m in &managers {
        wait_status(
            &client,
            &m.addr,
            Duration::from_secs(20),
            "in a full group",
            |s| s.voters.len() == n as usize && s.leader.is_some(),
        )
        .await;
    }
    managers
}

pub fn addrs(managers: &[Manager]) -> Vec<String> {
    managers.iter().map(|m| m.addr.clone()).collect()
}

/// The leader as the first reachable manager sees it.
pub async fn leader(client: &Client, managers: &[Manager], within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        for m in managers {
            if let Ok(status) = client.status(&m.addr).await
                && let Some(leader) = status.leader
                && let Ok(lead) = client.status(&managers[(leader - 1) as usize].addr).await
                && lead.role == "Leader"
            {
                return leader;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn create_volume(name: &str) -> shorthorn_state::Command {
    shorthorn_state::Command::new(
        Timestamp(1_700_000_000_000),
        "test",
        Request::CreateVolume(VolumeSpec {
            name: name.to_string(),
            size: 64 << 20,
            ..Default::default()
        }),
    )
}

/// Waits until every listed manager has applied the same index as the others and holds
/// the same encoded state; returns that state.
pub async fn converge(client: &Client, managers: &[&Manager], within: Duration) -> State {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for m in managers {
            match client.local_state(&m.addr).await {
                Ok(state) => seen.push(state),
                Err(_) => break,
            }
        }
        if seen.len() == managers.len() && seen.windows(2).all(|w| w[0] == w[1]) {
            let (_, bytes) = &seen[0];
            return State::decode(bytes).expect("decodable state");
        }
        assert!(
            Instant::now() < deadline,
            "managers did not converge within {within:?}: applied {:?}",
            seen.iter().map(|(a, s)| (*a, s.len())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
