//! A thread's scheduling: the time slice it asks Linux's scheduler for and the CPU it is
//! pinned to (`[global] sched_slice`, `cpu_affinity`). System calls that neither the standard
//! library nor our dependencies wrap: this module holds wasp's only unsafe code, each block
//! with its SAFETY note.

use std::io;
use std::time::Duration;

/// Asks Linux's scheduler (EEVDF, 6.12 and later) to run the calling thread in time slices of
/// `slice` instead of its default (about 1.4 ms on a 2-core machine). Under a full load, a
/// worker that has work waiting is often runnable but not running; a shorter slice brings it
/// back to a core sooner, at the price of more context switches (docs/benchmarks.md). The
/// thread keeps its policy and nice value. Kernels before 6.12 accept the call and ignore the
/// slice.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn request_slice(slice: Duration) -> io::Result<()> {
    /// `struct sched_attr` (include/uapi/linux/sched/types.h), the 56-byte version.
    #[repr(C)]
    #[derive(Default)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let size = std::mem::size_of::<SchedAttr>() as u32;
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a valid, writable `sched_attr` of `size` bytes, which the kernel fills
    // in for the calling thread (pid 0); flags must be 0.
    let got = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.policy != SCHED_OTHER && attr.policy != SCHED_BATCH {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the thread is not scheduled as SCHED_OTHER or SCHED_BATCH",
        ));
    }
    attr.size = size;
    attr.flags = 0;
    attr.runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid `sched_attr` of `attr.size` bytes, read by the kernel for the
    // calling thread (pid 0); flags must be 0.
    let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on (its affinity mask, which threads it starts inherit),
/// in ascending order.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set (it is a plain bit array).
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `allowed` is a writable `cpu_set_t` of `size` bytes, filled in by the kernel for
    // the calling thread (pid 0).
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, so within the set's bits.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .collect())
}

/// Pins the calling thread to the `n`-th CPU (counting round) of those the process may run
/// on, as nginx's `worker_cpu_affinity auto` does: each worker then keeps its core, and two
/// busy workers never queue for the same one while another core is free.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn pin_to_cpu(n: usize) -> io::Result<()> {
    let cpus = allowed_cpus()?;
    let Some(&cpu) = cpus.get(n % cpus.len().max(1)) else {
        return Err(io::Error::other("the process may run on no CPU"));
    };
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set (it is a plain bit array).
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from `allowed_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: `one` is a valid `cpu_set_t` of its own size, read by the kernel for the calling
    // thread (pid 0).
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "reading the CPUs a thread may use is implemented for Linux only",
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpu(_n: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "pinning threads to CPUs is implemented for Linux only",
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn request_slice(_slice: Duration) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "scheduler time slices are a Linux feature",
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// This thread's time slice as the scheduler reports it (`None` before Linux 6.12).
    #[cfg(target_os = "linux")]
    fn own_slice_ns() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    #[cfg(target_os = "linux")]
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name (which ends with ')'): nice is the 19th field.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_gets_the_slice_it_asks_for_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            let nice = own_nice();
            super::request_slice(Duration::from_micros(250)).unwrap();
            // Kernels before 6.12 accept the call but have no slice to report.
            if let Some(ns) = own_slice_ns() {
                assert_eq!(ns, 250_000);
            }
            assert_eq!(own_nice(), nice);
            super::request_slice(Duration::from_millis(3)).unwrap();
            if let Some(ns) = own_slice_ns() {
                assert_eq!(ns, 3_000_000);
            }
        })
        .join()
        .unwrap();
    }

    /// The CPUs the calling thread may run on, as `/proc` lists them (e.g. `0-1`, `3`).
    #[cfg(target_os = "linux")]
    fn own_cpus() -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .unwrap();
        line.split(':').nth(1).unwrap().trim().to_owned()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_runs_on_one_cpu_of_those_allowed() {
        std::thread::spawn(|| {
            let allowed = std::thread::available_parallelism().unwrap().get();
            super::pin_to_cpu(0).unwrap();
            let first = own_cpus();
            assert!(first.parse::<usize>().is_ok(), "one CPU: {first}");
            // Pinned, the thread may use that one CPU only, so counting round from there
            // lands on it again.
            super::pin_to_cpu(allowed).unwrap();
            assert_eq!(own_cpus(), first);
        })
        .join()
        .unwrap();
    }
}
