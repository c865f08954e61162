//! Worker threads: one single-threaded tokio runtime per worker, HAProxy's `nbthread` model.
//!
//! A connection lives its whole life on one worker: its requests, the upstream connections they
//! use (each worker has its own pools, `upstream::set_pool_index`) and every task hyper spawns
//! for them.
//! Wakeups between a client connection and its upstream connection therefore never cross
//! threads, which measured ~12% less CPU per request than tokio's work-stealing scheduler
//! (docs/benchmarks.md). Every worker also accepts: each listener has an accept loop on every
//! worker ([`Workers::spawn_on_each`]). A connection is served by the worker that accepted it
//! unless that worker already serves more connections than the least busy one (a first-come
//! accept would otherwise pile a burst of long-lived connections onto whichever worker woke
//! first); then it moves to the least busy worker ([`Placement`]).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task;
use tokio_util::sync::CancellationToken;

use crate::proxy::sched;

/// A fixed set of worker threads.
#[derive(Debug)]
pub struct Workers {
    placement: Placement,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

/// Which worker serves a new connection: the one that accepted it, or the least busy one when
/// the acceptor is busier (by more than one connection).
#[derive(Debug, Clone)]
pub struct Placement(Arc<Placed>);

#[derive(Debug)]
struct Placed {
    handles: Vec<Handle>,
    /// Connections each worker serves now.
    load: Box<[AtomicUsize]>,
}

/// A connection's share of its worker's load, given back when dropped.
#[derive(Debug)]
pub struct LoadGuard {
    placement: Placement,
    worker: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.placement.0.load[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Placement {
    /// The worker that serves a connection accepted by worker `me`, counted as busier by one
    /// until the guard is dropped.
    pub fn place(&self, me: usize) -> (usize, LoadGuard) {
        let load = &self.0.load;
        let mine = load[me].load(Ordering::Relaxed);
        let (least, least_load) = load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, l)| l)
            .unwrap_or((me, mine));
        let worker = if mine > least_load + 1 { least } else { me };
        load[worker].fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard {
            placement: self.clone(),
            worker,
        };
        (worker, guard)
    }

    /// Runs `task` on worker `worker`.
    pub fn spawn_on<F>(&self, worker: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.0.handles[worker].spawn(task);
    }
}

/// How a worker's runtime is built: single-threaded, with IO and time, and a fresh
/// [`clock::recent`](crate::clock::recent) on every wake-up, so that it is never older than
/// the current round of work. Tests of code that reads `clock::recent` build theirs with it.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().on_thread_unpark(crate::clock::refresh);
    builder
}

impl Workers {
    /// Starts `count` workers (at least one). With `slice`, each asks the scheduler for time
    /// slices that long ([`sched::request_slice`]); with `pin`, worker `i` runs on the `i`-th
    /// CPU the process may use ([`sched::pin_to_cpu`]). Where either fails, worker 0 says so
    /// and all run anyway. Returns once every worker has set itself up so.
    pub fn start(count: usize, slice: Option<Duration>, pin: bool) -> io::Result<Workers> {
        let count = count.max(1);
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let (ready, set_up) = std::sync::mpsc::channel();
        for id in 0..count {
            let runtime = runtime_builder().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let ready = ready.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wasp-worker-{id}"))
                .spawn(move || {
                    if let Some(slice) = slice
                        && let Err(e) = sched::request_slice(slice)
                        && id == 0
                    {
                        tracing::warn!(error = %e, "sched_slice {slice:?} not applied");
                    }
                    if pin
                        && let Err(e) = sched::pin_to_cpu(id)
                        && id == 0
                    {
                        tracing::warn!(error = %e, "cpu_affinity not applied");
                    }
                    crate::upstream::set_pool_index(id);
                    crate::counters::set_shard(id);
                    let _ = ready.send(());
                    drop(ready);
                    runtime.block_on(stop.cancelled());
                    // Dropping the runtime cancels whatever is still running on it.
                })?;
            threads.push(thread);
        }
        drop(ready);
        // Ends early only if a worker thread died before it was ready (then there is no
        // message left to wait for).
        for _ in set_up.iter().take(count) {}
        let load = (0..count).map(|_| AtomicUsize::new(0)).collect();
        Ok(Workers {
            placement: Placement(Arc::new(Placed { handles, load })),
            threads,
            stop,
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.placement.0.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placement.0.handles.is_empty()
    }

    /// Where new connections go (shared by every accept loop).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Starts one task on every worker. `make(i)` builds worker `i`'s task on the calling
    /// thread but inside that worker's runtime context, so that what it registers (a socket)
    /// belongs to the runtime the task then runs on. All or nothing: when a `make` fails, no
    /// task starts and the tasks built so far are dropped.
    pub fn spawn_on_each<F>(
        &self,
        mut make: impl FnMut(usize) -> io::Result<F>,
    ) -> io::Result<Vec<task::JoinHandle<()>>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handles = &self.placement.0.handles;
        let mut tasks = Vec::with_capacity(handles.len());
        for (i, handle) in handles.iter().enumerate() {
            let _context = handle.enter();
            tasks.push(make(i)?);
        }
        Ok(handles
            .iter()
            .zip(tasks)
            .map(|(handle, task)| handle.spawn(task))
            .collect())
    }

    /// The default worker count: one per CPU.
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Whether `count` workers are pinned when the config does not say (`cpu_affinity`
    /// absent): when there is one worker for each CPU the process may run on. Then no CPU is
    /// left over for a worker to move to, and a worker that moves can only land on another
    /// worker's core; pinned, each keeps its own. On lab 2, pinning cut wasp's median p99 by
    /// 23 to 41% in seven of eight sets and kept its req/s (docs/benchmarks.md).
    pub fn pin_by_default(count: usize) -> bool {
        sched::allowed_cpus().is_ok_and(|cpus| one_per_cpu(count, cpus.len()))
    }
}

/// `count` workers on `cpus` CPUs, one each (more than one: a single worker has no other to
/// share its core with).
fn one_per_cpu(count: usize, cpus: usize) -> bool {
    count > 1 && count == cpus
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

    use super::{Workers, one_per_cpu};

    #[test]
    fn spawn_on_each_runs_a_task_on_every_worker_in_its_runtime() {
        let workers = Workers::start(3, None, false).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let tasks = workers
            .spawn_on_each(|_| {
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
    fn connections_accepted_by_one_worker_are_spread_over_all() {
        let workers = Workers::start(3, None, false).unwrap();
        let placement = workers.placement();
        // Worker 0 accepts everything (it woke first every time).
        let held: Vec<_> = (0..99).map(|_| placement.place(0)).collect();
        let mut per_worker = [0usize; 3];
        for (worker, _) in &held {
            per_worker[*worker] += 1;
        }
        let (min, max) = (per_worker.iter().min(), per_worker.iter().max());
        assert!(max.unwrap() - min.unwrap() <= 2, "{per_worker:?}");
        // Connections that end give their worker's share back: worker 0 keeps the next one.
        drop(held);
        assert_eq!(placement.place(0).0, 0);
        let (first, _kept) = placement.place(1);
        assert_eq!(first, 1, "an idle acceptor keeps its connection");
    }

    #[test]
    fn workers_are_pinned_by_default_only_when_there_is_one_per_cpu() {
        assert!(one_per_cpu(2, 2));
        assert!(one_per_cpu(8, 8));
        assert!(!one_per_cpu(1, 1), "a single worker");
        assert!(!one_per_cpu(2, 4), "CPUs left over");
        assert!(!one_per_cpu(4, 2), "more workers than CPUs");
    }

    #[test]
    fn spawn_on_each_starts_nothing_when_a_task_cannot_be_made() {
        let workers = Workers::start(3, None, false).unwrap();
        let held = Arc::new(());
        let mut made = 0;
        let result = workers.spawn_on_each(|_| {
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
