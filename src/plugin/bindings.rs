//! The host side of `wit/plugin.wit`: the crate's only `bindgen!` call.
//!
//! Generated for the `all-roles` world, which imports `host` and exports every role; the host
//! then looks for each role's export separately (`GuestIndices::new`), so a component needs
//! to export only the roles it is used for. Exports are async so that the minimal WASI
//! context (whose stream functions are async in wasmtime-wasi) can be linked; no call ever
//! waits (see `instance::poll_once`).

wasmtime::component::bindgen!({
    world: "all-roles",
    path: "wit",
    exports: { default: async },
    // Requests, server lists and check results are lent to the guest from the host's own
    // buffers: no copy into owned Strings before the (unavoidable) copy into guest memory.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::exports::wasp::plugin::{balancer, health, router};
pub use self::wasp::plugin::host;
pub use self::wasp::plugin::types;
