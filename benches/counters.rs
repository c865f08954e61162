//! Counting cost on the request path: what counting adds per request (the request counted on
//! its frontend and backend as it is routed, the response on those and its server when it
//! ends; the server's request is counted with its in-flight count), and
//! what two workers pay when they count into their own shards vs into one shared one.
//!
//! Run: `cargo bench --bench counters` (`-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasp::counters::{Traffic, set_shard};

/// One request's counting, as `serve` and `Record::finish` do it.
fn count_one(frontend: &Traffic, backend: &Traffic, server: &Traffic, i: u64) {
    let t = Some(Duration::from_micros(200 + (i & 1023)));
    frontend.count_request();
    backend.count_request();
    frontend.count_response(200, 0, 120, t);
    backend.count_response(200, 0, 120, t);
    server.count_response(200, 0, 120, t);
}

/// Nanoseconds per request when `threads` threads count `per_thread` requests each on the
/// same three objects, every thread in its own shard (`sharded`) or all in shard 0.
fn contended(threads: usize, per_thread: u64, sharded: bool) -> f64 {
    let (f, b, s) = (Traffic::new(), Traffic::new(), Traffic::new());
    let barrier = Barrier::new(threads);
    let start = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|id| {
                let (f, b, s, barrier) = (&f, &b, &s, &barrier);
                scope.spawn(move || {
                    set_shard(if sharded { id } else { 0 });
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..per_thread {
                        count_one(f, b, s, i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    });
    assert_eq!(f.totals().requests, threads as u64 * per_thread);
    start.as_nanos() as f64 / per_thread as f64
}

fn bench(c: &mut Criterion) {
    let (f, b, s) = (Traffic::new(), Traffic::new(), Traffic::new());
    let i = AtomicU64::new(0);
    c.bench_function("count one request (frontend + backend + server)", |bench| {
        bench.iter(|| {
            count_one(
                black_box(&f),
                black_box(&b),
                black_box(&s),
                i.fetch_add(1, Ordering::Relaxed),
            )
        })
    });
    c.bench_function("sum for a scrape (one object, 8 shards)", |bench| {
        bench.iter(|| black_box(&f).totals())
    });
    // Not a criterion measurement: two threads at once, printed for the docs.
    for sharded in [true, false] {
        let mut runs: Vec<f64> = (0..5).map(|_| contended(2, 2_000_000, sharded)).collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "2 threads counting on the same objects, {}: {:.1} ns per request (median of 5)",
            if sharded {
                "each in its own shard"
            } else {
                "one shared shard"
            },
            runs[2]
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
