//! The one wasmtime `Engine` of the process, its `Linker`, and the epoch ticker.
//!
//! Created on first use, that is only when a config has a plugin: with no plugin configured
//! no engine, no ticker thread and no Wasm code exist. The engine uses the pooling instance
//! allocator (instantiation takes a pre-reserved slot instead of mapping memory), epoch
//! interruption (a ticker thread advances the epoch every 0.5 ms; each call gets a deadline
//! in ticks), and no component-model concurrency (it costs ~280 ns a call and is not used).

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::cli::WasiCliView as _;

use crate::plugin::bindings::AllRoles;
use crate::plugin::store::StoreData;

/// The epoch tick: the resolution of plugin timeouts. Half a millisecond, so that a call is
/// stopped within `timeout + 1 ms` even when the ticker wakes a little late; ~2000 wake-ups a
/// second of a thread that exists only while plugins are configured.
pub const TICK: Duration = Duration::from_micros(500);
/// Instance slots in the pooling allocator, for all plugins and versions together. Each
/// slot reserves address space (not memory) for one linear memory.
pub const INSTANCE_SLOTS: u32 = 1000;
/// Upper bound of any plugin's linear memory (the `memory` key is capped to it).
pub const MAX_MEMORY: usize = crate::config::MAX_PLUGIN_MEMORY;

/// The process-wide engine and linker.
pub struct Host {
    pub engine: Engine,
    pub linker: Linker<StoreData>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

static HOST: OnceLock<Result<Host, String>> = OnceLock::new();

/// The engine, created (with its ticker) on first call.
pub fn host() -> Result<&'static Host, String> {
    HOST.get_or_init(|| {
        let host = build().map_err(|e| format!("cannot start the wasm engine: {e}"))?;
        let engine = host.engine.clone();
        std::thread::Builder::new()
            .name("wasp-epoch".into())
            .spawn(move || tick(&engine))
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(host)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Advances the epoch once per [`TICK`]. Sleeps aim at absolute instants, so wake-up
/// latency does not accumulate into drift; a late wake-up (the thread was not scheduled) is
/// not caught up with a burst of ticks, so a call is never interrupted before its timeout.
fn tick(engine: &Engine) -> ! {
    let mut next = std::time::Instant::now() + TICK;
    loop {
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        engine.increment_epoch();
        next += TICK;
        let now = std::time::Instant::now();
        if next < now {
            next = now + TICK;
        }
    }
}

fn build() -> wasmtime::Result<Host> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(INSTANCE_SLOTS)
        .total_core_instances(INSTANCE_SLOTS * 8)
        .max_core_instances_per_component(16)
        .total_memories(INSTANCE_SLOTS * 2)
        .total_tables(INSTANCE_SLOTS * 8)
        .total_stacks(INSTANCE_SLOTS)
        .max_memory_size(MAX_MEMORY);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .concurrency_support(false)
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;
    let mut linker = Linker::new(&engine);
    AllRoles::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |s| s)?;
    add_minimal_wasi(&mut linker)?;
    Ok(Host { engine, linker })
}

/// What a std Rust guest built for wasm32-wasip2 imports even when it never uses it: streams
/// (stdout/stderr go to the log), an empty environment and arguments, no stdin, exit. No
/// filesystem, sockets, clocks or random: a guest importing those fails to link, with an
/// error naming the import.
fn add_minimal_wasi(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::WasiCli;
    use wasmtime_wasi::p2::bindings::{cli, io};
    io::error::add_to_linker::<StoreData, HasIo>(linker, |s| &mut s.table)?;
    io::poll::add_to_linker::<StoreData, HasIo>(linker, |s| &mut s.table)?;
    io::streams::add_to_linker::<StoreData, HasIo>(linker, |s| &mut s.table)?;
    cli::exit::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::environment::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::stdin::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::stdout::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::stderr::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::terminal_input::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::terminal_output::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::terminal_stdin::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::terminal_stdout::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    cli::terminal_stderr::add_to_linker::<StoreData, WasiCli>(linker, |s| s.cli())?;
    Ok(())
}

/// `wasi:io` is implemented on the resource table itself.
struct HasIo;

impl wasmtime::component::HasData for HasIo {
    type Data<'a> = &'a mut wasmtime::component::ResourceTable;
}
