//! Signals to the processes Shorthorn starts (managers, replicas, engines) by pid, for the
//! node agent and `dev up/down`. Callers check that a pid is one of ours before signalling.

use std::fs;
use std::time::{Duration, Instant};

/// Whether `pid` exists and has not exited (a zombie counts as exited).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// The command line of `pid` (arguments joined by NUL), if it exists.
pub fn cmdline(pid: i32) -> Option<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| String::from_utf8_lossy(&c).into_owned())
}

/// Whether `pid` is alive and runs the shorthorn binary.
pub fn is_shorthorn(pid: i32) -> bool {
    alive(pid) && cmdline(pid).is_some_and(|c| c.contains("shorthorn"))
}

pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects; callers pass pids of processes they started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// SIGTERM, up to `grace` for the process to exit, then SIGKILL.
pub fn terminate(pid: i32, grace: Duration) {
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(pid, libc::SIGKILL);
    }
}
