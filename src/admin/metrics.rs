//! `/metrics`: the stats view in the Prometheus text exposition format (0.0.4), encoded by the
//! `prometheus-client` crate from a collector that reads the view built for this scrape.
//!
//! Families (counters get `_total` from the encoder, histograms `_bucket`/`_sum`/`_count`):
//!
//! - `wasp_frontend_requests`, `wasp_frontend_responses{code}`, `wasp_frontend_request_errors`,
//!   `wasp_frontend_bytes_in`, `wasp_frontend_bytes_out`, `wasp_frontend_connections` (gauge),
//!   `wasp_frontend_connections_max` (gauge), `wasp_frontend_connections_limit` (gauge, the
//!   frontend's `maxconn`, only where it has one), `wasp_frontend_connections_accepted`,
//!   `wasp_frontend_response_time_seconds` (histogram) — label `frontend`;
//! - the same `requests`, `responses`, `bytes_*`, `response_time_seconds` for `wasp_backend_*`
//!   (label `backend`) and `wasp_server_*` (labels `backend`, `server`), plus
//!   `wasp_backend_{retries,errors}`, `wasp_backend_active_requests`, `wasp_backend_queued_requests`,
//!   `wasp_backend_up`, `wasp_server_{retries,errors,connect_failures}`,
//!   `wasp_server_active_requests`, `wasp_server_up` (health), `wasp_server_state{state}` (1 for the
//!   current one of UP, DOWN, MAINT, DRAIN), `wasp_server_weight`, `wasp_server_checks{result}`,
//!   `wasp_server_last_change_seconds`;
//! - `wasp_process_resident_memory_bytes`, `wasp_open_connections`, `wasp_maxconn`, `wasp_uptime_seconds`,
//!   `wasp_draining`;
//! - `wasp_plugin_version` (gauge), `wasp_plugin_calls`, `wasp_plugin_errors{kind}`,
//!   `wasp_plugin_rejected_loads`, `wasp_plugin_decision_time_seconds` (histogram, buckets
//!   from 1 µs to 10 ms) — label `plugin`.
//!
//! `code` is the status class: `1xx` .. `5xx`, or `other` when no status was sent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::admin::view::{StatsView, TrafficView};
use crate::counters::{CLASSES, LATENCY_BUCKETS};
use crate::plugin::instance::DECISION_BUCKETS;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Encodes `view` as Prometheus text.
pub fn encode(view: &StatsView) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ViewCollector(view.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct ViewCollector(StatsView);

/// One metric family being written.
struct Family<'e, 'a> {
    encoder: &'e mut DescriptorEncoder<'a>,
}

impl Family<'_, '_> {
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in rows {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        rows: impl IntoIterator<Item = (Labels, i64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, unit, MetricType::Gauge)?;
        for (labels, value) in rows {
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, Histogram)>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self.encoder.encode_descriptor(
            name,
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, h) in rows {
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// One histogram's values: sum (seconds), count, and (upper bound, count) per bucket,
/// non-cumulative, the last bound +Inf.
struct Histogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    fn new(sum: f64, count: u64, bounds: &[f64], counts: &[u64]) -> Self {
        let bounds = bounds.iter().copied().chain([f64::INFINITY]);
        Self {
            sum,
            count,
            buckets: bounds.zip(counts.iter().copied()).collect(),
        }
    }
}

/// The traffic families shared by frontends, backends and servers.
fn traffic(
    f: &mut Family<'_, '_>,
    prefix: &str,
    what: &str,
    rows: &[(Labels, &TrafficView)],
) -> Result<(), std::fmt::Error> {
    f.counters(
        &format!("{prefix}_requests"),
        &format!("Requests {what}."),
        rows.iter().map(|(l, t)| (l.clone(), t.requests)),
    )?;
    f.counters(
        &format!("{prefix}_responses"),
        "Responses by status class (code: 1xx..5xx, other).",
        rows.iter().flat_map(|(l, t)| {
            CLASSES
                .iter()
                .zip(t.totals.responses)
                .map(move |(class, n)| {
                    let mut labels = l.clone();
                    labels.push(("code", (*class).to_owned()));
                    (labels, n)
                })
        }),
    )?;
    f.counters(
        &format!("{prefix}_bytes_in"),
        "Request body bytes received (as announced by Content-Length).",
        rows.iter().map(|(l, t)| (l.clone(), t.bytes_in)),
    )?;
    f.counters(
        &format!("{prefix}_bytes_out"),
        "Response body bytes sent to clients.",
        rows.iter().map(|(l, t)| (l.clone(), t.bytes_out)),
    )?;
    f.histograms(
        &format!("{prefix}_response_time"),
        "Time from a parsed request to its response headers.",
        rows.iter().map(|(l, t)| {
            let t = &t.totals;
            let h = Histogram::new(
                t.time_us as f64 / 1e6,
                t.timed(),
                &LATENCY_BUCKETS,
                &t.latency,
            );
            (l.clone(), h)
        }),
    )
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = &self.0;
        let mut f = Family {
            encoder: &mut encoder,
        };
        let no_labels = || Labels::new();

        // Process.
        if let Some(rss) = view.process.rss_bytes {
            f.gauges(
                "wasp_process_resident_memory",
                "Resident memory of the wasp process.",
                Some(&Unit::Bytes),
                [(no_labels(), gauge(rss))],
            )?;
        }
        f.gauges(
            "wasp_open_connections",
            "Client connections open on every frontend.",
            None,
            [(no_labels(), gauge(view.process.connections))],
        )?;
        f.gauges(
            "wasp_maxconn",
            "The most client connections open at once ([global] maxconn).",
            None,
            [(
                no_labels(),
                gauge(u64::try_from(view.process.maxconn).unwrap_or(u64::MAX)),
            )],
        )?;
        f.gauges(
            "wasp_uptime",
            "Seconds since the process started.",
            Some(&Unit::Seconds),
            [(no_labels(), gauge(view.process.uptime_seconds))],
        )?;
        f.gauges(
            "wasp_draining",
            "1 once a graceful stop has begun.",
            None,
            [(no_labels(), i64::from(view.process.draining))],
        )?;

        // Frontends.
        let fe = |name: &str| vec![("frontend", name.to_owned())];
        let rows: Vec<(Labels, &TrafficView)> = view
            .frontends
            .iter()
            .map(|x| (fe(&x.name), &x.traffic))
            .collect();
        traffic(&mut f, "wasp_frontend", "received", &rows)?;
        f.counters(
            "wasp_frontend_request_errors",
            "Requests wasp refused itself (400, 408, 431).",
            view.frontends
                .iter()
                .map(|x| (fe(&x.name), x.traffic.errors)),
        )?;
        f.gauges(
            "wasp_frontend_connections",
            "Client connections open now.",
            None,
            view.frontends
                .iter()
                .map(|x| (fe(&x.name), gauge(x.sessions.current))),
        )?;
        f.gauges(
            "wasp_frontend_connections_max",
            "Most client connections open at once.",
            None,
            view.frontends
                .iter()
                .map(|x| (fe(&x.name), gauge(x.sessions.max))),
        )?;
        f.gauges(
            "wasp_frontend_connections_limit",
            "The frontend's own limit on client connections (maxconn), where it has one.",
            None,
            view.frontends
                .iter()
                .filter_map(|x| Some((fe(&x.name), gauge(x.maxconn?)))),
        )?;
        f.counters(
            "wasp_frontend_connections_accepted",
            "Client connections accepted.",
            view.frontends
                .iter()
                .map(|x| (fe(&x.name), x.sessions.total)),
        )?;

        // Backends.
        let be = |name: &str| vec![("backend", name.to_owned())];
        let rows: Vec<(Labels, &TrafficView)> = view
            .backends
            .iter()
            .map(|x| (be(&x.name), &x.traffic))
            .collect();
        traffic(&mut f, "wasp_backend", "routed to the backend", &rows)?;
        f.counters(
            "wasp_backend_retries",
            "Attempts made again after a failed one.",
            view.backends
                .iter()
                .map(|x| (be(&x.name), x.traffic.retries)),
        )?;
        f.counters(
            "wasp_backend_errors",
            "Failed connects and servers that gave no (timely) answer.",
            view.backends
                .iter()
                .map(|x| (be(&x.name), x.traffic.errors)),
        )?;
        f.gauges(
            "wasp_backend_active_requests",
            "Requests in flight.",
            None,
            view.backends
                .iter()
                .map(|x| (be(&x.name), gauge(x.sessions.current))),
        )?;
        f.gauges(
            "wasp_backend_queued_requests",
            "Requests waiting for a free slot (maxconn).",
            None,
            view.backends.iter().map(|x| (be(&x.name), gauge(x.queued))),
        )?;
        f.gauges(
            "wasp_backend_up",
            "1 when some server can take requests.",
            None,
            view.backends
                .iter()
                .map(|x| (be(&x.name), i64::from(x.servers_up > 0))),
        )?;

        // Servers.
        let servers: Vec<_> = view.backends.iter().flat_map(|b| &b.servers).collect();
        let sv = |backend: &str, server: &str| {
            vec![
                ("backend", backend.to_owned()),
                ("server", server.to_owned()),
            ]
        };
        let rows: Vec<(Labels, &TrafficView)> = servers
            .iter()
            .map(|s| (sv(&s.backend, &s.name), &s.traffic))
            .collect();
        traffic(
            &mut f,
            "wasp_server",
            "sent to the server (every attempt)",
            &rows,
        )?;
        f.counters(
            "wasp_server_retries",
            "Attempts made again after a failed one on this server.",
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), s.traffic.retries)),
        )?;
        f.counters(
            "wasp_server_errors",
            "Failed connects and no (timely) answers.",
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), s.traffic.errors)),
        )?;
        f.counters(
            "wasp_server_connect_failures",
            "Connects that failed.",
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), s.connect_failures)),
        )?;
        f.gauges(
            "wasp_server_active_requests",
            "Requests in flight.",
            None,
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), gauge(s.sessions.current))),
        )?;
        f.gauges(
            "wasp_server_up",
            "1 when health checks judge the server up.",
            None,
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), i64::from(s.health == "up"))),
        )?;
        f.gauges(
            "wasp_server_state",
            "1 for the server's current status (UP, DOWN, MAINT, DRAIN), else 0.",
            None,
            servers.iter().flat_map(|s| {
                ["UP", "DOWN", "MAINT", "DRAIN"].into_iter().map(|state| {
                    let mut labels = sv(&s.backend, &s.name);
                    labels.push(("state", state.to_owned()));
                    (labels, i64::from(s.status == state))
                })
            }),
        )?;
        f.gauges(
            "wasp_server_weight",
            "Effective weight.",
            None,
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), i64::from(s.weight))),
        )?;
        f.counters(
            "wasp_server_checks",
            "Active health checks run, by result (passed, failed).",
            servers.iter().flat_map(|s| {
                [("passed", s.checks_passed), ("failed", s.checks_failed)]
                    .into_iter()
                    .map(|(result, n)| {
                        let mut labels = sv(&s.backend, &s.name);
                        labels.push(("result", result.to_owned()));
                        (labels, n)
                    })
            }),
        )?;
        f.gauges(
            "wasp_server_last_change",
            "Seconds since the server's health last changed.",
            Some(&Unit::Seconds),
            servers
                .iter()
                .map(|s| (sv(&s.backend, &s.name), gauge(s.last_change_seconds))),
        )?;

        // Plugins.
        let pl = |name: &str| vec![("plugin", name.to_owned())];
        f.gauges(
            "wasp_plugin_version",
            "Loads of the plugin so far (1 for the first); the live version.",
            None,
            view.plugins.iter().map(|p| (pl(&p.name), gauge(p.version))),
        )?;
        f.counters(
            "wasp_plugin_calls",
            "Decisions asked of the plugin (every version).",
            view.plugins.iter().map(|p| (pl(&p.name), p.calls)),
        )?;
        f.counters(
            "wasp_plugin_errors",
            "Decisions the plugin did not take, by kind (timeout, trap, memory, invalid, unavailable, suspended).",
            view.plugins.iter().flat_map(|p| {
                [
                    ("timeout", p.timeouts),
                    ("trap", p.traps),
                    ("memory", p.memory_faults),
                    ("invalid", p.invalid_answers),
                    ("unavailable", p.unavailable),
                    ("suspended", p.suspended),
                ]
                .into_iter()
                .map(|(kind, n)| {
                    let mut labels = pl(&p.name);
                    labels.push(("kind", kind.to_owned()));
                    (labels, n)
                })
            }),
        )?;
        f.counters(
            "wasp_plugin_suspensions",
            "Times the plugin was suspended after calls that all ran out of time or memory.",
            view.plugins.iter().map(|p| (pl(&p.name), p.suspensions)),
        )?;
        f.counters(
            "wasp_plugin_rejected_loads",
            "New versions a hot-load rejected (the previous one kept serving).",
            view.plugins.iter().map(|p| (pl(&p.name), p.rejected_loads)),
        )?;
        f.counters(
            "wasp_plugin_log_lines_dropped",
            "Log lines of the plugin dropped over its budget (50 a second).",
            view.plugins
                .iter()
                .map(|p| (pl(&p.name), p.log_lines_dropped)),
        )?;
        f.histograms(
            "wasp_plugin_decision_time",
            "Time of one plugin call, instantiation included.",
            view.plugins.iter().map(|p| {
                let u = &p.usage;
                let h = Histogram::new(
                    u.nanos as f64 / 1e9,
                    u.calls,
                    &DECISION_BUCKETS,
                    &u.histogram,
                );
                (pl(&p.name), h)
            }),
        )?;
        Ok(())
    }
}
