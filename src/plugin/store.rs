//! What a plugin instance's `Store` holds and what its host functions do: the `host`
//! interface (log, time, config, shared state), the memory limiter, and the minimal WASI
//! context whose stdout/stderr go to the log.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::plugin::bindings::host::Host;
use crate::plugin::bindings::types::{self, LogLevel};
use crate::plugin::shared::SharedState;

/// Plugin log lines allowed per second (the `log` import and stdout/stderr together).
pub const LOG_LINES_PER_SECOND: u32 = 50;
/// Longest log line kept from a plugin; longer ones are cut.
const MAX_LOG_LINE: usize = 1024;
/// Most table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What every store of one plugin version shares.
#[derive(Debug)]
pub struct PluginContext {
    pub name: Arc<str>,
    /// `config`, sorted by key.
    pub config: Vec<(String, String)>,
    pub shared: Arc<SharedState>,
    pub log: Arc<LogLimit>,
    /// Cap on an instance's linear memory, in bytes.
    pub memory: usize,
}

/// The data of one instance's `Store`.
pub struct StoreData {
    pub ctx: Arc<PluginContext>,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    /// Linear memory the instance has grown to, in bytes.
    pub memory_used: usize,
    /// Set when the limiter refused a growth (the guest then usually traps).
    pub memory_refused: bool,
}

impl StoreData {
    pub fn new(ctx: Arc<PluginContext>) -> StoreData {
        let stdout = LogStream {
            ctx: Arc::clone(&ctx),
            stream: "stdout",
        };
        let stderr = LogStream {
            ctx: Arc::clone(&ctx),
            stream: "stderr",
        };
        let wasi = WasiCtx::builder().stdout(stdout).stderr(stderr).build();
        StoreData {
            ctx,
            wasi,
            table: ResourceTable::new(),
            memory_used: 0,
            memory_refused: false,
        }
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for StoreData {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.ctx.memory {
            self.memory_refused = true;
            return Ok(false);
        }
        self.memory_used = self.memory_used.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl types::Host for StoreData {}

impl Host for StoreData {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        };
        plugin_log(&self.ctx, level, "log", &message);
    }

    fn now_ns(&mut self) -> u64 {
        monotonic_ns()
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.ctx
            .config
            .binary_search_by(|(k, _)| k.as_str().cmp(&key))
            .ok()
            .map(|i| self.ctx.config[i].1.clone())
    }

    fn config_all(&mut self) -> Vec<(String, String)> {
        self.ctx.config.clone()
    }

    fn counter_add(&mut self, name: String, delta: i64) -> i64 {
        self.ctx.shared.counter_add(&name, delta)
    }

    fn counter_get(&mut self, name: String) -> i64 {
        self.ctx.shared.counter_get(&name)
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.ctx.shared.kv_get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> bool {
        self.ctx.shared.kv_set(&key, value)
    }

    fn kv_cas(&mut self, key: String, expected: Option<Vec<u8>>, new: Vec<u8>) -> bool {
        self.ctx.shared.kv_cas(&key, expected.as_deref(), new)
    }
}

/// Nanoseconds on a process-wide monotonic clock.
pub fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A per-plugin log budget: [`LOG_LINES_PER_SECOND`], then lines are counted and dropped;
/// the count is reported with the next line let through, and kept in a running total for the
/// stats (a plugin may never log again).
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    window: Mutex<Window>,
    dropped_total: AtomicU64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    dropped: u64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            window: Mutex::new(Window {
                start: Instant::now(),
                lines: 0,
                dropped: 0,
            }),
            dropped_total: AtomicU64::new(0),
        }
    }

    /// Lines dropped since the plugin was loaded.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// `Some(dropped since the last line let through)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.start.elapsed() >= Duration::from_secs(1) {
            w.start = Instant::now();
            w.lines = 0;
        }
        if w.lines >= self.per_second {
            w.dropped += 1;
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        w.lines += 1;
        Some(std::mem::take(&mut w.dropped))
    }
}

/// Logs one line from a plugin, tagged with its name, within its budget.
pub fn plugin_log(ctx: &PluginContext, level: tracing::Level, stream: &str, line: &str) {
    let Some(dropped) = ctx.log.allow() else {
        return;
    };
    let mut end = line.len().min(MAX_LOG_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let line = printable(&line[..end]);
    let plugin = &*ctx.name;
    macro_rules! emit {
        ($level:expr) => {
            if dropped > 0 {
                tracing::event!(target: "wasp::plugin::guest", $level, plugin, stream, dropped, "{line}");
            } else {
                tracing::event!(target: "wasp::plugin::guest", $level, plugin, stream, "{line}");
            }
        };
    }
    match level {
        tracing::Level::TRACE => emit!(tracing::Level::TRACE),
        tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
        tracing::Level::INFO => emit!(tracing::Level::INFO),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        _ => emit!(tracing::Level::ERROR),
    }
}

/// A plugin's text as it may go into a log line or an operator's terminal: control characters
/// (a newline that would start a forged log line, an escape sequence) written as escapes.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A plugin's stdout or stderr: each line becomes a log event (stderr at warn).
struct LogStream {
    ctx: Arc<PluginContext>,
    stream: &'static str,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }
}

impl LogStream {
    fn writer(&self) -> LineWriter {
        LineWriter {
            ctx: Arc::clone(&self.ctx),
            stream: self.stream,
            pending: Vec::new(),
        }
    }
}

/// Splits written bytes into lines; never blocks, never fails.
struct LineWriter {
    ctx: Arc<PluginContext>,
    stream: &'static str,
    pending: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.emit(&line[..i]);
        }
        if self.pending.len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let level = if self.stream == "stderr" {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        plugin_log(
            &self.ctx,
            level,
            self.stream,
            &String::from_utf8_lossy(line),
        );
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{LogLimit, PluginContext, plugin_log};
    use crate::test_log::Logs;

    #[test]
    fn a_plugins_log_line_cannot_forge_another_or_write_escapes() {
        let (logs, _guard) = Logs::capture();
        let ctx = PluginContext {
            name: Arc::from("evil"),
            config: Vec::new(),
            shared: Arc::default(),
            log: Arc::new(LogLimit::new(10)),
            memory: 1 << 20,
        };
        plugin_log(
            &ctx,
            tracing::Level::WARN,
            "log",
            "one\nERROR wasp: forged\x1b[2J\r",
        );
        let text = logs.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert!(
            text.contains(r"one\nERROR wasp: forged\u{1b}[2J\r"),
            "{text}"
        );
    }

    #[test]
    fn log_limit_counts_what_it_drops() {
        let limit = LogLimit::new(2);
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.dropped_total(), 2);
    }
}
