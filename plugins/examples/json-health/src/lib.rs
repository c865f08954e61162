//! `json-health`: a server is up only when its HTTP check answers with a JSON object whose
//! `"status"` is `"ok"`, e.g. `{"status": "ok", "db": "connected"}`. A TCP check or a failed
//! probe is down. Use it with `check = { http = "GET /health", judge = "json-health" }`.

use wasp_plugin::{CheckOutcome, CheckResult, HealthJudge, Verdict};

/// The judgement of one HTTP answer.
pub fn judge_body(status: u16, body: &[u8], complete: bool) -> Verdict {
    if !(200..300).contains(&status) {
        return Verdict::Down(format!("status {status}"));
    }
    if !complete {
        return Verdict::Down("body too large or cut short".into());
    }
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Verdict::Down("body is not JSON".into()),
    };
    match value.get("status").and_then(|s| s.as_str()) {
        Some("ok") => Verdict::Up,
        Some(other) => Verdict::Down(format!("status is {other:?}")),
        None => Verdict::Down("no \"status\" field".into()),
    }
}

struct JsonHealth;

impl HealthJudge for JsonHealth {
    fn judge(result: CheckResult) -> Verdict {
        match result.outcome {
            CheckOutcome::Response(r) => judge_body(r.status, &r.body_prefix, r.body_complete),
            CheckOutcome::Connected => Verdict::Down("needs an HTTP check".into()),
            CheckOutcome::Failed(e) => Verdict::Down(e),
        }
    }
}

wasp_plugin::export_health!(JsonHealth);

#[cfg(test)]
mod tests {
    use super::*;

    fn up(v: &Verdict) -> bool {
        matches!(v, Verdict::Up)
    }

    #[test]
    fn only_status_ok_json_is_up() {
        assert!(up(&judge_body(200, br#"{"status":"ok"}"#, true)));
        assert!(up(&judge_body(200, br#"{"db":1, "status" : "ok"}"#, true)));
        assert!(!up(&judge_body(200, br#"{"status":"degraded"}"#, true)));
        assert!(!up(&judge_body(200, br#"{"state":"ok"}"#, true)));
        assert!(!up(&judge_body(200, b"ok", true)));
        assert!(!up(&judge_body(200, br#"["status","ok"]"#, true)));
        assert!(!up(&judge_body(500, br#"{"status":"ok"}"#, true)));
        assert!(!up(&judge_body(200, br#"{"status":"ok"}"#, false)));
    }

    #[test]
    fn reasons_say_why() {
        match judge_body(200, b"<html>", true) {
            Verdict::Down(r) => assert_eq!(r, "body is not JSON"),
            Verdict::Up => panic!("up"),
        }
    }
}
