//! The stats page: one server-rendered HTML document with inline CSS, no script and no external
//! assets. It reloads itself every `[admin] refresh` (a `<meta http-equiv="refresh">`). On a
//! narrow screen each table row becomes a card whose cells carry their column name.
//! Every name from the config is HTML-escaped.

use std::fmt::Write as _;
use std::time::Duration;

use crate::admin::view::{PluginView, SessionsView, StatsView, TrafficView, ago};

const STYLE: &str = "\
:root{--up:#1a7f37;--down:#cf222e;--maint:#6e7781;--drain:#9a6700;--line:#d0d7de}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:12px;color:#1f2328;background:#f6f8fa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
.meta{color:#57606a;margin-bottom:8px}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;margin-bottom:12px;overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#eaeef2;font-weight:600}
th:first-child,td:first-child{text-align:left}
.st{font-weight:700;border-radius:4px;padding:0 6px;color:#fff}
.UP{background:var(--up)}.DOWN{background:var(--down)}.MAINT{background:var(--maint)}.DRAIN{background:var(--drain)}.OPEN{background:var(--up)}.FULL{background:var(--drain)}
.title{display:flex;justify-content:space-between;gap:8px;padding:6px 8px;font-weight:600;border-bottom:1px solid var(--line)}
@media (max-width:700px){
 table,tbody,tr,td{display:block;width:100%}
 thead{display:none}
 tr{border-bottom:2px solid var(--line);padding:4px 0}
 td{display:inline-block;width:50%;border:0;text-align:right;padding:1px 8px;white-space:normal;vertical-align:top}
 td::before{content:attr(data-label);float:left;color:#57606a;font-weight:600;margin-right:6px}
 td:first-child{width:100%;font-weight:700;text-align:left}
 td:first-child::before{content:none}
}
";

/// Escapes `s` for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const TRAFFIC_HEADERS: [&str; 14] = [
    "Cur",
    "Max",
    "Total",
    "Rate/s",
    "Bytes in",
    "Bytes out",
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "Avg ms",
    "Retries",
    "Errors",
];

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn cell(out: &mut String, label: &str, value: &str) {
    let _ = write!(out, "<td data-label=\"{}\">{}</td>", esc(label), value);
}

fn traffic_cells(out: &mut String, s: &SessionsView, rate: f64, t: &TrafficView) {
    let values = [
        s.current.to_string(),
        s.max.to_string(),
        s.total.to_string(),
        format!("{rate:.1}"),
        bytes(t.bytes_in),
        bytes(t.bytes_out),
        t.totals.responses[0].to_string(),
        t.totals.responses[1].to_string(),
        t.totals.responses[2].to_string(),
        t.totals.responses[3].to_string(),
        t.totals.responses[4].to_string(),
        t.avg_response_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}")),
        t.retries.to_string(),
        t.errors.to_string(),
    ];
    for (label, value) in TRAFFIC_HEADERS.iter().zip(values) {
        cell(out, label, &value);
    }
}

fn header_row(out: &mut String, first: &[&str]) {
    out.push_str("<thead><tr>");
    for h in first.iter().chain(TRAFFIC_HEADERS.iter()) {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead>");
}

fn badge(status: &str) -> String {
    format!("<span class=\"st {0}\">{0}</span>", esc(status))
}

/// Renders the whole page. `refresh` zero: no auto-refresh.
pub fn render(view: &StatsView, refresh: Duration) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    if !refresh.is_zero() {
        let _ = write!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            refresh.as_secs().max(1)
        );
    }
    let _ = write!(
        out,
        "<title>wasp stats</title><style>{STYLE}</style></head><body>"
    );
    let p = &view.process;
    let _ = write!(
        out,
        "<h1>wasp stats</h1><div class=\"meta\">version {} &middot; pid {} &middot; up {} &middot; \
         {} workers &middot; {} connections (maxconn {}){}{}{}</div>",
        esc(p.version),
        p.pid,
        ago(p.uptime_seconds),
        p.workers,
        p.connections,
        p.maxconn,
        p.rss_bytes
            .map(|b| format!(" &middot; RSS {}", bytes(b)))
            .unwrap_or_default(),
        if refresh.is_zero() {
            String::new()
        } else {
            format!(" &middot; refresh {}s", refresh.as_secs().max(1))
        },
        if p.draining {
            " &middot; <span class=\"st DOWN\">DRAINING</span>"
        } else {
            ""
        },
    );

    out.push_str("<h2>Frontends</h2><div class=\"card\"><table>");
    header_row(&mut out, &["Frontend", "Status", "Bind"]);
    out.push_str("<tbody>");
    for f in &view.frontends {
        out.push_str("<tr>");
        cell(&mut out, "Frontend", &esc(&f.name));
        cell(&mut out, "Status", &badge(f.status));
        cell(&mut out, "Bind", &esc(&f.binds.join(", ")));
        traffic_cells(&mut out, &f.sessions, f.rate, &f.traffic);
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");

    out.push_str("<h2>Backends</h2>");
    for b in &view.backends {
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"title\"><span>{} {}</span><span>{} &middot; {}/{} servers usable &middot; queue {}</span></div><table>",
            esc(&b.name),
            badge(b.status),
            esc(&b.balance),
            b.servers_up,
            b.servers.len(),
            b.queued,
        );
        header_row(
            &mut out,
            &[
                "Server",
                "Status",
                "Last check",
                "Changed",
                "Weight",
                "Address",
            ],
        );
        out.push_str("<tbody>");
        for s in &b.servers {
            out.push_str("<tr>");
            let name = if s.backup {
                format!("{} (backup)", esc(&s.name))
            } else {
                esc(&s.name)
            };
            cell(&mut out, "Server", &name);
            cell(&mut out, "Status", &badge(s.status));
            let check = match (&s.last_check, s.checked) {
                (Some(c), _) => format!("{} ({} ago)", esc(&c.result), ago(c.seconds_ago)),
                (None, true) => "pending".to_owned(),
                (None, false) => "no check".to_owned(),
            };
            cell(&mut out, "Last check", &check);
            cell(
                &mut out,
                "Changed",
                &format!("{} ago", ago(s.last_change_seconds)),
            );
            cell(&mut out, "Weight", &s.weight.to_string());
            cell(&mut out, "Address", &esc(&s.addr.to_string()));
            traffic_cells(&mut out, &s.sessions, s.rate, &s.traffic);
            out.push_str("</tr>");
        }
        out.push_str("<tr>");
        cell(&mut out, "Server", "<b>Backend</b>");
        cell(&mut out, "Status", &badge(b.status));
        for label in ["Last check", "Changed", "Weight", "Address"] {
            cell(&mut out, label, "");
        }
        traffic_cells(&mut out, &b.sessions, b.rate, &b.traffic);
        out.push_str("</tr></tbody></table></div>");
    }
    plugins(&mut out, &view.plugins);
    out.push_str(
        "<div class=\"meta\">Also: <a href=\"stats.json\">stats.json</a> &middot; \
         <a href=\"metrics\">metrics</a> &middot; <a href=\"healthz\">healthz</a></div>",
    );
    out.push_str("</body></html>\n");
    out
}

/// The plugins table (nothing when no plugin is configured).
fn plugins(out: &mut String, plugins: &[PluginView]) {
    if plugins.is_empty() {
        return;
    }
    const HEADERS: [&str; 10] = [
        "Plugin",
        "Version",
        "Hash",
        "Roles",
        "Calls",
        "Avg µs",
        "Errors",
        "Timeouts",
        "Traps",
        "Rejected loads",
    ];
    out.push_str("<h2>Plugins</h2><div class=\"card\"><table><thead><tr>");
    for h in HEADERS {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for p in plugins {
        let values = [
            esc(&p.name),
            p.version.to_string(),
            esc(&p.hash),
            esc(&p.roles.join(", ")),
            p.calls.to_string(),
            p.avg_decision_us
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
            p.errors.to_string(),
            p.timeouts.to_string(),
            p.traps.to_string(),
            p.rejected_loads.to_string(),
        ];
        out.push_str("<tr>");
        for (label, value) in HEADERS.iter().zip(values) {
            cell(out, label, &value);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
