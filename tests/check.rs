//! `wasp check` end to end: the real binary on fixture configs, compared line for line with
//! the diagnostics a user sees (file:line:col, key path, message, help, summary) and the exit
//! code. One fixture per diagnostic in `tests/fixtures/check/`, plus the example labs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wasp::config::{self, Balance, Mode};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check")
}

/// Runs `wasp check -c FILE` in `dir`; returns the exit code and stderr.
fn run_check(dir: &Path, file: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wasp"))
        .current_dir(dir)
        .args(["check", "-c", file])
        .output()
        .expect("run wasp");
    assert!(out.stdout.is_empty(), "check writes to stderr only");
    let code = out.status.code().expect("exit code");
    (code, String::from_utf8(out.stderr).expect("utf-8 output"))
}

/// Checks `tests/fixtures/check/NAME.toml` and compares the whole report (the fixtures'
/// folder written `FIXTURES` in it).
fn expect(name: &str, code: i32, lines: &[&str]) {
    let (actual_code, stderr) = run_check(&fixtures(), &format!("{name}.toml"));
    let stderr = stderr.replace(&*fixtures().to_string_lossy(), "FIXTURES");
    let expected = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    assert_eq!(stderr, expected, "report for {name}.toml");
    assert_eq!(actual_code, code, "exit code for {name}.toml");
}

#[test]
fn scheduling_settings_out_of_range_or_unknown_are_errors() {
    expect(
        "sched_slice",
        1,
        &[
            r#"sched_slice.toml:3:15: error: global.sched_slice: sched_slice is out of range"#,
            r#"    = help: the kernel takes 100us to 100ms"#,
            r#"sched_slice.toml:4:16: error: global.cpu_affinity: unknown cpu affinity "autp""#,
            r#"    = help: did you mean "auto"?"#,
            r#"check: 2 errors"#,
        ],
    );
}

#[test]
fn maxconn_below_one_is_an_error() {
    expect(
        "maxconn",
        1,
        &[
            r#"maxconn.toml:3:11: error: global.maxconn: maxconn 0 is out of range"#,
            r#"    = help: expected 1..=1073741824"#,
            r#"check: 1 error"#,
        ],
    );
}

#[test]
fn frontend_maxconn_below_one_is_an_error() {
    expect(
        "frontend_maxconn",
        1,
        &[
            r#"frontend_maxconn.toml:5:11: error: frontend.web.maxconn: maxconn 0 is out of range"#,
            r#"    = help: expected 1..=4294967295"#,
            r#"check: 1 error"#,
        ],
    );
}

/// A frontend's limit above the global one never takes effect: said, not refused.
#[test]
fn frontend_maxconn_above_the_global_one_is_a_warning() {
    expect(
        "frontend_maxconn_above_global",
        0,
        &[
            r#"frontend_maxconn_above_global.toml:8:11: warning: frontend.web.maxconn: maxconn 500 is above [global] maxconn 100: the global limit comes first"#,
            r#"    = help: lower it, or raise [global] maxconn"#,
            r#"check: 1 warning"#,
        ],
    );
}

#[test]
fn example_labs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for lab in [
        "examples/lab1-basic.toml",
        "examples/lab2-uri.toml",
        "examples/tcp-sni.toml",
    ] {
        assert_eq!(run_check(root, lab), (0, "check: ok\n".to_owned()), "{lab}");
    }
}

#[test]
fn tcp_example_loads_into_the_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tcp-sni.toml");
    let (config, report) = config::load(&path);
    let config = config.unwrap_or_else(|| panic!("{}", report.render()));
    let tls_in = &config.frontends[0];
    assert_eq!(tls_in.mode, Mode::Tcp);
    assert_eq!(tls_in.inspect_delay, Duration::from_secs(5));
    assert_eq!(tls_in.timeouts.client, Duration::from_secs(3600));
    let shop = config.backend("shop").unwrap();
    assert_eq!(shop.mode, Mode::Tcp);
    assert_eq!(shop.servers[0].send_proxy, Some(config::SendProxy::V2));
    assert_eq!(
        shop.timeouts.tunnel, None,
        "unset: client and server apply to TCP sessions"
    );
    assert_eq!(shop.timeouts.websocket(), Duration::from_secs(3600));
    assert_eq!(config.backend("db").unwrap().balance, Balance::Source);
}

#[test]
fn lab2_loads_into_the_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab2-uri.toml");
    let (config, report) = config::load(&path);
    assert_eq!(report.diagnostics, []);
    let config = config.expect("config");
    assert_eq!(
        config.admin.as_ref().and_then(|a| a.bind),
        Some("127.0.0.1:8404".parse().unwrap())
    );
    let [fe] = &config.frontends[..] else {
        panic!("one frontend")
    };
    let binds: Vec<_> = fe.binds.iter().map(|b| (b.addr, b.tls.is_some())).collect();
    assert_eq!(binds, [("127.0.0.1:8080".parse().unwrap(), false)]);
    assert_eq!(fe.mode, Mode::Http);
    assert_eq!(fe.default_backend.as_deref(), Some("webservers"));
    let acls: Vec<&str> = fe.acls.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(acls, ["is_item", "is_basket"]);
    let rules: Vec<(&str, bool)> = fe
        .rules
        .iter()
        .map(|r| (r.backend.as_str(), r.negate))
        .collect();
    assert_eq!(rules, [("items", false), ("baskets", false)]);
    assert_eq!(fe.timeouts.client, Duration::from_secs(10));
    assert_eq!(
        fe.timeouts.http_keep_alive,
        Duration::from_secs(10),
        "follows http_request"
    );
    assert!(fe.forwardfor);
    let names: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["webservers", "items", "baskets"], "file order");
    let baskets = config.backend("baskets").expect("baskets");
    assert_eq!(baskets.balance, Balance::RoundRobin);
    assert_eq!(baskets.retries, 3);
    assert_eq!(baskets.timeouts.connect, Duration::from_secs(5));
    let servers: Vec<(&str, String, u32, bool)> = baskets
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.addr.to_string(), s.weight, s.check))
        .collect();
    assert_eq!(
        servers,
        [
            ("s3", "127.0.0.1:9003".to_owned(), 1, true),
            ("s4", "127.0.0.1:9004".to_owned(), 1, true)
        ]
    );
}

#[test]
fn unreadable_file() {
    let (code, stderr) = run_check(&fixtures(), "does-not-exist.toml");
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "does-not-exist.toml:1:1: error: cannot read config file: no such file or directory \
         (os error 2)\ncheck: 1 error\n"
    );
}

/// Bytes that are not UTF-8 are reported where they are, and the rest of the file is still
/// checked (written at test time: a fixture with such bytes would trouble editors and diffs).
#[test]
fn bytes_that_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("latin1.toml"),
        b"[global]\nworkers = 2\n# caf\xe9 comment\ngrace = \"1sec\"\n",
    )
    .unwrap();
    let (code, stderr) = run_check(dir.path(), "latin1.toml");
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "latin1.toml:3:6: error: not UTF-8 text: byte 0xE9 here\n    \
         = help: a config file is UTF-8 text; re-save it as UTF-8\n\
         latin1.toml:4:9: error: global.grace: unknown unit \"sec\" in duration \"1sec\"\n    \
         = help: units are us, ms, s, m, h and d\n\
         check: 2 errors\n"
    );
}

/// Unknown keys at every level, with a suggestion or the list of valid keys.
#[test]
fn unknown_key() {
    expect(
        "unknown_key",
        1,
        &[
            r#"unknown_key.toml:3:1: error: global: unknown key "wrokers""#,
            r#"    = help: did you mean "workers"?"#,
            r#"unknown_key.toml:8:13: error: frontend.web.timeout: unknown key "clinet""#,
            r#"    = help: did you mean "client"?"#,
            r#"unknown_key.toml:11:1: error: backend.app: unknown key "balanse""#,
            r#"    = help: did you mean "balance"?"#,
            r#"unknown_key.toml:12:52: error: backend.app.servers[0]: unknown key "wieght""#,
            r#"    = help: did you mean "weight"?"#,
            r#"unknown_key.toml:13:1: error: backend.app: unknown key "colour""#,
            r#"    = help: valid keys are "mode", "balance", "proto", "tls", "ca", "sni", "verify", "servers", "timeout", "retries", "redispatch", "maxconn", "observe", "error_limit", "check""#,
            r#"unknown_key.toml:15:2: error: unknown key "bakend""#,
            r#"    = help: did you mean "backend"?"#,
            r#"check: 6 errors"#,
        ],
    );
}

/// Values of the wrong TOML type.
#[test]
fn wrong_type() {
    expect(
        "wrong_type",
        1,
        &[
            r#"wrong_type.toml:3:11: error: global.workers: expected an integer, found a string"#,
            r#"    = help: write 2 without quotes"#,
            r#"wrong_type.toml:4:14: error: global.access_log: expected a boolean, found a string"#,
            r#"    = help: write true without quotes"#,
            r#"wrong_type.toml:7:8: error: frontend.web.bind: expected a string, a table or an array, found an integer"#,
            r#"    = help: write bind = ":80", bind = [":80", ":81"] or bind = [{ addr = ":443", tls = { cert = "site.pem", key = "site.key" } }]"#,
            r#"wrong_type.toml:9:14: error: frontend.web.forwardfor: expected a boolean, found an integer"#,
            r#"wrong_type.toml:12:11: error: backend.app.servers: expected an array, found a table"#,
            r#"wrong_type.toml:13:11: error: backend.app.retries: expected an integer, found a float"#,
            // No knock-on "backend other is not used": the reference could not be read.
            r#"wrong_type.toml:17:19: error: frontend.api.default_backend: expected a string, found an array"#,
            r#"check: 7 errors"#,
        ],
    );
}

/// Durations without a unit, with an unknown unit, malformed, zero, or too long.
#[test]
fn bad_duration() {
    expect(
        "bad_duration",
        1,
        &[
            r#"bad_duration.toml:3:9: error: global.grace: missing unit in duration "10""#,
            r#"    = help: add a unit, e.g. "10s" or "10ms""#,
            r#"bad_duration.toml:6:22: error: defaults.timeout.client: invalid duration "10 s""#,
            r#"    = help: write a number and a unit, e.g. "10s", "250ms" or "1m30s""#,
            r#"bad_duration.toml:6:39: error: defaults.timeout.server: expected a duration string, found an integer"#,
            r#"    = help: durations need a unit, e.g. "30s""#,
            r#"bad_duration.toml:6:53: error: defaults.timeout.connect: unknown unit "sec" in duration "5sec""#,
            r#"    = help: units are us, ms, s, m, h and d"#,
            r#"bad_duration.toml:11:28: error: frontend.web.timeout.http_request: duration must be greater than zero"#,
            r#"bad_duration.toml:11:43: error: frontend.web.timeout.client: duration "25d" is too large"#,
            r#"    = help: the maximum is "2147483647ms" (about 24.8 days), as in HAProxy"#,
            r#"bad_duration.toml:15:22: error: backend.app.check.interval: unknown unit "x" in duration "2x""#,
            r#"    = help: units are us, ms, s, m, h and d"#,
            r#"check: 7 errors"#,
        ],
    );
}

/// Listener and server addresses that do not parse.
#[test]
fn bad_address() {
    expect(
        "bad_address",
        1,
        &[
            r#"bad_address.toml:3:8: error: admin.bind: missing port in "localhost""#,
            r#"    = help: write it as host:port, e.g. "127.0.0.1:8080""#,
            r#"bad_address.toml:6:9: error: frontend.web.bind[0]: invalid port "99999" in "127.0.0.1:99999""#,
            r#"    = help: a port is a number up to 65535"#,
            r#"bad_address.toml:6:28: error: frontend.web.bind[1]: bind address "example.com:80" is not an IP address"#,
            r#"    = help: bind takes an IP address: "127.0.0.1:PORT" for loopback, ":PORT" for all interfaces"#,
            r#"bad_address.toml:6:46: error: frontend.web.bind[2]: IPv6 address in "::1:8080" needs brackets"#,
            r#"    = help: write "[ADDRESS]:PORT", e.g. "[::1]:8080""#,
            r#"bad_address.toml:6:58: error: frontend.web.bind[3]: bind address "[::ffff:127.0.0.1]:80" is the IPv4 address 127.0.0.1 in IPv6 form"#,
            r#"    = help: an IPv6 socket cannot listen on it; write "127.0.0.1:PORT""#,
            r#"bad_address.toml:11:25: error: backend.app.servers[0].addr: missing port in "127.0.0.1""#,
            r#"    = help: write it as host:port, e.g. "127.0.0.1:8080""#,
            r#"bad_address.toml:12:25: error: backend.app.servers[1].addr: port 0 is not a valid server port"#,
            r#"    = help: write the port the server listens on"#,
            r#"check: 7 errors"#,
        ],
    );
}

/// `accept_proxy` lists that are empty or hold something other than an address or a CIDR.
#[test]
fn accept_proxy() {
    expect(
        "accept_proxy",
        1,
        &[
            r#"accept_proxy.toml:4:45: error: frontend.web.bind[0].accept_proxy: accept_proxy needs at least one address"#,
            r#"    = help: list the peers that send the PROXY protocol, e.g. accept_proxy = ["10.0.0.0/8"]"#,
            r#"accept_proxy.toml:5:61: error: frontend.web.bind[1].accept_proxy[1]: invalid address or cidr "lb.internal""#,
            r#"    = help: e.g. 10.0.0.1, 10.0.0.0/8, 10.0.0.0/255.0.0.0, ::1 or 2001:db8::/32"#,
            r#"accept_proxy.toml:5:80: error: frontend.web.bind[1].accept_proxy[2]: prefix length 129 is out of range 0..=128"#,
            r#"check: 3 errors"#,
        ],
    );
}

/// A server host name that does not resolve.
#[test]
fn unresolvable_host() {
    expect(
        "unresolvable_host",
        1,
        &[
            r#"unresolvable_host.toml:9:25: error: backend.app.servers[1].addr: cannot resolve host "nosuchhost.invalid""#,
            r#"    = help: check the name (and /etc/hosts or DNS), or write an IP address"#,
            r#"check: 1 error"#,
        ],
    );
}

/// Default_backend and use_backend naming a backend that does not exist.
#[test]
fn undefined_backend() {
    expect(
        "undefined_backend",
        1,
        &[
            r#"undefined_backend.toml:4:19: error: frontend.web.default_backend: unknown backend "webservrs""#,
            r#"    = help: did you mean "webservers"?"#,
            r#"undefined_backend.toml:8:15: error: frontend.web.use_backend[1].backend: unknown backend "nowhere""#,
            r#"    = help: defined backends: "webservers""#,
            r#"check: 2 errors"#,
        ],
    );
}

/// A condition naming an undefined acl, pointing at that name.
#[test]
fn undefined_acl() {
    expect(
        "undefined_acl",
        1,
        &[
            r#"undefined_acl.toml:7:39: error: frontend.web.use_backend[0].if: unknown acl "is_baskt""#,
            r#"    = help: did you mean "is_basket"?"#,
            r#"undefined_acl.toml:8:41: error: frontend.web.use_backend[1].unless: unknown acl "missing""#,
            r#"    = help: acls in this frontend: "is_item", "is_basket""#,
            r#"undefined_acl.toml:10:30: error: frontend.web.use_backend[2].if: unknown fetch "pth""#,
            r#"    = help: did you mean "path"?"#,
            r#"undefined_acl.toml:10:49: error: frontend.web.use_backend[2].if: missing pattern after "path_beg""#,
            r#"    = help: write FETCH PATTERN..., e.g. "path_beg /api""#,
            r#"undefined_acl.toml:10:52: error: frontend.web.use_backend[2].if: unknown acl "is_itm""#,
            r#"    = help: did you mean "is_item"?"#,
            r#"undefined_acl.toml:15:41: error: frontend.bare.use_backend[0].if: unknown acl "is_item""#,
            r#"    = help: this frontend defines no acls; add acl = { NAME = "FETCH PATTERN" }"#,
            r#"check: 6 errors"#,
        ],
    );
}

/// An invalid regex in an acl (exact column in a literal string, the string start when it has escapes).
#[test]
fn invalid_regex() {
    expect(
        "invalid_regex",
        1,
        &[
            r#"invalid_regex.toml:5:19: error: frontend.web.acl.is_item: invalid regex "^/item/(\d+$": unclosed group"#,
            r#"invalid_regex.toml:5:82: error: frontend.web.acl.is_api[1]: invalid regex "[a-": unclosed character class"#,
            r#"check: 2 errors"#,
        ],
    );
}

/// Two servers with one name in a backend.
#[test]
fn duplicate_server() {
    expect(
        "duplicate_server",
        1,
        &[
            r#"duplicate_server.toml:12:12: error: backend.app.servers[2].name: duplicate server name "s1""#,
            r#"    = help: already used by backend.app.servers[0]"#,
            r#"check: 1 error"#,
        ],
    );
}

/// A backend with an empty or missing server list.
#[test]
fn empty_backend() {
    expect(
        "empty_backend",
        1,
        &[
            r#"empty_backend.toml:9:11: error: backend.app.servers: backend has no servers"#,
            r#"    = help: add { name = "s1", addr = "host:port" }"#,
            r#"empty_backend.toml:11:1: error: backend.api: backend has no servers"#,
            r#"    = help: add servers = [{ name = "s1", addr = "host:port" }]"#,
            r#"check: 2 errors"#,
        ],
    );
}

/// Two sections on one address, reported at the second; a bind whose other settings are
/// invalid counts too.
#[test]
fn bind_conflict() {
    expect(
        "bind_conflict",
        1,
        &[
            r#"bind_conflict.toml:10:9: error: frontend.b.bind[0]: address 127.0.0.1:8080 is already bound by frontend "a""#,
            r#"    = help: first bound at frontend.a.bind[0]"#,
            r#"bind_conflict.toml:14:9: error: frontend.c.bind[0]: address 0.0.0.0:8404 overlaps 127.0.0.1:8404 bound by [admin]"#,
            r#"    = help: first bound at admin.bind"#,
            r#"bind_conflict.toml:19:17: error: frontend.d.bind.addr: address 127.0.0.1:8080 is already bound by frontend "a""#,
            r#"    = help: first bound at frontend.a.bind[0]"#,
            r#"bind_conflict.toml:19:66: error: frontend.d.bind.accept_proxy[1]: invalid address or cidr "300.0.0.1""#,
            r#"    = help: e.g. 10.0.0.1, 10.0.0.0/8, 10.0.0.0/255.0.0.0, ::1 or 2001:db8::/32"#,
            r#"bind_conflict.toml:23:27: error: frontend.e.bind[1].addr: duplicate bind address 0.0.0.0:9090"#,
            r#"    = help: already bound by frontend.e.bind[0]"#,
            r#"bind_conflict.toml:23:51: error: frontend.e.bind[1].tls.cert: missing.pem: cannot read: No such file or directory (os error 2)"#,
            r#"bind_conflict.toml:23:72: error: frontend.e.bind[1].tls.key: missing.key: cannot read: No such file or directory (os error 2)"#,
            r#"check: 7 errors"#,
        ],
    );
}

/// One frontend listing an address twice.
#[test]
fn duplicate_bind() {
    expect(
        "duplicate_bind",
        1,
        &[
            r#"duplicate_bind.toml:3:45: error: frontend.web.bind[2]: duplicate bind address 127.0.0.1:8080"#,
            r#"    = help: already bound by frontend.web.bind[0]"#,
            r#"duplicate_bind.toml:3:63: error: frontend.web.bind[3]: bind address 0.0.0.0:8081 overlaps 127.0.0.1:8081"#,
            r#"    = help: already bound by frontend.web.bind[1]"#,
            r#"check: 2 errors"#,
        ],
    );
}

/// A config with nothing to listen on checks with a warning: `wasp run` refuses it.
#[test]
fn listens_nowhere() {
    expect(
        "listens_nowhere",
        0,
        &[
            r#"listens_nowhere.toml:1:1: warning: the configuration listens nowhere: no frontend and no [admin]"#,
            r#"    = help: wasp run does not start with it, nor reload to it (a file caught half-written reads as empty)"#,
            r#"check: 1 warning"#,
        ],
    );
}

/// Warnings only: exit 0.
#[test]
fn unused_backend() {
    expect(
        "unused_backend",
        0,
        &[
            r#"unused_backend.toml:6:1: warning: frontend.nowhere: frontend has no backend"#,
            r#"    = help: every request will get 503; add default_backend = "NAME" or use_backend rules"#,
            r#"unused_backend.toml:12:1: warning: backend.spare: backend "spare" is not used by any frontend"#,
            r#"    = help: route to it with default_backend or use_backend, or remove it"#,
            r#"check: 2 warnings"#,
        ],
    );
}

/// Weights outside 0..=256.
#[test]
fn weight_range() {
    expect(
        "weight_range",
        1,
        &[
            r#"weight_range.toml:10:52: error: backend.app.servers[2].weight: weight 257 is out of range"#,
            r#"    = help: expected 0..=256"#,
            r#"weight_range.toml:11:52: error: backend.app.servers[3].weight: weight -1 is out of range"#,
            r#"    = help: expected 0..=256"#,
            r#"check: 2 errors"#,
        ],
    );
}

/// A rule with both if and unless, pointing at the later key.
#[test]
fn if_unless() {
    expect(
        "if_unless",
        1,
        &[
            r#"if_unless.toml:7:37: error: frontend.web.use_backend[0]: both "if" and "unless" given"#,
            r#"    = help: a rule takes one condition; negate part of an "if" with "!""#,
            r#"if_unless.toml:8:43: error: frontend.web.use_backend[1]: both "if" and "unless" given"#,
            r#"    = help: a rule takes one condition; negate part of an "if" with "!""#,
            r#"check: 2 errors"#,
        ],
    );
}

/// Invalid TOML: every syntax error, nothing else.
#[test]
fn syntax_error() {
    expect(
        "syntax_error",
        1,
        &[
            r#"syntax_error.toml:4:1: error: duplicate key "workers""#,
            r#"syntax_error.toml:7:23: error: invalid basic string, expected `"`"#,
            r#"check: 2 errors"#,
        ],
    );
}

/// Required keys left out.
#[test]
fn missing_key() {
    expect(
        "missing_key",
        1,
        &[
            r#"missing_key.toml:2:1: error: admin: missing required key "bind""#,
            r#"    = help: add bind = "127.0.0.1:8404" (or unix = "/run/wasp.sock")"#,
            r#"missing_key.toml:4:1: error: frontend.web: missing required key "bind""#,
            r#"missing_key.toml:7:16: error: frontend.web.use_backend[0]: missing required key "backend""#,
            r#"missing_key.toml:11:3: error: backend.app.servers[0]: missing required key "addr""#,
            r#"missing_key.toml:12:3: error: backend.app.servers[1]: missing required key "name""#,
            r#"check: 5 errors"#,
        ],
    );
}

/// Independent errors in different sections and in the same section, all in one run.
#[test]
fn many_errors() {
    expect(
        "many_errors",
        1,
        &[
            r#"many_errors.toml:3:11: error: global.workers: workers 0 is out of range"#,
            r#"    = help: expected 1..=1024"#,
            r#"many_errors.toml:4:14: error: global.log_format: unknown log format "xml""#,
            r#"    = help: expected text or json"#,
            r#"many_errors.toml:8:39: error: defaults.timeout.connect: missing unit in duration "5""#,
            r#"    = help: add a unit, e.g. "5s" or "5ms""#,
            r#"many_errors.toml:11:27: error: frontend.web.bind[1]: duplicate bind address 127.0.0.1:8080"#,
            r#"    = help: already bound by frontend.web.bind[0]"#,
            r#"many_errors.toml:12:19: error: frontend.web.default_backend: unknown backend "webservers""#,
            r#"    = help: defined backends: "items", "spare""#,
            r#"many_errors.toml:13:53: error: frontend.web.acl.bad: invalid regex "(": unclosed group"#,
            r#"many_errors.toml:15:30: error: frontend.web.use_backend[0].if: unknown acl "is_itme""#,
            r#"    = help: did you mean "is_item"?"#,
            r#"many_errors.toml:16:15: error: frontend.web.use_backend[1].backend: unknown backend "baskets""#,
            r#"    = help: defined backends: "items", "spare""#,
            r#"many_errors.toml:18:13: error: frontend.web.timeout.connect: connect timeout does not apply to a frontend"#,
            r#"    = help: set it in a backend or in [defaults]"#,
            r#"many_errors.toml:21:11: error: backend.items.balance: unknown algorithm "round_robn""#,
            r#"    = help: did you mean "roundrobin"?"#,
            r#"many_errors.toml:23:52: error: backend.items.servers[0].weight: weight 300 is out of range"#,
            r#"    = help: expected 0..=256"#,
            r#"many_errors.toml:24:12: error: backend.items.servers[1].name: duplicate server name "s1""#,
            r#"    = help: already used by backend.items.servers[0]"#,
            r#"many_errors.toml:24:25: error: backend.items.servers[1].addr: cannot resolve host "nosuchhost.invalid""#,
            r#"    = help: check the name (and /etc/hosts or DNS), or write an IP address"#,
            r#"many_errors.toml:25:3: error: backend.items.servers[2]: missing required key "name""#,
            r#"many_errors.toml:25:30: error: backend.items.servers[2]: unknown key "chek""#,
            r#"    = help: did you mean "check"?"#,
            r#"many_errors.toml:28:1: warning: backend.spare: backend "spare" is not used by any frontend"#,
            r#"    = help: route to it with default_backend or use_backend, or remove it"#,
            r#"many_errors.toml:29:11: error: backend.spare.servers: backend has no servers"#,
            r#"    = help: add { name = "s1", addr = "host:port" }"#,
            r#"check: 16 errors, 1 warning"#,
        ],
    );
}

/// Server-side timeouts in a frontend and client-side ones in a backend.
#[test]
fn timeout_side() {
    expect(
        "timeout_side",
        1,
        &[
            r#"timeout_side.toml:8:29: error: frontend.web.timeout.server: server timeout does not apply to a frontend"#,
            r#"    = help: set it in a backend or in [defaults]"#,
            r#"timeout_side.toml:8:45: error: frontend.web.timeout.connect: connect timeout does not apply to a frontend"#,
            r#"    = help: set it in a backend or in [defaults]"#,
            r#"timeout_side.toml:12:29: error: backend.app.timeout.http_request: http_request timeout does not apply to a backend"#,
            r#"    = help: set it in a frontend or in [defaults]"#,
            r#"check: 3 errors"#,
        ],
    );
}

/// Balance algorithms other than roundrobin.
#[test]
fn unknown_algorithm() {
    expect(
        "unknown_algorithm",
        1,
        &[
            r#"unknown_algorithm.toml:3:11: error: defaults.balance: unknown algorithm "fastest""#,
            r#"    = help: expected roundrobin, static-rr, leastconn, random, source, uri, uri whole, hdr(NAME), first or a plugin name"#,
            r#"unknown_algorithm.toml:10:11: error: backend.app.balance: unknown algorithm "roundrobn""#,
            r#"    = help: did you mean "roundrobin"?"#,
            r#"check: 2 errors"#,
        ],
    );
}

/// Passive health keys that cannot take effect are warnings, not silently kept.
#[test]
fn passive_health() {
    expect(
        "passive_health",
        0,
        &[
            r#"passive_health.toml:8:11: warning: backend.a.observe: observe has no effect: no server here has check = true"#,
            r#"    = help: passive health marks only checked servers down, since their checks bring them back"#,
            r#"passive_health.toml:12:15: warning: backend.b.error_limit: error_limit has no effect without observe"#,
            r#"    = help: add observe = "layer4" or "layer7""#,
            r#"check: 2 warnings"#,
        ],
    );
}

/// HTTP and TCP sections mixed; keys and fetches of one mode used in the other.
#[test]
fn mode_mismatch() {
    let http_only =
        r#"    = help: frontend "db_in" is in tcp mode; remove it, or set mode = "http""#;
    let db_http_only =
        r#"    = help: backend "db" is in tcp mode; remove it, or set mode = "http""#;
    let tcp_only = r#"    = help: frontend "web" is in http mode; remove it, or set mode = "tcp""#;
    expect(
        "mode_mismatch",
        1,
        &[
            r#"mode_mismatch.toml:5:1: error: frontend.web.inspect_delay: inspect_delay applies to tcp mode only"#,
            tcp_only,
            r#"mode_mismatch.toml:6:19: error: frontend.web.acl.is_shop: fetch "req.ssl_sni" applies to tcp mode only"#,
            tcp_only,
            r#"mode_mismatch.toml:7:28: error: frontend.web.use_backend[0].backend: http frontend "web" cannot use tcp backend "db""#,
            r#"    = help: set mode = "http" in [backend.db], or route to an http backend"#,
            r#"mode_mismatch.toml:13:1: error: frontend.db_in.forwardfor: forwardfor applies to http mode only"#,
            http_only,
            r#"mode_mismatch.toml:14:28: error: frontend.db_in.timeout.http_request: timeout http_request applies to http mode only"#,
            http_only,
            r#"mode_mismatch.toml:15:18: error: frontend.db_in.acl.is_api: fetch "path" applies to http mode only"#,
            http_only,
            r#"mode_mismatch.toml:16:28: error: frontend.db_in.use_backend[0].backend: tcp frontend "db_in" cannot use http backend "app""#,
            r#"    = help: set mode = "tcp" in [backend.app], or route to a tcp backend"#,
            r#"mode_mismatch.toml:20:52: error: backend.app.servers[0].send_proxy: send_proxy applies to tcp mode only"#,
            r#"    = help: backend "app" is in http mode; remove it, or set mode = "tcp""#,
            r#"mode_mismatch.toml:24:11: warning: backend.db.balance: balance "uri" needs http mode"#,
            r#"    = help: backend "db" is in tcp mode: without HTTP data to hash, tcp mode balances round-robin"#,
            r#"mode_mismatch.toml:25:11: error: backend.db.observe: observe = "layer7" applies to http mode only"#,
            db_http_only,
            r#"mode_mismatch.toml:26:11: error: backend.db.check.http: check.http applies to http mode only"#,
            db_http_only,
            r#"mode_mismatch.toml:27:66: error: backend.db.servers[0].tls: tls applies to http mode only"#,
            db_http_only,
            r#"mode_mismatch.toml:32:8: error: frontend.typo.mode: unknown mode "tcpp""#,
            r#"    = help: did you mean "tcp"?"#,
            r#"check: 12 errors, 1 warning"#,
        ],
    );
}

/// `[plugin.*]` keys and the keys naming plugins (router, balance, check.judge); the plugin
/// files are checked too although the rest has errors.
#[test]
fn plugin_keys() {
    expect(
        "plugin_keys",
        1,
        &[
            r#"plugin_keys.toml:5:10: error: frontend.web.router: unknown plugin "path-routr""#,
            r#"    = help: did you mean "path-router"?"#,
            r#"plugin_keys.toml:8:11: error: backend.app.balance: unknown algorithm "stiky""#,
            r#"    = help: did you mean "sticky"?"#,
            r#"plugin_keys.toml:10:41: error: backend.app.check.judge: unknown plugin "json""#,
            r#"    = help: defined plugins: "path-router", "sticky""#,
            r#"plugin_keys.toml:12:1: warning: plugin.path-router: plugin "path-router" is not used"#,
            r#"    = help: use it with frontend router = "NAME", backend balance = "NAME" or check.judge = "NAME""#,
            r#"plugin_keys.toml:13:8: error: plugin.path-router.path: cannot read plugin FIXTURES/path_router.wasm: no such file or directory (os error 2)"#,
            r#"    = help: build it with `cargo build --release --target wasm32-wasip2`, or fix the path (relative paths start at the config file's folder)"#,
            r#"plugin_keys.toml:14:11: error: plugin.path-router.timeout: plugin timeout is too long"#,
            r#"    = help: a plugin call runs on the request path; the maximum is 1s"#,
            r#"plugin_keys.toml:15:10: error: plugin.path-router.memory: invalid size "4g""#,
            r#"    = help: write bytes as an integer, or a string like "64k" or "1m""#,
            r#"plugin_keys.toml:16:12: error: plugin.path-router.on_error: unknown on_error policy "ignore""#,
            r#"    = help: expected fallback or deny"#,
            r#"plugin_keys.toml:17:43: error: plugin.path-router.config.list: expected a string, found an array"#,
            r#"plugin_keys.toml:18:17: error: plugin.path-router.recycle_after: recycle_after 0 is out of range"#,
            r#"    = help: expected at least 1"#,
            r#"plugin_keys.toml:20:1: warning: plugin.sticky: plugin "sticky" is not used"#,
            r#"    = help: use it with frontend router = "NAME", backend balance = "NAME" or check.judge = "NAME""#,
            r#"plugin_keys.toml:21:8: error: plugin.sticky.path: cannot read plugin FIXTURES/sticky_balancer.wasm: no such file or directory (os error 2)"#,
            r#"    = help: build it with `cargo build --release --target wasm32-wasip2`, or fix the path (relative paths start at the config file's folder)"#,
            r#"plugin_keys.toml:22:1: error: plugin.sticky: unknown key "paht""#,
            r#"    = help: did you mean "path"?"#,
            r#"plugin_keys.toml:23:11: error: plugin.sticky.timeout: plugin timeout is too short"#,
            r#"    = help: calls are timed in 1 ms steps; the minimum is 1ms"#,
            r#"plugin_keys.toml:25:18: warning: plugin.sticky.recycle_memory: recycle_memory is not below memory"#,
            r#"    = help: an instance never grows past memory, so it is never recycled for its size; set it below memory"#,
            r#"check: 12 errors, 3 warnings"#,
        ],
    );
}

/// A plugin section loads into the model: the path taken from the config file's folder,
/// defaults applied, config values sorted, each use recorded with its position.
#[test]
fn plugin_section_loads_into_the_model() {
    let src = r#"
[frontend.web]
bind = "127.0.0.1:8080"
router = "r"

[backend.app]
servers = [{ name = "s1", addr = "127.0.0.1:9001" }]
balance = "r"

[plugin.r]
path = "plugins/r.wasm"
config = { zeta = "1", alpha = 2, flag = true }
on_error = "deny"
"#;
    let (config, report) = config::load_str(src, Path::new("/etc/wasp/wasp.toml"));
    let config = config.unwrap_or_else(|| panic!("{}", report.render()));
    let p = &config.plugins[0];
    assert_eq!(p.path, Path::new("/etc/wasp/plugins/r.wasm"));
    assert_eq!(
        p.config,
        [
            ("alpha".to_owned(), "2".to_owned()),
            ("flag".to_owned(), "true".to_owned()),
            ("zeta".to_owned(), "1".to_owned())
        ]
    );
    assert_eq!(p.timeout, Duration::from_millis(5));
    assert_eq!(p.memory, 32 * 1024 * 1024);
    assert_eq!(p.on_error, config::OnError::Deny);
    let uses: Vec<_> = p
        .written
        .uses
        .iter()
        .map(|(role, place)| (*role, place.line, place.key.as_str()))
        .collect();
    assert_eq!(
        uses,
        [
            (config::PluginRole::Router, 4, "frontend.web.router"),
            (config::PluginRole::Balancer, 8, "backend.app.balance")
        ]
    );
    assert_eq!(config.backends[0].balance, Balance::Plugin("r".into()));
    assert_eq!(config.frontends[0].router.as_deref(), Some("r"));
}

/// A rule after an unconditional one (warning).
#[test]
fn unreachable_rule() {
    expect(
        "unreachable_rule",
        0,
        &[
            r#"unreachable_rule.toml:7:3: warning: frontend.web.use_backend[1]: rule can never match"#,
            r#"    = help: frontend.web.use_backend[0] has no condition, so it matches every request"#,
            r#"check: 1 warning"#,
        ],
    );
}

/// Values of the right type outside their domain.
#[test]
fn values() {
    expect(
        "values",
        1,
        &[
            r#"values.toml:3:11: error: global.workers: workers 0 is out of range"#,
            r#"    = help: expected 1..=1024"#,
            r#"values.toml:4:14: error: global.log_format: unknown log format "jsno""#,
            r#"    = help: did you mean "json"?"#,
            r#"values.toml:7:19: error: defaults.max_header_size: max_header_size 4096 is too small"#,
            r#"    = help: the minimum is 8192 bytes"#,
            r#"values.toml:9:11: error: frontend."web 1": invalid frontend name "web 1""#,
            r#"    = help: names may contain letters, digits, '-', '_', '.' and ':'"#,
            r#"values.toml:12:19: error: frontend."web 1".max_header_size: invalid size "64kb""#,
            r#"    = help: write bytes as an integer, or a string like "64k" or "1m""#,
            r#"values.toml:13:9: error: frontend."web 1".acl."is api": invalid acl name "is api""#,
            r#"    = help: names may contain letters, digits, '-', '_', '.' and ':'"#,
            r#"values.toml:13:45: error: frontend."web 1".acl.is_x: unknown fetch "pth_beg""#,
            r#"    = help: did you mean "path_beg"?"#,
            r#"values.toml:13:74: error: frontend."web 1".acl.is_y: missing pattern after "path_beg""#,
            r#"    = help: write FETCH PATTERN..., e.g. "path_beg /api""#,
            r#"values.toml:14:48: error: frontend."web 1".use_backend[0].if: missing acl name"#,
            r#"    = help: a condition names acls: "is_api", "is_api !is_admin", "a or b""#,
            r#"values.toml:18:11: error: backend.app.retries: retries -1 is out of range"#,
            r#"    = help: expected 0..=100"#,
            r#"values.toml:19:18: error: backend.app.check.http: invalid health check request "get /health""#,
            r#"    = help: expected "METHOD /path", e.g. "GET /health""#,
            r#"values.toml:19:40: error: backend.app.check.rise: rise 0 is out of range"#,
            r#"    = help: expected 1..=1000"#,
            r#"values.toml:19:64: error: backend.app.check.interval: duration must be greater than zero"#,
            r#"check: 13 errors"#,
        ],
    );
}

/// The admin listener may leave loopback only with auth (or as a Unix socket).
#[test]
fn admin_exposure() {
    expect(
        "admin_exposure",
        1,
        &[
            r#"admin_exposure.toml:3:8: error: admin.bind: admin listener on 0.0.0.0:8404 is reachable from other hosts without auth"#,
            r#"    = help: add auth = { user = "...", password = "..." }, bind to 127.0.0.1, or serve the admin API on a Unix socket: unix = "/run/wasp.sock", mode = "660""#,
            r#"admin_exposure.toml:4:8: error: admin.mode: invalid file mode "999""#,
            r#"    = help: write octal permissions as a string, e.g. "660""#,
            r#"admin_exposure.toml:5:8: error: admin.auth: missing required key "password""#,
            r#"check: 3 errors"#,
        ],
    );
}

/// Non-loopback with auth, and a Unix socket, are fine.
#[test]
fn admin_protected() {
    expect("admin_protected", 0, &["check: ok"]);
}

/// A self-signed certificate for `name` valid until `not_after` (y, m, d), written to `dir`
/// as `stem.pem` and `stem.key`.
fn cert_files(dir: &Path, stem: &str, name: &str, not_after: (i32, u8, u8)) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// The civil date `days` after 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// `wasp check` on `toml` written to `dir` (run there, so file names print as written).
fn check_in(dir: &Path, toml: &str) -> (i32, String) {
    std::fs::write(dir.join("wasp.toml"), toml).unwrap();
    run_check(dir, "wasp.toml")
}

#[test]
fn tls_files_are_checked_at_the_key_that_names_them() {
    let dir = tempfile::tempdir().unwrap();
    cert_files(dir.path(), "a", "a.test", (4000, 1, 1));
    cert_files(dir.path(), "b", "b.test", (4000, 1, 1));
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("locked.key"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let toml = r#"[frontend.web]
bind = [
  { addr = "127.0.0.1:0", tls = { cert = "a.pem", key = "b.key" } },
  { addr = "127.0.0.1:1", tls = { cert = "missing.pem", key = "missing.key" } },
  { addr = "127.0.0.1:2", tls = { certs = [{ cert = "garbage.pem", key = "a.key" }] } },
  { addr = "127.0.0.1:3", tls = { cert = "a.pem", key = "a.key", verify_client = "required" } },
  { addr = "127.0.0.1:4", tls = { cert = "a.pem" } },
  { addr = "127.0.0.1:5", tls = { cert = "a.pem", key = "a.pem" } },
  { addr = "127.0.0.1:6", tls = { cert = "a.pem", key = "locked.key" } },
]
default_backend = "app"
[backend.app]
servers = [{ name = "s1", addr = "127.0.0.1:9", tls = true, ca = "nope.pem", verify = "maybe" }]
"#;
    let (code, out) = check_in(dir.path(), toml);
    let expected = [
        "wasp.toml:3:57: error: frontend.web.bind[0].tls.key: b.key does not match the certificate in a.pem",
        "wasp.toml:4:42: error: frontend.web.bind[1].tls.cert: missing.pem: cannot read: No such file or directory (os error 2)",
        "wasp.toml:4:63: error: frontend.web.bind[1].tls.key: missing.key: cannot read: No such file or directory (os error 2)",
        "wasp.toml:5:53: error: frontend.web.bind[2].tls.certs[0].cert: garbage.pem: not a valid PEM file: base64 decode error: InvalidCharacter(37)",
        "wasp.toml:6:82: error: frontend.web.bind[3].tls.verify_client: verify_client needs a ca",
        "    = help: add ca = \"clients-ca.pem\": the CA that signs client certificates",
        "wasp.toml:7:33: error: frontend.web.bind[4].tls: cert without key",
        "    = help: add key = \"FILE\": the certificate's private key (PEM)",
        "wasp.toml:8:57: error: frontend.web.bind[5].tls.key: a.pem: no private key in the file",
        "wasp.toml:9:57: error: frontend.web.bind[6].tls.key: locked.key: the private key is encrypted",
        "    = help: wasp reads keys without a passphrase: decrypt it (`openssl pkey -in KEY -out PLAIN`) and keep the file readable by wasp alone",
        "wasp.toml:13:66: error: backend.app.servers[0].ca: nope.pem: cannot read: No such file or directory (os error 2)",
        "wasp.toml:13:87: error: backend.app.servers[0].verify: unknown verify \"maybe\"",
        "    = help: expected required or none",
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 1, "{out}");
    assert_eq!(&lines[..lines.len() - 1], expected, "{out}");
}

#[test]
fn expired_soon_to_expire_and_unverified_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let soon = civil_from_days(i64::try_from(now / 86_400).unwrap() + 10);
    cert_files(dir.path(), "old", "old.test", (2021, 6, 1));
    cert_files(dir.path(), "soon", "soon.test", soon);
    let toml = r#"[frontend.web]
bind = [{ addr = "127.0.0.1:0", tls = { certs = [{ cert = "old.pem", key = "old.key" }, { cert = "soon.pem", key = "soon.key" }] } }]
default_backend = "app"
[backend.app]
servers = [{ name = "s1", addr = "127.0.0.1:9", tls = true, verify = "none" }]
"#;
    let (code, out) = check_in(dir.path(), toml);
    assert_eq!(code, 0, "warnings only: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "wasp.toml:2:59: warning: frontend.web.bind[0].tls.certs[0].cert: certificate old.pem expired on Jun  1 00:00:00 2021 +00:00"
    );
    assert!(
        lines[2].starts_with("wasp.toml:2:98: warning: frontend.web.bind[0].tls.certs[1].cert: certificate soon.pem expires in 9 days, on")
            || lines[2].starts_with("wasp.toml:2:98: warning: frontend.web.bind[0].tls.certs[1].cert: certificate soon.pem expires in 10 days, on"),
        "{out}"
    );
    assert_eq!(
        lines[4],
        "wasp.toml:5:70: warning: backend.app.servers[0].verify: certificate verification is off: any certificate the server presents is accepted"
    );
    assert_eq!(lines.last(), Some(&"check: 3 warnings"), "{out}");
}
