//! What one health check saw and what it meant.
//!
//! A check is split in two so that the judgement can be replaced (a Wasm plugin later): a
//! probe produces an [`Observation`] (connect result, or status, headers, a bounded body prefix
//! and the latency), and a [`HealthCheck`] turns it into a [`Verdict`]: pass or fail, with a
//! [`Reason`] worded like HAProxy's (`layer4 connection refused`, `layer7 status 500`).

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// At most this many bytes of an HTTP check's response body are read and kept.
pub const BODY_PREFIX_LIMIT: usize = 16 * 1024;

/// What one probe of a server saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// From the start of the connect to the end of the probe.
    pub latency: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// TCP check: the connection was accepted.
    Connected,
    /// HTTP check: the server answered.
    Response(CheckResponse),
    /// The probe failed before an answer could be judged.
    Failed(ProbeError),
}

/// The answer to an HTTP check request.
#[derive(Debug, Clone)]
pub struct CheckResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The first [`BODY_PREFIX_LIMIT`] bytes of the body at most.
    pub body: Bytes,
    /// False when the body was longer than the prefix, broke off, or did not end in time.
    pub body_complete: bool,
}

/// Why a probe got no answer to judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connection refused")]
    Refused,
    #[error("connect timed out after {}", fmt_duration(*.0))]
    ConnectTimeout(Duration),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    #[error("no response within {}", fmt_duration(*.0))]
    Timeout(Duration),
}

impl ProbeError {
    pub fn reason(&self) -> Reason {
        match self {
            ProbeError::Refused => Reason::Layer4Refused,
            ProbeError::ConnectTimeout(t) => Reason::Layer4Timeout(*t),
            ProbeError::Connect(e) => Reason::Layer4Error(e.clone()),
            ProbeError::InvalidResponse(_) => Reason::Layer7Invalid,
            ProbeError::Timeout(t) => Reason::CheckTimeout(*t),
        }
    }
}

/// A check's result in HAProxy's words; its `Display` is what logs show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// TCP check passed.
    Layer4Ok,
    /// HTTP check passed with this status.
    Layer7Ok(u16),
    Layer4Refused,
    /// The connect did not complete within the check timeout.
    Layer4Timeout(Duration),
    /// Any other connect error (unreachable, reset, ...).
    Layer4Error(String),
    /// The server answered with a status outside `expect`.
    Layer7Status(u16),
    /// The server's answer was not an HTTP response (or it closed before answering).
    Layer7Invalid,
    /// Connected, but no response within the check timeout.
    CheckTimeout(Duration),
    /// A health plugin's verdict, with its reason for a down one.
    Judged {
        plugin: String,
        passed: bool,
        detail: String,
    },
    /// Passive health (`observe`): this many errors in a row on live traffic marked the
    /// server down (HAProxy's "Health analyze").
    Observed(u32),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Layer4Ok => f.write_str("layer4 ok"),
            Reason::Layer7Ok(s) => write!(f, "layer7 ok status {s}"),
            Reason::Layer4Refused => f.write_str("layer4 connection refused"),
            Reason::Layer4Timeout(t) => write!(f, "layer4 timeout after {}", fmt_duration(*t)),
            Reason::Layer4Error(e) => write!(f, "layer4 connection error: {e}"),
            Reason::Layer7Status(s) => write!(f, "layer7 status {s}"),
            Reason::Layer7Invalid => f.write_str("layer7 invalid response"),
            Reason::CheckTimeout(t) => write!(f, "check timeout after {}", fmt_duration(*t)),
            Reason::Judged {
                plugin,
                passed: true,
                ..
            } => write!(f, "plugin {plugin}: up"),
            Reason::Judged { plugin, detail, .. } => write!(f, "plugin {plugin}: down: {detail}"),
            Reason::Observed(n) => {
                write!(f, "health analyze: {n} consecutive errors on live traffic")
            }
        }
    }
}

/// A judged observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    pub reason: Reason,
}

/// The latest check of a server, as kept in its state for the stats page: an active check's,
/// or passive health's when live traffic marked the server down (no observation then).
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// When the check finished.
    pub at: Instant,
    pub observation: Option<Observation>,
    pub verdict: Verdict,
}

/// The health decision: native (below) or a plugin (`plugin::WasmJudge`) implement it.
pub trait HealthCheck: Send + Sync + fmt::Debug {
    fn judge(&self, observation: &Observation) -> Verdict;

    /// Whether a judgement may take long (a plugin's, up to its timeout). Such a judge runs on
    /// the blocking pool, not on the control thread, which also serves the admin API and
    /// every other check.
    fn may_block(&self) -> bool {
        false
    }
}

/// HAProxy's judgement: a TCP check passes when the connect succeeds, an HTTP check when the
/// status is in `expect`.
#[derive(Debug, Clone, Default)]
pub struct NativeCheck {
    /// Statuses that pass, as inclusive ranges (an HTTP check's `expect`).
    pub expect: Vec<(u16, u16)>,
}

impl NativeCheck {
    /// The native judgement a backend's `check` table asks for.
    pub fn for_params(params: &crate::config::CheckParams) -> NativeCheck {
        NativeCheck {
            expect: params
                .http
                .as_ref()
                .map(|h| h.expect.clone())
                .unwrap_or_default(),
        }
    }
}

impl HealthCheck for NativeCheck {
    fn judge(&self, observation: &Observation) -> Verdict {
        match &observation.outcome {
            Outcome::Connected => Verdict {
                passed: true,
                reason: Reason::Layer4Ok,
            },
            Outcome::Response(r) => {
                let status = r.status.as_u16();
                let passed = self
                    .expect
                    .iter()
                    .any(|&(lo, hi)| (lo..=hi).contains(&status));
                Verdict {
                    passed,
                    reason: if passed {
                        Reason::Layer7Ok(status)
                    } else {
                        Reason::Layer7Status(status)
                    },
                }
            }
            Outcome::Failed(e) => Verdict {
                passed: false,
                reason: e.reason(),
            },
        }
    }
}

/// `1s`, `250ms`, `1500ms`, `10us`: the largest unit that keeps the value whole.
pub fn fmt_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(outcome: Outcome) -> Observation {
        Observation {
            latency: Duration::from_millis(3),
            outcome,
        }
    }

    fn response(status: u16) -> Outcome {
        Outcome::Response(CheckResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            body_complete: true,
        })
    }

    fn judged(check: &NativeCheck, outcome: Outcome) -> (bool, String) {
        let v = check.judge(&observe(outcome));
        (v.passed, v.reason.to_string())
    }

    #[test]
    fn reasons_read_like_haproxy() {
        let http = NativeCheck {
            expect: vec![(200, 399)],
        };
        let second = Duration::from_secs(1);
        for (outcome, want) in [
            (Outcome::Connected, (true, "layer4 ok")),
            (response(200), (true, "layer7 ok status 200")),
            (response(399), (true, "layer7 ok status 399")),
            (response(500), (false, "layer7 status 500")),
            (
                Outcome::Failed(ProbeError::Refused),
                (false, "layer4 connection refused"),
            ),
            (
                Outcome::Failed(ProbeError::ConnectTimeout(second)),
                (false, "layer4 timeout after 1s"),
            ),
            (
                Outcome::Failed(ProbeError::Timeout(second)),
                (false, "check timeout after 1s"),
            ),
            (
                Outcome::Failed(ProbeError::InvalidResponse("garbage".into())),
                (false, "layer7 invalid response"),
            ),
            (
                Outcome::Failed(ProbeError::Connect("network unreachable".into())),
                (false, "layer4 connection error: network unreachable"),
            ),
        ] {
            assert_eq!(judged(&http, outcome), (want.0, want.1.to_owned()));
        }
    }

    #[test]
    fn expect_ranges_decide_http_checks() {
        let check = NativeCheck {
            expect: vec![(200, 200), (204, 204), (300, 399)],
        };
        assert!(judged(&check, response(204)).0);
        assert!(judged(&check, response(302)).0);
        assert!(!judged(&check, response(201)).0);
        assert!(!judged(&check, response(404)).0);
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2s");
        assert_eq!(fmt_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_micros(10)), "10us");
    }
}
