//! Worker threads: one single-threaded tokio runtime per worker, HAProxy's `nbthread` model.
//!
//! A connection lives its whole life on one worker: its requests, the upstream connections they
//! use (each worker has its own pools, `upstream::set_pool_index`) and every task hyper spawns
//! for them.
//! Wakeups between a client connection and its upstream connection therefore never cross
//! threads, which measured ~12% less CPU per request than tokio's work-stealing scheduler
//! (docs/benchmarks.md). The accept loops run on the control runtime and hand each new
//! connection to the next worker in turn.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// A fixed set of worker threads.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for id in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wasp-worker-{id}"))
                .spawn(move || {
                    crate::upstream::set_pool_index(id);
                    crate::counters::set_shard(id);
                    runtime.block_on(stop.cancelled());
                    // Dropping the runtime cancels whatever is still running on it.
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            handles,
            threads,
            stop,
            next: AtomicUsize::new(0),
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker, round-robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }

    /// The default worker count: one per CPU.
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
