//! Worker threads: one single-threaded tokio runtime per worker, HAProxy's `nbthread` model.
//!
//! A connection lives its whole life on one worker: its requests, the upstream connections they
//! use (each worker has its own pools, `upstream::set_pool_index`) and every task hyper spawns
//! for them.
//! Wakeups between a client connection and its upstream connection therefore never cross
//! threads, which measured ~12% less CPU per request than tokio's work-stealing scheduler
//! (docs/benchmarks.md). Every worker also accepts: each listener has an accept loop on every
//! worker ([`Workers::spawn_on_each`]), and a connection is served by the worker that accepted
//! it, so a new connection never crosses threads either.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::task;
use tokio_util::sync::CancellationToken;

/// A fixed set of worker threads.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
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
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Starts one task on every worker. `make` builds each worker's task on the calling thread
    /// but inside that worker's runtime context, so that what it registers (a socket) belongs to
    /// the runtime the task then runs on. All or nothing: when a `make` fails, no task starts
    /// and the tasks built so far are dropped.
    pub fn spawn_on_each<F>(
        &self,
        mut make: impl FnMut() -> io::Result<F>,
    ) -> io::Result<Vec<task::JoinHandle<()>>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            let _context = handle.enter();
            tasks.push(make()?);
        }
        Ok(self
            .handles
            .iter()
            .zip(tasks)
            .map(|(handle, task)| handle.spawn(task))
            .collect())
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    use super::Workers;

    #[test]
    fn spawn_on_each_runs_a_task_on_every_worker_in_its_runtime() {
        let workers = Workers::start(3).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let tasks = workers
            .spawn_on_each(|| {
                // `from_std` panics outside a runtime: `make` runs in the worker's context.
                let socket = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
                let tx = tx.clone();
                Ok(async move {
                    // One accept per task: three connections reach three different tasks.
                    if socket.accept().await.is_ok() {
                        let _ = tx.send(std::thread::current().name().map(str::to_owned));
                    }
                })
            })
            .unwrap();
        assert_eq!(tasks.len(), 3);
        drop(listener);
        let _clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut names: Vec<String> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["wasp-worker-0", "wasp-worker-1", "wasp-worker-2"]);
    }

    #[test]
    fn spawn_on_each_starts_nothing_when_a_task_cannot_be_made() {
        let workers = Workers::start(3).unwrap();
        let held = Arc::new(());
        let mut made = 0;
        let result = workers.spawn_on_each(|| {
            made += 1;
            if made == 3 {
                return Err(std::io::Error::other("cannot"));
            }
            let held = Arc::clone(&held);
            // Never ends: a started task would keep its clone of `held` alive.
            Ok(async move {
                let _held = held;
                std::future::pending::<()>().await
            })
        });
        assert!(result.is_err());
        assert_eq!(Arc::strong_count(&held), 1, "the tasks made were dropped");
    }
}
