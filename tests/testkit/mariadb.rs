//! A MariaDB server (Debian's `mariadbd`) over a directory, as the seed's mysql pod runs
//! MySQL on its volume: the tests put it on a mounted Shorthorn volume.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::text;

/// A MariaDB server (Debian's `mariadbd`) with its datadir at `datadir`, on a unix socket
/// only; shut down cleanly on drop when still running.
pub struct MariaDb {
    child: Child,
    pub socket: PathBuf,
}

impl MariaDb {
    pub fn start(datadir: &Path, run: &Path) -> MariaDb {
        let socket = run.join("mysqld.sock");
        if !datadir.join("mysql").exists() {
            let out = Command::new("mariadb-install-db")
                .args(["--no-defaults", "--user=root", "--skip-test-db"])
                .arg("--auth-root-authentication-method=normal")
                .arg(format!("--datadir={}", datadir.display()))
                .output()
                .expect("runs mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--skip-networking"])
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", run.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", run.join("error.log").display()))
            .args([
                "--innodb-log-file-size=16M",
                "--innodb-buffer-pool-size=32M",
            ])
            .arg("--innodb-flush-log-at-trx-commit=1")
            .spawn()
            .expect("starts mariadbd");
        let db = MariaDb { child, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.sql("select 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd never answered: {}",
                std::fs::read_to_string(run.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        db
    }

    /// Runs `sql` with the `mariadb` client; its output, or its error.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        mariadb_sql(&self.socket, sql)
    }

    pub fn stop(mut self) {
        self.sql("shutdown").expect("shutdown");
        self.child.wait().expect("mariadbd exits");
    }
}

pub fn mariadb_sql(socket: &Path, sql: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-uroot", "--batch", "--skip-column-names"])
        .arg(format!("--socket={}", socket.display()))
        .args(["-e", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.sql("shutdown");
            let _ = self.child.wait();
        }
    }
}
