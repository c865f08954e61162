//! `wasp demo`: the reference lab in one process. Echo servers node1..node4 listen on
//! 127.0.0.1:9001..9004 and the proxy serves lab 2's routing (`examples/lab2-uri.toml`, the
//! very file) on 127.0.0.1:8080, with the stats page and runtime API on 127.0.0.1:8404.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::echo::serve_echo;
use crate::runtime::{Runtime, RuntimeError};

/// The lab 2 config the demo serves.
pub const LAB2: &str = include_str!("../examples/lab2-uri.toml");
/// The echo servers of the lab.
pub const NODES: [(&str, u16); 4] = [
    ("node1", 9001),
    ("node2", 9002),
    ("node3", 9003),
    ("node4", 9004),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {addr} for {name} (is another demo running?): {source}")]
    Echo {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded lab config is invalid:\n{0}")]
    Config(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the demo until Ctrl-C.
pub async fn run() -> Result<(), DemoError> {
    let stop = CancellationToken::new();
    for (name, port) in NODES {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DemoError::Echo { name, addr, source })?;
        tokio::spawn(serve_echo(name.into(), listener, stop.clone()));
    }
    let (config, report) = config::load_str(LAB2, Path::new("examples/lab2-uri.toml"));
    let config = config.ok_or_else(|| DemoError::Config(report.render()))?;
    let grace = config.global.grace;
    let runtime = Runtime::start(config).await?;
    let stats = runtime
        .admin_addr()
        .await
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8404)));
    let proxy = runtime
        .frontend_addrs("myfrontend")
        .await
        .first()
        .copied()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    println!(
        "\nwasp demo: lab 2 is up.\n\
         \x20 echo servers  node1..node4 on 127.0.0.1:9001..9004\n\
         \x20 proxy         http://{proxy}  (config: examples/lab2-uri.toml)\n\
         \x20 stats page    http://{stats}/  (also /metrics, /stats.json; docs/admin.md)\n\n\
         Try:\n\
         \x20 curl http://{proxy}/item/1        # backend items: node1, node2, node1, ...\n\
         \x20 curl http://{proxy}/basket/1      # backend baskets: node3, node4, ...\n\
         \x20 curl http://{proxy}/              # default backend webservers: node1, node2, node3, ...\n\
         \x20 curl -H 'Accept: application/json' http://{proxy}/item/1\n\
         \x20 curl --http2-prior-knowledge http://{proxy}/basket/1\n\
         \x20 wasp ctl --admin {stats} servers            # or: cargo run -- ctl servers\n\
         \x20 wasp ctl --admin {stats} set server items/s1 state drain\n\n\
         Ctrl-C stops it.\n"
    );
    let _ = tokio::signal::ctrl_c().await;
    // A second Ctrl-C stops at once.
    let second = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    runtime.shutdown_unless(grace, second).await;
    stop.cancel();
    Ok(())
}
