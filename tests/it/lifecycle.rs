//! The real binary: SIGHUP reloads (routing changes, in-flight requests finish, bad configs are
//! refused, listeners open and close) and SIGTERM drains. The configs run four workers, so
//! that every listener has several accept loops (one per worker) to open and close.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    Binary, H2Frame, HeldPort, Proxy, Servers, assert_closed, config_file, field, get, h2_start,
    server_name, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

fn config(
    default_backend: &str,
    one: SocketAddr,
    two: SocketAddr,
    gated: SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
        [global]
        grace = "10s"
        workers = 4

        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "{default_backend}"
        acl = {{ held = "path_beg /held" }}
        use_backend = [ {{ backend = "gated", if = "held" }} ]

        [backend.one]
        servers = [ {{ name = "one", addr = "{one}" }} ]
        [backend.two]
        servers = [ {{ name = "two", addr = "{two}" }} ]
        [backend.gated]
        servers = [ {{ name = "gated", addr = "{gated}" }} ]
        {extra}
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_routing_while_an_in_flight_request_completes() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let two = servers.echo("two").await;
    let (gated, mut arrived, gate) = servers.gated("gated").await;
    let (_dir, path) = config_file(&config("one", one, two, gated, ""));
    let wasp = Binary::run(&path);
    let url = |p: &str| format!("http://{}{}", wasp.addr, p);
    assert_eq!(server_name(&get(&url("/")).await.2), "one");

    let held_url = url("/held");
    let held = tokio::spawn(async move { get(&held_url).await });
    arrived
        .recv()
        .await
        .expect("held request reached its server");

    std::fs::write(&path, config("two", one, two, gated, "")).unwrap();
    wasp.signal("HUP");
    wasp.wait_for("configuration loaded", WAIT);
    assert_eq!(
        server_name(&get(&url("/")).await.2),
        "two",
        "new routing is live"
    );

    gate.open(1);
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body, "gated\nreleased\n",
        "the in-flight request finished on the old snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_on_sighup_keeps_the_old_one_serving() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let two = servers.echo("two").await;
    let (_dir, path) = config_file(&config("one", one, two, one, ""));
    let wasp = Binary::run(&path);
    std::fs::write(&path, config("nowhere", one, two, one, "")).unwrap();
    wasp.signal("HUP");
    let mut lines = wasp.lines_until("reload rejected", WAIT);
    let (status, _, body) = get(&format!("http://{}/", wasp.addr)).await;
    assert_eq!((status.as_u16(), server_name(&body)), (200, "one"));

    // The good file again: everything logged for the rejected reload comes before this one.
    std::fs::write(&path, config("one", one, two, one, "")).unwrap();
    wasp.signal("HUP");
    lines.extend(wasp.lines_until("configuration loaded", WAIT));
    let diags: Vec<_> = lines.iter().filter(|l| l.contains("nowhere")).collect();
    assert_eq!(diags.len(), 1, "the diagnostic is logged once: {lines:#?}");
    assert!(
        diags[0].contains("wasp.toml:"),
        "diagnostics name the file and line: {}",
        diags[0]
    );
}

/// wasp running [`config`] with every backend on one echo server, "one": the servers, the
/// config file's folder (both to keep bound for the test) and path, and the binary.
async fn running_one() -> (Servers, tempfile::TempDir, std::path::PathBuf, Binary) {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (dir, path) = config_file(&config("one", one, one, one, ""));
    let wasp = Binary::run(&path);
    (servers, dir, path, wasp)
}

/// A file read while it is being rewritten (`cp` truncates first) is empty: reloading to it
/// would close every listener. It is refused, as HAProxy will not start without a listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_config_that_listens_nowhere_is_refused() {
    let (_servers, _dir, path, wasp) = running_one().await;
    let half =
        "# half written\n[backend.app]\nservers = [{ name = \"s\", addr = \"127.0.0.1:9\" }]\n";
    for text in ["", half] {
        std::fs::write(&path, text).unwrap();
        wasp.signal("HUP");
        let lines = wasp.lines_until("reload rejected", WAIT);
        assert!(
            lines.iter().any(|l| l.contains("listens nowhere")),
            "{text:?}: {lines:#?}"
        );
        let (status, _, body) = get(&format!("http://{}/", wasp.addr)).await;
        assert_eq!(
            (status.as_u16(), server_name(&body)),
            (200, "one"),
            "{text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_which_start_only_settings_it_left_as_they_were() {
    let (_servers, _dir, path, wasp) = running_one().await;
    let read_at_start = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("read at start"))
            .cloned()
            .collect::<Vec<_>>()
    };
    wasp.signal("HUP");
    let lines = wasp.lines_until("configuration loaded", WAIT);
    assert_eq!(
        read_at_start(&lines),
        Vec::<String>::new(),
        "nothing changed"
    );
    let fewer = std::fs::read_to_string(&path)
        .unwrap()
        .replace("workers = 4", "workers = 2");
    std::fs::write(&path, fewer).unwrap();
    wasp.signal("HUP");
    let warned = read_at_start(&wasp.lines_until("configuration loaded", WAIT));
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(
        warned[0].contains("global.workers changed"),
        "{}",
        warned[0]
    );
}

/// A start-only key written out at the value in effect, or removed where its default is what
/// runs, changed nothing: no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_only_key_removed_at_its_running_value_is_no_change() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    let explicit =
        config("one", one, one, one, "").replace("workers = 4", &format!("workers = {cpus}"));
    let (_dir, path) = config_file(&explicit);
    let wasp = Binary::run(&path);
    std::fs::write(&path, explicit.replace(&format!("workers = {cpus}"), "")).unwrap();
    wasp.signal("HUP");
    let lines = wasp.lines_until("configuration loaded", WAIT);
    let warned: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("read at start"))
        .collect();
    assert!(warned.is_empty(), "{warned:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_opens_and_closes_listeners() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let two = servers.echo("two").await;
    let (_dir, path) = config_file(&config("one", one, two, one, ""));
    let wasp = Binary::run(&path);
    let second = r#"
        [frontend.second]
        bind = "127.0.0.1:0"
        default_backend = "two"
    "#;
    std::fs::write(&path, config("one", one, two, one, second)).unwrap();
    wasp.signal("HUP");
    let line = wasp.wait_for("frontend=\"second\"", WAIT);
    let added: SocketAddr = field(&line, "listener").parse().unwrap();
    assert_eq!(
        server_name(&get(&format!("http://{added}/")).await.2),
        "two"
    );

    std::fs::write(&path, config("one", one, two, one, "")).unwrap();
    wasp.signal("HUP");
    wasp.wait_for(&format!("listener={added}"), WAIT);
    wasp.wait_for("configuration loaded", WAIT);
    assert_closed(added, "removed listener").await;
    assert_eq!(
        server_name(&get(&format!("http://{}/", wasp.addr)).await.2),
        "one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_response_finish_then_exits_0() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (gated, mut arrived, gate) = servers.gated("gated").await;
    let (_dir, path) = config_file(&config("one", one, one, gated, ""));
    let wasp = Binary::run(&path);
    let addr = wasp.addr;

    let held = tokio::spawn(async move { get(&format!("http://{addr}/held")).await });
    arrived
        .recv()
        .await
        .expect("held request reached its server");
    wasp.signal("TERM");
    wasp.wait_for("stopping", WAIT);
    wasp.wait_for("listener closed", WAIT);
    assert_closed(addr, "no new connections while draining").await;

    gate.open(1);
    let (status, _, body) = held.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "gated\nreleased\n"));
    exits_0(wasp).await;
}

/// wasp in front of an echo server with a grace period far longer than the test waits and
/// these client `timeouts` (a TOML inline table's contents): only a stop that does not wait
/// for the grace ends in time. The temporary folder holds the config.
async fn long_stop(servers: &Servers, timeouts: &str) -> (Binary, tempfile::TempDir) {
    let one = servers.echo("one").await;
    let (dir, path) = config_file(&one_backend(
        r#"grace = "300s""#,
        &format!("timeout = {{ {timeouts} }}"),
        one,
    ));
    (Binary::run(&path), dir)
}

/// A keep-alive connection holding part of its next request head when the stop begins is not
/// idle: the request is served (with `Connection: close`), where hyper alone would close the
/// connection and lose it. An idle connection beside it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_serves_a_request_whose_head_is_arriving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let servers = Servers::new();
    let (wasp, _dir) = long_stop(
        &servers,
        r#"http_request = "300s", http_keep_alive = "300s""#,
    )
    .await;
    let connect = || tokio::net::TcpStream::connect(wasp.addr);
    let mut arriving = connect().await.unwrap();
    assert_eq!(ask(&mut arriving).await, "HTTP/1.1 200 OK");
    let mut idle = connect().await.unwrap();
    assert_eq!(ask(&mut idle).await, "HTTP/1.1 200 OK");
    arriving
        .write_all(b"GET /second HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // The first half has been read once the proxy answers a request sent after it on
    // another connection (each connection's bytes are read as they come).
    let mut third = connect().await.unwrap();
    assert_eq!(ask(&mut third).await, "HTTP/1.1 200 OK");

    wasp.signal("TERM");
    // The stop has reached every connection once the idle one is closed.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    arriving.write_all(b"st: a\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, arriving.read_to_end(&mut answer))
        .await
        .expect("answered, then closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200 ok"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("/second"), "{answer}");
    drop(third);
    exits_0(wasp).await;
}

/// The graceful stop sends an idle HTTP/2 client a GOAWAY and closes its connection, even when
/// the client never answers the shutdown's PING: such a client does not hold the stop for the
/// whole grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_an_idle_h2_client_that_does_not_answer() {
    use tokio::io::AsyncWriteExt;
    let servers = Servers::new();
    let (wasp, _dir) = long_stop(&servers, r#"http_keep_alive = "300s""#).await;
    let mut tcp = tokio::net::TcpStream::connect(wasp.addr).await.unwrap();
    tcp.write_all(&h2_start()).await.unwrap();
    let settings = H2Frame::read(&mut tcp)
        .await
        .expect("the server's SETTINGS");
    assert_eq!(settings.kind, H2Frame::SETTINGS);

    wasp.signal("TERM");
    let mut goaway = None;
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(frame) = H2Frame::read(&mut tcp).await {
            if frame.kind == H2Frame::GOAWAY {
                goaway = Some(frame.goaway());
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "closed long before the grace period");
    assert_eq!(goaway.map(|g| g.1), Some(0), "a GOAWAY with NO_ERROR");
    exits_0(wasp).await;
}

/// A request still waiting for its server when the grace period ends is logged (status -1, as
/// HAProxy logs a request that got no response), not lost from the log with its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_the_end_of_the_grace_period_is_logged() {
    let servers = Servers::new();
    let (wasp, _held) = held_request(&servers, r#"grace = "200ms""#, "/cut").await;
    wasp.signal("TERM");
    let line = wasp.wait_for("/cut", WAIT);
    assert_eq!(field(&line, "status"), "-1", "{line}");
    assert_eq!(field(&line, "complete"), "false", "{line}");
    assert!(
        line.contains("t_connect="),
        "the server was reached: {line}"
    );
    exits_0(wasp).await;
}

/// A second SIGTERM during the grace period stops at once (HAProxy's hard stop after a soft
/// one): the request still in flight is cut and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let servers = Servers::new();
    let (wasp, _held) = held_request(&servers, r#"grace = "300s""#, "/held").await;
    wasp.signal("TERM");
    wasp.wait_for("waiting for in-flight requests", WAIT);
    // A reload during the stop is refused, and says so.
    wasp.signal("HUP");
    wasp.wait_for("SIGHUP ignored: wasp is stopping", WAIT);
    wasp.signal("TERM");
    wasp.wait_for("second stop signal", WAIT);
    let line = wasp.wait_for("/held", WAIT);
    assert_eq!(field(&line, "status"), "-1", "{line}");
    exits_0(wasp).await;
}

/// A request to `path` that its server holds: the client waits until the value is dropped.
struct Held {
    client: tokio::task::JoinHandle<(http::StatusCode, http::HeaderMap, String)>,
    _gate: crate::support::Gate,
    _dir: tempfile::TempDir,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.client.abort();
    }
}

/// wasp with `global` in front of a server that holds every request, and one request to
/// `path` that has reached that server.
async fn held_request(servers: &Servers, global: &str, path: &str) -> (Binary, Held) {
    let (gated, mut arrived, gate) = servers.gated("gated").await;
    let (dir, config) = config_file(&one_backend(global, "", gated));
    let wasp = Binary::run(&config);
    let url = format!("http://{}{path}", wasp.addr);
    let client = tokio::spawn(async move { get(&url).await });
    arrived
        .recv()
        .await
        .expect("the request reached its server");
    let held = Held {
        client,
        _gate: gate,
        _dir: dir,
    };
    (wasp, held)
}

/// Waits for the process to exit, and checks it exited 0.
async fn exits_0(mut wasp: Binary) {
    let code = tokio::task::spawn_blocking(move || wasp.wait_exit(WAIT))
        .await
        .unwrap();
    assert_eq!(code, 0);
}

/// Two loopback ports nothing listens on (bound together, so distinct, then closed), on an
/// address no other test binds (the rest of the suite binds 127.0.0.1), so that no listener
/// of a test running meanwhile can take them before this test's proxy binds them.
fn two_free_ports() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moving_a_bind_closes_the_old_port_and_can_bind_it_again() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (first, second) = two_free_ports();
    let config = |bind: SocketAddr| {
        format!(
            r#"
            [global]
            workers = 4

            [frontend.web]
            bind = "{bind}"
            default_backend = "one"

            [backend.one]
            servers = [ {{ name = "one", addr = "{one}" }} ]
            "#
        )
    };
    let proxy = Proxy::start(&config(first)).await;
    assert_eq!(proxy.addr(), first);

    // To the second port and back: the way back binds the first port again, which works only
    // if every worker let go of it.
    for (open, closed) in [(second, first), (first, second)] {
        std::fs::write(&proxy.path, config(open)).unwrap();
        proxy.runtime.reload().await.expect("reload");
        assert_closed(closed, "the port the bind left").await;
        // Fresh connections, more than there are workers, all served.
        for _ in 0..8 {
            let (status, _, body) = get(&format!("http://{open}/")).await;
            assert_eq!((status.as_u16(), server_name(&body)), (200, "one"));
        }
    }
}

/// The value after `key:` on the line of a `/proc` file that starts with `key`.
fn proc_field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split(':').nth(1)?.trim())
}

/// `proc_field(file, key)` for each of process `pid`'s worker threads.
fn worker_fields(pid: u32, file: &str, key: &str) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("wasp-worker") {
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            fields.push(proc_field(&text, key).map(str::to_owned));
        }
    }
    fields
}

/// The real binary with `global` in its `[global]` section and one backend (an echo server
/// named "one"), checked to answer through it. Keep the tuple: it holds the servers and the
/// config's folder.
async fn run_one_backend(global: &str) -> (Binary, Servers, tempfile::TempDir) {
    run_one_backend_with_env(global, &[]).await
}

/// [`run_one_backend`] with these environment variables set for the binary.
async fn run_one_backend_with_env(
    global: &str,
    vars: &[(&str, &str)],
) -> (Binary, Servers, tempfile::TempDir) {
    run_one_backend_with(global, |path| Binary::run_with_env(path, vars)).await
}

/// [`run_one_backend`], the binary started on the config's path by `start`.
async fn run_one_backend_with(
    global: &str,
    start: impl FnOnce(&std::path::Path) -> Binary,
) -> (Binary, Servers, tempfile::TempDir) {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (dir, path) = config_file(&one_backend(global, "", one));
    let wasp = start(&path);
    assert_eq!(
        server_name(&get(&format!("http://{}/", wasp.addr)).await.2),
        "one"
    );
    (wasp, servers, dir)
}

/// A config with `global` in its `[global]` section, `frontend` added to its one frontend, and
/// one backend: the echo server `one`.
fn one_backend(global: &str, frontend: &str, one: SocketAddr) -> String {
    format!(
        r#"
        [global]
        {global}

        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "one"
        {frontend}

        [backend.one]
        servers = [ {{ name = "one", addr = "{one}" }} ]
        "#
    )
}

/// The time slice of each of process `pid`'s worker threads, as the scheduler reports it
/// (`None` for a kernel before Linux 6.12, which has no custom slices to report).
fn worker_slices(pid: u32) -> Vec<Option<u64>> {
    worker_fields(pid, "sched", "se.slice")
        .into_iter()
        .map(|v| v.and_then(|v| v.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_runs_with_the_configured_sched_slice() {
    let (wasp, _servers, _dir) = run_one_backend("workers = 3\nsched_slice = \"300us\"").await;
    let pid = wasp.child.id();
    assert_eq!(worker_slices(pid).len(), 3);
    // Each worker asks for its slice as its thread starts.
    wait_until(WAIT, "every worker's slice is 300us", || {
        worker_slices(pid)
            .iter()
            .all(|s| s.is_none_or(|ns| ns == 300_000))
    })
    .await;
}

/// The CPUs each of process `pid`'s worker threads may run on, as `/proc` lists them.
fn worker_cpus(pid: u32) -> Vec<String> {
    let mut cpus: Vec<String> = worker_fields(pid, "status", "Cpus_allowed_list")
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    cpus.sort();
    cpus
}

/// The CPUs this process may run on (its affinity mask, which wasp inherits), as `/proc`
/// lists them.
fn own_cpu_list() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    proc_field(&status, "Cpus_allowed_list").unwrap().to_owned()
}

/// How many CPUs this process may run on.
fn allowed_cpus() -> usize {
    own_cpu_list()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// Whether each of process `pid`'s `workers` worker threads runs on one CPU of its own (while
/// there are CPUs enough: the `i`-th worker takes the `i`-th CPU, counting round).
fn each_worker_on_its_own_cpu(pid: u32, workers: usize) -> bool {
    let pinned = worker_cpus(pid);
    let single = pinned.iter().all(|c| c.parse::<usize>().is_ok());
    let mut distinct = pinned.clone();
    distinct.dedup();
    pinned.len() == workers && single && distinct.len() == allowed_cpus().min(workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_affinity_auto_pins_each_worker_to_its_own_cpu() {
    let (wasp, _servers, _dir) = run_one_backend("workers = 2\ncpu_affinity = \"auto\"").await;
    // The workers pin themselves before wasp starts listening.
    assert!(
        each_worker_on_its_own_cpu(wasp.child.id(), 2),
        "{:?}",
        worker_cpus(wasp.child.id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_pinned_by_default_when_there_is_one_per_cpu() {
    let cpus = allowed_cpus();
    let own = own_cpu_list();
    // One worker per CPU: pinned, unless the config says "none".
    let (wasp, _servers, _dir) = run_one_backend(&format!("workers = {cpus}")).await;
    let pid = wasp.child.id();
    if cpus > 1 {
        assert!(
            each_worker_on_its_own_cpu(pid, cpus),
            "{:?}",
            worker_cpus(pid)
        );
    } else {
        assert_eq!(
            worker_cpus(pid),
            vec![own.clone()],
            "a single worker is not pinned"
        );
    }
    let (wasp, _servers, _dir) =
        run_one_backend(&format!("workers = {cpus}\ncpu_affinity = \"none\"")).await;
    assert_eq!(worker_cpus(wasp.child.id()), vec![own.clone(); cpus]);
    // More workers than CPUs: left to the scheduler.
    let (wasp, _servers, _dir) = run_one_backend(&format!("workers = {}", cpus + 1)).await;
    assert_eq!(worker_cpus(wasp.child.id()), vec![own; cpus + 1]);
}

/// `THP_enabled` of process `pid` (Linux 5.0 and later report it): 0 once the process has
/// turned transparent huge pages off for itself.
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    proc_field(&status, "THP_enabled").map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_runs_without_transparent_huge_pages_unless_told_otherwise() {
    // The test process keeps them (whatever the host's setting), so a 0 is wasp's doing.
    assert_eq!(
        thp_enabled(std::process::id()).as_deref(),
        Some("1"),
        "the test process has THP_enabled 0 (or no such field): it cannot tell wasp's doing"
    );
    // With them, each thread's allocator segment cost 2 MiB or more of RSS (see `main`).
    let (wasp, _servers, _dir) = run_one_backend("workers = 2").await;
    assert_eq!(thp_enabled(wasp.child.id()).as_deref(), Some("0"));
    // mimalloc's own variable decides when it is set.
    let (wasp, _servers, _dir) =
        run_one_backend_with_env("workers = 2", &[("MIMALLOC_ALLOW_THP", "1")]).await;
    assert_eq!(thp_enabled(wasp.child.id()).as_deref(), Some("1"));
    let (wasp, _servers, _dir) =
        run_one_backend_with_env("workers = 2", &[("MIMALLOC_ALLOW_THP", "0")]).await;
    assert_eq!(thp_enabled(wasp.child.id()).as_deref(), Some("0"));
}

/// The soft and hard limits on open files of process `pid`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_raises_its_open_file_limit_to_the_hard_limit() {
    let (_, hard) = open_file_limits(std::process::id());
    let hard_n: u64 = hard.parse().unwrap_or(u64::MAX);
    assert!(
        hard_n > 256,
        "the hard limit here ({hard}) leaves nothing to raise a soft limit of 256 to"
    );
    // More than even the raised limit carries: said at start. The helper also checks that it
    // answers.
    let (wasp, _servers, _dir) = run_one_backend_with("maxconn = 1073741824", |path| {
        Binary::run_with_soft_open_files(path, 256)
    })
    .await;
    // An unlimited hard limit is not one Linux takes for a soft limit: wasp uses fs.nr_open's
    // default then.
    let soft = if hard == "unlimited" {
        "1048576".to_owned()
    } else {
        hard.clone()
    };
    assert_eq!(
        open_file_limits(wasp.child.id()),
        (soft, hard),
        "the soft limit of 256 it was started with is raised to the hard one"
    );
    let log = wasp.start_log.join("\n");
    assert!(
        log.contains("open-file limit raised") && log.contains("was=256"),
        "{log}"
    );
    assert!(
        log.contains("maxconn is more than the open-file limit can serve"),
        "{log}"
    );
}

/// Sends one keep-alive request on `tcp` and reads its answer's first line.
async fn ask(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut reader = tokio::io::BufReader::new(tcp);
    let mut status = String::new();
    let read = reader.read_line(&mut status).await.unwrap();
    assert!(read > 0, "the proxy closed the connection");
    let mut length = 0;
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).await.unwrap();
        assert!(read > 0, "the proxy closed the connection mid-head");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    status.trim_end().to_owned()
}

/// One worker (one accept loop, so that the limit is exact), `maxconn`, one echo server.
/// Idle connections are kept far longer than the tests wait: only the tests close them.
fn limited(one: SocketAddr, maxconn: usize) -> String {
    one_backend(
        &format!("workers = 1\nmaxconn = {maxconn}"),
        r#"timeout = { client = "300s", http_request = "300s", http_keep_alive = "300s" }"#,
        one,
    )
}

/// Whether `waiting` (a request on a connection made at the limit) is still unanswered a
/// moment later: a window for something not to happen, not a wait for something that will.
async fn still_waiting<T>(waiting: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    !waiting.is_finished()
}

/// `n` keep-alive clients of `addr`, each answered once (so each was accepted).
async fn clients(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut open = Vec::new();
    for _ in 0..n {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut tcp).await, "HTTP/1.1 200 OK");
        open.push(tcp);
    }
    open
}

/// A client of `addr` that connects (the kernel queues it) and asks; asserts that it is not
/// answered while the proxy is at its limit (`what` says which).
async fn queued(addr: SocketAddr, what: &str) -> tokio::task::JoinHandle<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::spawn(async move { ask(&mut tcp).await });
    assert!(still_waiting(&waiting).await, "served at the limit: {what}");
    waiting
}

/// Asserts that `waiting` is answered now that there is room (`why` says why there is).
async fn answered(waiting: tokio::task::JoinHandle<String>, why: &str) {
    let answer = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap_or_else(|_| panic!("not served once {why}"))
        .unwrap();
    assert_eq!(answer, "HTTP/1.1 200 OK");
}

/// The `open` connections (two or more) are still served while `waiting` waits; once the first
/// of them closes, `waiting` is answered.
async fn in_once_one_closes(
    mut open: Vec<tokio::net::TcpStream>,
    waiting: tokio::task::JoinHandle<String>,
) {
    assert_eq!(
        ask(&mut open[1]).await,
        "HTTP/1.1 200 OK",
        "the open ones are served"
    );
    drop(open.remove(0));
    answered(waiting, "one closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_maxconn_new_clients_wait_until_a_connection_closes() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let proxy = Proxy::start(&limited(one, 2)).await;
    let open = clients(proxy.addr(), 2).await;
    let third = queued(proxy.addr(), "a third connection at maxconn = 2").await;
    in_once_one_closes(open, third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_maxconn_lets_waiting_clients_in() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let proxy = Proxy::start(&limited(one, 1)).await;
    let mut open = clients(proxy.addr(), 1).await;
    let second = queued(proxy.addr(), "a second connection at maxconn = 1").await;
    std::fs::write(&proxy.path, limited(one, 2)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    answered(second, "the limit is 2, with the first still open").await;
    assert_eq!(ask(&mut open[0]).await, "HTTP/1.1 200 OK");
}

/// Two frontends on one worker (one accept loop per listener) before the same echo server:
/// `web`, with `maxconn = {web}` of its own when given, and `other` without one. Idle
/// connections are kept far longer than the tests wait.
fn two_frontends(one: SocketAddr, web: Option<u32>) -> String {
    let limit = web.map(|n| format!("maxconn = {n}")).unwrap_or_default();
    format!(
        r#"
        [global]
        workers = 1
        [defaults]
        timeout = {{ client = "300s", http_request = "300s", http_keep_alive = "300s" }}

        [frontend.web]
        bind = "127.0.0.1:0"
        default_backend = "one"
        {limit}

        [frontend.other]
        bind = "127.0.0.1:0"
        default_backend = "one"

        [backend.one]
        servers = [ {{ name = "one", addr = "{one}" }} ]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_at_its_maxconn_holds_its_new_clients_and_not_another_frontends() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let proxy = Proxy::start(&two_frontends(one, Some(2))).await;
    let (web, other) = (proxy.addrs[0], proxy.addrs[1]);
    let open = clients(web, 2).await;
    let third = queued(web, "a third connection at the frontend's maxconn = 2").await;
    // The other frontend has no limit of its own: served at once, more than two of them.
    let _others = clients(other, 3).await;
    assert!(!third.is_finished(), "served at the frontend's maxconn = 2");
    in_once_one_closes(open, third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_lifts_a_frontends_maxconn_lets_its_waiting_clients_in() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let proxy = Proxy::start(&two_frontends(one, Some(1))).await;
    let web = proxy.addrs[0];
    let mut open = clients(web, 1).await;
    let second = queued(web, "a second connection at the frontend's maxconn = 1").await;
    std::fs::write(&proxy.path, two_frontends(one, None)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    answered(second, "the frontend has no limit, with the first open").await;
    assert_eq!(ask(&mut open[0]).await, "HTTP/1.1 200 OK");
}

/// One worker, the listener `addr` served by frontend `name`, with `maxconn = {limit}` when
/// given.
fn one_frontend_at(addr: SocketAddr, name: &str, limit: Option<u32>, one: SocketAddr) -> String {
    let limit = limit.map(|n| format!("maxconn = {n}")).unwrap_or_default();
    format!(
        r#"
        [global]
        workers = 1
        [defaults]
        timeout = {{ client = "300s", http_request = "300s", http_keep_alive = "300s" }}

        [frontend.{name}]
        bind = "{addr}"
        default_backend = "one"
        {limit}

        [backend.one]
        servers = [ {{ name = "one", addr = "{one}" }} ]
        "#
    )
}

/// A proxy whose one frontend, `name` with `maxconn = {limit}`, listens on a fixed address,
/// so that the listener stays open across reloads that rename the frontend (held until the
/// proxy listens on it, so that no other test takes it).
async fn at_fixed_address(name: &str, limit: u32, one: SocketAddr) -> (Proxy, SocketAddr) {
    let held = HeldPort::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = held.addr();
    let proxy = Proxy::start(&one_frontend_at(addr, name, Some(limit), one)).await;
    drop(held);
    (proxy, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_gives_a_full_listener_to_another_frontend_lets_its_clients_in() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (proxy, addr) = at_fixed_address("web", 1, one).await;
    let _open = clients(addr, 1).await;
    let second = queued(addr, "a second connection at the frontend's maxconn = 1").await;
    // The new frontend has no connection open and no limit: the accept loop waiting under the
    // old one's limit must see it.
    std::fs::write(&proxy.path, one_frontend_at(addr, "site", None, one)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    answered(second, "the listener has a new frontend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renames_a_frontend_counts_its_next_clients_on_the_new_one() {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (proxy, addr) = at_fixed_address("alpha", 5, one).await;
    // The accept loop waits for a client with the listener's old frontend in view.
    std::fs::write(&proxy.path, one_frontend_at(addr, "beta", Some(2), one)).unwrap();
    proxy.runtime.reload().await.expect("reload");
    let mut open = clients(addr, 2).await;
    let snapshot = proxy.runtime.proxy().snapshot();
    let beta = &snapshot.frontends[0];
    assert_eq!(&*beta.name, "beta");
    assert_eq!(
        beta.state.sessions.current(),
        2,
        "both counted on the new frontend"
    );
    let third = queued(addr, "a third connection at the new frontend's maxconn = 2").await;
    drop(open.remove(0));
    answered(third, "one closed").await;
}

/// HAProxy holds a frontend's `maxconn` exactly, across its binds and threads: a place is
/// taken as a client is accepted, not before. (A loop waiting in accept with the room it saw
/// before took one client past the limit on each idle listener.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontends_maxconn_is_exact_across_its_binds_and_workers() {
    exact_across_binds_and_workers("", "maxconn = 4").await;
}

/// The same for `[global] maxconn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_maxconn_is_exact_across_binds_and_workers() {
    exact_across_binds_and_workers("maxconn = 4", "").await;
}

/// Two workers, a frontend with three binds and a limit of 4 (`global` or `frontend` says
/// where): four clients are served, one more on each bind waits, and one gets in when one of
/// the four closes.
async fn exact_across_binds_and_workers(global: &str, frontend: &str) {
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let proxy = Proxy::start(&format!(
        r#"
        [global]
        workers = 2
        {global}
        [defaults]
        timeout = {{ client = "300s", http_request = "300s", http_keep_alive = "300s" }}
        [frontend.web]
        bind = ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"]
        default_backend = "one"
        {frontend}
        [backend.one]
        servers = [ {{ name = "one", addr = "{one}" }} ]
        "#
    ))
    .await;
    let binds = proxy.runtime.frontend_addrs("web").await;
    assert_eq!(binds.len(), 3);
    let mut open = Vec::new();
    for n in 0..4 {
        open.extend(clients(binds[n % 3], 1).await);
    }
    // One more on each bind: none is taken while four are open. (Each keeps its connection
    // open once answered.)
    let mut waiting = Vec::new();
    for bind in &binds {
        let mut tcp = tokio::net::TcpStream::connect(bind).await.unwrap();
        waiting.push(tokio::spawn(async move { (ask(&mut tcp).await, tcp) }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = waiting.iter().filter(|w| w.is_finished()).count();
    assert_eq!(
        served, 0,
        "clients served past maxconn = 4 over 3 binds and 2 workers"
    );
    drop(open.pop());
    wait_until(WAIT, "a waiting client served once one closed", || {
        waiting.iter().any(tokio::task::JoinHandle::is_finished)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answers = Vec::new();
    for w in waiting {
        if w.is_finished() {
            answers.push(w.await.unwrap().0);
        }
    }
    assert_eq!(
        answers,
        ["HTTP/1.1 200 OK"],
        "one place freed, one client in"
    );
}

/// Reads HTTP/2 frames from `tcp` until a PING acknowledging `payload` (the server has then
/// handled every frame sent before that PING).
async fn read_until_ping_ack(tcp: &mut tokio::net::TcpStream, payload: &[u8; 8]) {
    loop {
        let frame = H2Frame::read(tcp).await.expect("the connection stays open");
        if frame.kind == H2Frame::PING && frame.flags & 1 == 1 && frame.payload == payload {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_http2_client_cannot_flood_the_log() {
    use tokio::io::AsyncWriteExt;
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let (_dir, path) = config_file(&one_backend("", "", one));
    let wasp = Binary::run_with_default_log(&path);

    // Acknowledgements of PINGs the proxy never sent: the HTTP/2 library logs each one at
    // `warn`, 150 bytes of log for 17 sent, unless wasp's default filter keeps them out.
    let mut tcp = tokio::net::TcpStream::connect(wasp.addr).await.unwrap();
    let mut flood = h2_start();
    for _ in 0..200 {
        flood.extend(H2Frame::encode(H2Frame::PING, 1, 0, &[0; 8]));
    }
    flood.extend(H2Frame::encode(H2Frame::PING, 0, 0, b"lastping"));
    tcp.write_all(&flood).await.unwrap();
    tokio::time::timeout(WAIT, read_until_ping_ack(&mut tcp, b"lastping"))
        .await
        .expect("the proxy acknowledges a real PING after the flood");

    // Whatever the flood logged comes before this request's access-log line.
    let url = format!("http://{}/after-the-flood", wasp.addr);
    assert_eq!(server_name(&get(&url).await.2), "one");
    let lines = wasp.lines_until("/after-the-flood", WAIT);
    let flooded: Vec<_> = lines.iter().filter(|l| l.contains("PING")).collect();
    assert!(flooded.is_empty(), "{flooded:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_bind_closes_its_keep_alive_connections() {
    use tokio::io::AsyncReadExt;
    let servers = Servers::new();
    let one = servers.echo("one").await;
    let two = servers.echo("two").await;
    // Idle connections are kept far longer than the test waits: only the fix closes them.
    let long_idle = r#"
        [defaults]
        timeout = { client = "300s", http_keep_alive = "300s" }
    "#;
    let second = format!(
        r#"
        [frontend.second]
        bind = "127.0.0.1:0"
        default_backend = "two"
        {long_idle}
        "#
    );
    let (_dir, path) = config_file(&config("one", one, two, one, &second));
    let wasp = Binary::run(&path);
    let line = wasp.wait_for("frontend=\"second\"", WAIT);
    let removed: SocketAddr = field(&line, "listener").parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(removed).await.unwrap();
    assert!(ask(&mut tcp).await.ends_with("200 OK"));
    // An HTTP/2 connection, idle after one request.
    let h2 = tokio::net::TcpStream::connect(removed).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{removed}/"))
        .body(crate::support::empty())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);

    std::fs::write(&path, config("one", one, two, one, long_idle)).unwrap();
    wasp.signal("HUP");
    wasp.wait_for("configuration loaded", WAIT);
    // The connections have no frontend left: they are closed, as HAProxy's old process closes
    // its idle connections, rather than kept to answer 503 to every later request. The HTTP/1
    // one is closed as it is idle; the HTTP/2 one gets a GOAWAY, and its client closes it.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the HTTP/1 connection is closed, long before its idle timeout")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "");
    tokio::time::timeout(WAIT, h2_conn)
        .await
        .expect("the HTTP/2 connection ends, long before its idle timeout")
        .unwrap()
        .expect("it ends with a GOAWAY, not an error");
}

/// Runs `wasp run -c path`, which must refuse to start (exit 1); its stderr. Bounded: a wasp
/// that started anyway would run until killed.
async fn refused_start(path: &std::path::Path) -> String {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasp"))
        .args(["run", "-c"])
        .arg(path)
        .env("RUST_LOG", "off")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("wasp refuses to start, at once")
        .expect("run wasp");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_bind_address_in_use_stops_start_up_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, path) = config_file(&format!(
        r#"
        [frontend.web]
        bind = "{addr}"
        default_backend = "one"
        [backend.one]
        servers = [ {{ name = "one", addr = "127.0.0.1:1" }} ]
        "#
    ));
    let stderr = refused_start(&path).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.starts_with(&format!("wasp: error: cannot listen on {addr}: ")),
        "{line}"
    );
    // The cause once, not once for the message and once again for its source.
    assert_eq!(line.matches("in use").count(), 1, "{line}");
}

#[tokio::test]
async fn a_config_that_listens_nowhere_does_not_start() {
    let (_dir, path) = config_file("# nothing yet\n");
    let stderr = refused_start(&path).await;
    assert!(
        stderr.contains("listens nowhere (no frontend and no [admin])"),
        "{stderr}"
    );
}

/// A request the client broke off, or malformed past answering, gets its access-log line
/// (status -1: nothing was sent), as HAProxy logs `<BADREQ>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_broken_off_or_malformed_past_answering_are_logged() {
    use tokio::io::AsyncWriteExt;
    let (_servers, _dir, _path, wasp) = running_one().await;

    let mut tcp = tokio::net::TcpStream::connect(wasp.addr).await.unwrap();
    tcp.write_all(b"GET /partial HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    drop(tcp);
    let line = wasp.wait_for("client closed during the request head", WAIT);
    assert!(line.contains("status=-1"), "{line}");

    // A header block that cannot be decoded (HPACK index 0): the connection ends with a GOAWAY.
    let mut tcp = tokio::net::TcpStream::connect(wasp.addr).await.unwrap();
    let mut start = h2_start();
    start.extend(H2Frame::encode(H2Frame::HEADERS, 0x5, 1, &[0x80]));
    tcp.write_all(&start).await.unwrap();
    let line = wasp.wait_for("HTTP/2 protocol error", WAIT);
    assert!(line.contains("status=-1"), "{line}");
}
