//! Test support: builds the plugins workspace (`plugins/`) for wasm32-wasip2 once per test
//! run and hands out the paths of its `.wasm` files.
//!
//! Used by the library's unit tests and, through `#[path]`, by the integration tests. The
//! build runs at most once per process (`OnceLock`) and is serialized across processes by a
//! lock file, so test binaries running side by side do not build twice at once. When the
//! wasm32-wasip2 target is missing it is added with rustup; if that fails, the panic message
//! gives the command to run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The path of plugin `name`'s component (`name` as its crate name, with underscores),
/// building the plugins workspace first if this process has not yet.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(dir) => dir.join(format!("{}.wasm", name.replace('-', "_"))),
        Err(e) => panic!("{e}"),
    }
}

/// The plugins workspace.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

fn build() -> Result<PathBuf, String> {
    let root = workspace();
    let target_dir = root.join("target");
    std::fs::create_dir_all(&target_dir)
        .map_err(|e| format!("cannot create {}: {e}", target_dir.display()))?;
    let lock_path = target_dir.join(".wasp-test-build.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    ensure_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo to build the test plugins: {e}"))?;
    drop(lock);
    if !output.status.success() {
        return Err(format!(
            "building the test plugins failed (cd plugins && cargo build --release --target {TARGET}):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target_dir.join(TARGET).join("release"))
}

/// Adds the wasm32-wasip2 target with rustup when it is not installed.
fn ensure_target() -> Result<(), String> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot
        && sysroot.join("lib/rustlib").join(TARGET).is_dir()
    {
        return Ok(());
    }
    let how = format!("rustup target add {TARGET}");
    match Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "the {TARGET} target is missing and `{how}` failed ({s}); run `{how}` and try again"
        )),
        Err(e) => Err(format!(
            "the {TARGET} target is missing and rustup could not be run ({e}); run `{how}` and try again"
        )),
    }
}
