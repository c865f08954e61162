//! Wasm plugins: the wasmtime host.
pub mod bindings;
pub mod engine;
pub mod instance;
pub mod shared;
pub mod store;

#[cfg(test)]
pub(crate) mod test_plugins;

#[cfg(test)]
mod smoke {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::OnError;
    use crate::plugin::bindings::types::Request;
    use crate::plugin::instance::{Compiled, Loaded, Settings, poll_once};
    use crate::plugin::store::{LogLimit, PluginContext};

    #[test]
    fn path_router_routes() {
        let bytes = std::fs::read(super::test_plugins::wasm("path-router")).unwrap();
        let compiled = Arc::new(Compiled::new(&bytes).unwrap());
        let ctx = Arc::new(PluginContext {
            name: Arc::from("pr"),
            config: vec![("routes".into(), "/item=items".into())],
            shared: Arc::default(),
            log: Arc::new(LogLimit::new(10)),
            memory: 32 << 20,
        });
        let loaded = Loaded::new(
            compiled,
            ctx,
            Settings {
                timeout: Duration::from_millis(5),
                on_error: OnError::Fallback,
                recycle_after: 1000,
                recycle_memory: 8 << 20,
            },
            1,
        );
        let req = Request {
            method: "GET".into(),
            scheme: "http".into(),
            host: "h".into(),
            path: "/item/1".into(),
            query: String::new(),
            headers: vec![],
            client_ip: "127.0.0.1".into(),
            client_port: 1,
            frontend: "f".into(),
            sni: None,
        };
        for _ in 0..3 {
            let d = loaded
                .call(|w| {
                    let g = w.router.as_ref().unwrap();
                    poll_once(g.call_route(&mut w.store, &req))
                })
                .unwrap();
            println!("{d:?}");
        }
        let n = 20000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            loaded
                .call(|w| {
                    let g = w.router.as_ref().unwrap();
                    poll_once(g.call_route(&mut w.store, &req))
                })
                .unwrap();
        }
        println!("{:?}/call, created {}", t.elapsed() / n, loaded.instances_created());
    }
}
