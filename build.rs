//! Release builds of the `wasp` binary place its hottest functions next to each other: the
//! list in `benches/hot-functions.txt` (made by `benches/hot-functions.sh`) goes to the linker
//! as `--symbol-ordering-file`. Otherwise the request path's few hundred functions lie scattered
//! through ~22 MB of code; together they take far fewer pages and cache lines
//! (docs/benchmarks.md). Only the layout changes, never the code.
//!
//! Only where the linker is known to take the option: the x86_64 Linux target, whose default
//! linker is LLD, with no other linker chosen through the environment. Names the binary does
//! not have are skipped (`--no-warn-symbol-ordering`), so a list made for other dependencies
//! leaves the plain layout. `WASP_HOT_FUNCTIONS=0` turns it off.

use std::env;
use std::path::Path;

const LIST: &str = "benches/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-env-changed=WASP_HOT_FUNCTIONS");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let lld_target = var("TARGET") == "x86_64-unknown-linux-gnu";
    // A linker of the user's choosing may not know the option.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = flags.contains("linker")
        || flags.contains("fuse-ld")
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some();
    let off = var("WASP_HOT_FUNCTIONS") == "0";
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join(LIST);
    if release && lld_target && !other_linker && !off && list.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=wasp=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=wasp=-Wl,--no-warn-symbol-ordering");
    }
}
