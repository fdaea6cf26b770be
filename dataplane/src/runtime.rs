//! The data path's own runtime: one thread that runs every NBD connection, every replica
//! link of an engine and every engine connection of a replica server in this process.
//!
//! A block request touches several tasks (the NBD reader, the request, one writer and one
//! reader per replica link, the reply writer). On the caller's multi-threaded runtime each
//! hand-off between them may wake another worker thread through a futex and migrate the
//! task; measured on a 2-core host, that was more than one context switch per 4 KiB write.
//! On one thread every hand-off is a queue push, and the syscalls that remain are the
//! socket and file I/O themselves. Control calls (gRPC, rebuild, snapshots) stay on the
//! caller's runtime; they only send requests through channels, which work across runtimes.
//!
//! It must never run blocking work other than the short file I/O of the replica store:
//! reads that wait for the disk go to the replica's reader threads and fsync to the
//! blocking pool, except the fsync of a flush its connection sent alone
//! (`replica::server`).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};

static DATA_PATH: OnceLock<Option<Handle>> = OnceLock::new();

/// The data path runtime, started on first use. When its thread cannot be started (out of
/// threads or file descriptors), the caller's runtime is used instead, with a warning.
pub fn handle() -> Handle {
    let handle = DATA_PATH.get_or_init(|| match start() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no dedicated data path thread; using the caller's runtime");
            None
        }
    });
    handle.clone().unwrap_or_else(Handle::current)
}

fn start() -> std::io::Result<Handle> {
    let runtime = Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("shorthorn-io".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
