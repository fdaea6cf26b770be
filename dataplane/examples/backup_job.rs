//! Drives one engine's backup control API from a script (used by `bench/backup`):
//!   backup_job SOCKET snapshot NAME
//!   backup_job SOCKET backup NAME SNAPSHOT BASE|- TARGET CREDFILE CONCURRENCY
//!   backup_job SOCKET restore VOLUME NAME TARGET CREDFILE CONCURRENCY
//!   backup_job - verify VOLUME NAME TARGET CREDFILE CONCURRENCY   (no engine: reads and
//!     checks every block in this process, to tell the target's speed from the engine's)
//!   backup_job SOCKET copy SOURCE_VOLUME SNAPSHOT SIZE CONCURRENCY REPLICA...
//! (`bench/copy` uses `copy`: a snapshot of another volume copied from its replicas.)
//! Waits for the job and prints `seconds=… done_bytes=… uploaded_bytes=… blocks=…
//! requests=…`; exits 1 with the error when the job fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shorthorn_dataplane::address::Address;
use shorthorn_dataplane::backup::{Credentials, Store};
use shorthorn_dataplane::{control, proto};

fn creds(path: &str) -> Result<HashMap<String, String>, Box<dyn std::error::Error>> {
    let c = Credentials::parse_lines(&std::fs::read_to_string(path)?)?;
    Ok(c.to_map().into_iter().collect())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .ok_or("missing argument; see the source")
    };
    if arg(1)? == "verify" {
        let store = Store::open_url(
            &arg(4)?,
            &Credentials::parse_lines(&std::fs::read_to_string(arg(5)?)?)?,
        )?;
        let started = Instant::now();
        let bad = store.verify(&arg(2)?, &arg(3)?, arg(6)?.parse()?).await?;
        println!(
            "seconds={:.2} bad_blocks={} requests={}",
            started.elapsed().as_secs_f64(),
            bad.len(),
            store
                .counters
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        return Ok(());
    }
    let mut c = control::connect(&Address::Unix(arg(0)?.into())).await?;
    let started = Instant::now();
    let job = match arg(1)?.as_str() {
        "snapshot" => {
            c.create_snapshot(proto::SnapshotName { name: arg(2)? })
                .await?;
            return Ok(());
        }
        "backup" => {
            let base = arg(4)?;
            c.start_backup(proto::StartBackupRequest {
                name: arg(2)?,
                snapshot: arg(3)?,
                base_snapshot: String::new(),
                base_backup: if base == "-" { String::new() } else { base },
                target_url: arg(5)?,
                credentials: creds(&arg(6)?)?,
                labels: HashMap::new(),
                concurrency: arg(7)?.parse()?,
            })
            .await?
            .into_inner()
            .name
        }
        "restore" => {
            c.start_restore(proto::StartRestoreRequest {
                backup_volume: arg(2)?,
                backup_name: arg(3)?,
                target_url: arg(4)?,
                credentials: creds(&arg(5)?)?,
                concurrency: arg(6)?.parse()?,
                base_backup_name: String::new(),
                compare_local: false,
            })
            .await?
            .into_inner()
            .name
        }
        "copy" => {
            c.start_copy(proto::StartCopyRequest {
                source_volume: arg(2)?,
                snapshot: arg(3)?,
                size_bytes: arg(4)?.parse()?,
                concurrency: arg(5)?.parse()?,
                source_replicas: args.get(6..).unwrap_or_default().to_vec(),
            })
            .await?
            .into_inner()
            .name
        }
        other => return Err(format!("unknown command {other}").into()),
    };
    loop {
        let s = c
            .job_status(proto::JobName { name: job.clone() })
            .await?
            .into_inner();
        if s.state != proto::JobState::Running as i32 {
            if s.state == proto::JobState::Error as i32 {
                eprintln!("job {job} failed: {}", s.error);
                std::process::exit(1);
            }
            println!(
                "seconds={:.2} done_bytes={} uploaded_bytes={} blocks={} requests={}",
                started.elapsed().as_secs_f64(),
                s.done_bytes,
                s.uploaded_bytes,
                s.blocks,
                s.requests
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
