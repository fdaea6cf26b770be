//! Reads of layer files off the data path thread. A read is first tried on the data path
//! thread with `preadv2(RWF_NOWAIT)`, which succeeds only when the page cache holds every
//! byte (no disk wait, no thread hop); a read that would wait for the disk goes to a small
//! pool of reader threads, so a queue of reads reaches the disk as a queue instead of one
//! at a time. It never decides which layer a block comes from (that is the replica's
//! chain, resolved into a [`ReadPlan`] under the store lock) and never writes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

/// Most reader threads; started as reads wait for the disk, kept for the process's life.
/// 32 is the queue depth a virtio or NVMe disk serves well and what a client's QD32 needs.
const MAX_READERS: usize = 32;
/// A reader only runs `pread`: a small stack keeps 32 of them within the replica's memory.
const READER_STACK: usize = 128 << 10;

/// Where the bytes of a read come from, resolved under the store lock so that the reads
/// themselves run without it. The files are the layers' own (shared) descriptors.
pub enum ReadPlan {
    /// The whole range from one layer file, at the volume offset.
    One(Arc<File>),
    /// Runs in order: the layer to read each from (none: zeros) and its length in bytes.
    Runs(Vec<(Option<Arc<File>>, usize)>),
}

impl ReadPlan {
    /// Fills `buf` (the range starting at volume offset `offset`). With `nowait`, only from
    /// the page cache: `Ok(false)` says some byte was not there and nothing may be assumed
    /// of `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8], nowait: bool) -> std::io::Result<bool> {
        match self {
            ReadPlan::One(file) => read_at(file, buf, offset, nowait),
            ReadPlan::Runs(runs) => {
                let mut at = 0usize;
                for (file, len) in runs {
                    let slice = &mut buf[at..at + len];
                    match file {
                        Some(file) => {
                            if !read_at(file, slice, offset + at as u64, nowait)? {
                                return Ok(false);
                            }
                        }
                        None => slice.fill(0),
                    }
                    at += len;
                }
                Ok(true)
            }
        }
    }
}

/// Cleared when the kernel refuses `RWF_NOWAIT` (not this filesystem or kernel): every
/// read then goes to the pool.
static NOWAIT: AtomicBool = AtomicBool::new(true);

/// `pread` of all of `buf` at `offset`; with `nowait`, `Ok(false)` when the page cache
/// does not hold all of it.
fn read_at(file: &File, buf: &mut [u8], offset: u64, nowait: bool) -> std::io::Result<bool> {
    if !nowait {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)?;
        return Ok(true);
    }
    if !NOWAIT.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; the fd is open (borrowed).
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n >= 0 {
        // A short count is a partial cache hit (or the end of the file): the pool reads
        // all of it again, and reports a real end of file.
        return Ok(n as usize == buf.len());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(false),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
            NOWAIT.store(false, Ordering::Relaxed);
            Ok(false)
        }
        _ => Err(e),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The reader threads of this process and the queue they take reads from.
struct Pool {
    queue: Mutex<Sender<Job>>,
    jobs: Arc<Mutex<Receiver<Job>>>,
    threads: AtomicUsize,
    /// Threads waiting for a job, and jobs queued that no thread took yet: a job queued
    /// while every thread is busy (queued > idle) starts another thread.
    idle: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Runs `job` on a reader thread, starting one when none is idle (up to `MAX_READERS`).
/// When no thread can be started and none exists, the job runs on the caller's thread.
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = channel();
        Pool {
            queue: Mutex::new(tx),
            jobs: Arc::new(Mutex::new(rx)),
            threads: AtomicUsize::new(0),
            idle: Arc::new(AtomicUsize::new(0)),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    });
    let queued = pool.queued.fetch_add(1, Ordering::AcqRel) + 1;
    if queued > pool.idle.load(Ordering::Acquire)
        && pool.threads.load(Ordering::Acquire) < MAX_READERS
    {
        start_reader(pool);
    }
    if pool.threads.load(Ordering::Acquire) == 0 {
        pool.queued.fetch_sub(1, Ordering::AcqRel);
        job();
        return;
    }
    let queue = pool.queue.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(refused) = queue.send(Box::new(job)) {
        drop(queue);
        pool.queued.fetch_sub(1, Ordering::AcqRel);
        (refused.0)();
    }
}

fn start_reader(pool: &Pool) {
    let jobs = pool.jobs.clone();
    let idle = pool.idle.clone();
    let queued = pool.queued.clone();
    pool.threads.fetch_add(1, Ordering::AcqRel);
    idle.fetch_add(1, Ordering::AcqRel);
    let started = std::thread::Builder::new()
        .name("shorthorn-read".into())
        .stack_size(READER_STACK)
        .spawn(move || {
            loop {
                let job = {
                    let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
                    rx.recv()
                };
                let Ok(job) = job else { return };
                queued.fetch_sub(1, Ordering::AcqRel);
                idle.fetch_sub(1, Ordering::AcqRel);
                job();
                idle.fetch_add(1, Ordering::AcqRel);
            }
        });
    if let Err(e) = started {
        pool.threads.fetch_sub(1, Ordering::AcqRel);
        pool.idle.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "cannot start a reader thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of runs reads each run from its layer and zeros where none holds it, both
    /// from the page cache and through the pool.
    #[test]
    fn a_plan_reads_its_runs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 16384]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let plan = ReadPlan::Runs(vec![(Some(file.clone()), 4096), (None, 4096)]);
        let mut buf = vec![1u8; 8192];
        assert!(plan.read(4096, &mut buf, false).unwrap());
        assert!(buf[..4096].iter().all(|&b| b == 7) && buf[4096..].iter().all(|&b| b == 0));
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(move || {
            let mut buf = vec![0u8; 4096];
            let read = ReadPlan::One(file).read(0, &mut buf, false);
            tx.send((read.unwrap(), buf)).unwrap();
        });
        let (done, buf) = rx.recv().unwrap();
        assert!(done && buf.iter().all(|&b| b == 7));
    }
}
