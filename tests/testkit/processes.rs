//! Long-running child processes of one test (servers, sidecars, a kubelet), each logging to
//! `NAME.log` in a directory, killed by their own pid on drop, last started first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Processes {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Processes {
    /// Processes whose logs go to `dir` (which must exist).
    pub fn new(dir: &Path) -> Processes {
        Processes {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    /// `NAME.log` in the directory.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts `command` as `name`, its stdout and stderr into `NAME.log`.
    pub fn spawn(&mut self, name: &str, mut command: Command) {
        let log = File::create(self.log(name)).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starts {name} ({command:?}): {e}"));
        self.children.push((name.to_string(), child));
    }

    /// The processes that have exited, with their status.
    pub fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|(name, child)| {
                child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| format!("{name} exited ({status})"))
            })
            .collect()
    }

    /// Waits up to `limit` for `done`; fails with every process's log tail when it does not
    /// come, or at once when one of them exited.
    pub fn wait(&mut self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if done() {
                return;
            }
            let exited = self.exited();
            if !exited.is_empty() || start.elapsed() > limit {
                panic!(
                    "waiting for {what}: {}\n{}",
                    if exited.is_empty() {
                        format!("timed out after {} s", limit.as_secs())
                    } else {
                        exited.join(", ")
                    },
                    self.log_tails(20)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last `lines` lines of each process's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut all = String::new();
        for (name, _) in &self.children {
            let log = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let kept: Vec<&str> = log.lines().collect();
            let tail = &kept[kept.len().saturating_sub(lines)..];
            all.push_str(&format!("--- {name} log tail:\n{}\n", tail.join("\n")));
        }
        all
    }

    /// Fails, with every log tail, if one of the processes has exited; `what` names them.
    pub fn check_running(&mut self, what: &str) {
        let exited = self.exited();
        assert!(
            exited.is_empty(),
            "{what}: {}\n{}",
            exited.join(", "),
            self.log_tails(30)
        );
    }

    /// Kills (SIGKILL, by pid) and reaps the processes, last started first.
    pub fn kill_all(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}
