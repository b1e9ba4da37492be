//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4)
//! of the hub, both front doors and the process, rendered from a
//! [`Snapshot`] so that it is tested without a server.

use std::fmt::Write as _;

use crate::access::Refusals;
use crate::hub::{CloseReason, HubStats, Protocol};
use crate::metrics::ProcessSample;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one scrape reports, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub hub: HubStats,
    /// HTTP responses by status code.
    pub http_responses: Vec<(u16, u64)>,
    /// gRPC calls by (method, status code name).
    pub grpc_calls: Vec<((&'static str, &'static str), u64)>,
    /// gRPC connections ended for flooding, by kind of flood.
    pub grpc_floods: Vec<(&'static str, u64)>,
    /// What the gate refused, by reason, on both ports.
    pub refusals: Refusals,
    pub http_connections: u64,
    pub sse_streams: u64,
    pub process: ProcessSample,
}

/// Writes one metric family: HELP, TYPE and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `{a="x",b="y"}` with values escaped as the format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn one(value: impl ToString) -> Vec<(String, String)> {
    vec![(String::new(), value.to_string())]
}

/// The whole exposition.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let by_protocol: Vec<_> = Protocol::ALL
        .iter()
        .map(|p| {
            (
                labels(&[("protocol", p.as_str())]),
                s.hub.subscribers_by_protocol[*p as usize].to_string(),
            )
        })
        .collect();
    family(
        &mut out,
        "streamhub_subscribers",
        "gauge",
        "Subscribers connected now, by protocol.",
        &by_protocol,
    );
    family(
        &mut out,
        "streamhub_rooms",
        "gauge",
        "Rooms that exist now.",
        &one(s.hub.rooms),
    );
    family(
        &mut out,
        "streamhub_messages_published_total",
        "counter",
        "Messages accepted by the hub.",
        &one(s.hub.published),
    );
    family(
        &mut out,
        "streamhub_messages_delivered_total",
        "counter",
        "Messages taken by subscribers for sending (one per subscriber per message).",
        &one(s.hub.delivered),
    );
    family(
        &mut out,
        "streamhub_history_bytes",
        "gauge",
        "Content bytes retained by all rooms for resuming subscribers.",
        &one(s.hub.history_bytes),
    );
    family(
        &mut out,
        "streamhub_publish_stalls_total",
        "counter",
        "Publishes that waited for a subscriber a window behind (then caught up or dropped as slow_consumer).",
        &one(s.hub.publish_stalls),
    );
    family(
        &mut out,
        "streamhub_publish_stall_seconds_total",
        "counter",
        "Time publishes spent waiting for lagging subscribers.",
        &[(
            String::new(),
            format!("{:.6}", s.hub.publish_stall_micros as f64 / 1e6),
        )],
    );
    family(
        &mut out,
        "streamhub_rooms_evicted_total",
        "counter",
        "Rooms without subscribers removed at the room limit to make way for new ones.",
        &one(s.hub.rooms_evicted),
    );
    let closed: Vec<_> = CloseReason::ALL
        .iter()
        .map(|r| {
            (
                labels(&[("reason", r.as_str())]),
                s.hub.closed(*r).to_string(),
            )
        })
        .collect();
    family(
        &mut out,
        "streamhub_subscribers_closed_total",
        "counter",
        "Subscriptions ended, by reason (slow_consumer: dropped for not keeping up).",
        &closed,
    );
    let http: Vec<_> = s
        .http_responses
        .iter()
        .map(|(code, n)| (labels(&[("code", &code.to_string())]), n.to_string()))
        .collect();
    family(
        &mut out,
        "streamhub_http_responses_total",
        "counter",
        "HTTP responses sent, by status code.",
        &http,
    );
    let grpc: Vec<_> = s
        .grpc_calls
        .iter()
        .map(|((method, code), n)| (labels(&[("method", method), ("code", code)]), n.to_string()))
        .collect();
    family(
        &mut out,
        "streamhub_grpc_calls_total",
        "counter",
        "gRPC calls completed, by method and status code.",
        &grpc,
    );
    let floods: Vec<_> = s
        .grpc_floods
        .iter()
        .map(|(kind, n)| (labels(&[("kind", kind)]), n.to_string()))
        .collect();
    family(
        &mut out,
        "streamhub_grpc_floods_total",
        "counter",
        "gRPC connections ended with GOAWAY ENHANCE_YOUR_CALM, by what they flooded (rapid_reset, ping, settings, empty_frames, window_update, continuation, header_list).",
        &floods,
    );
    let by_reason = |list: &[(&'static str, u64)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(reason, n)| (labels(&[("reason", reason)]), n.to_string()))
            .collect()
    };
    family(
        &mut out,
        "streamhub_auth_refused_total",
        "counter",
        "Requests and calls refused for their token, by reason (missing, malformed, bad_signature, expired, forbidden, wrong_user, ...), both ports.",
        &by_reason(&s.refusals.denied),
    );
    family(
        &mut out,
        "streamhub_rate_limited_total",
        "counter",
        "Publishes and connections refused by a limit, by limit (publish_rate, connect_rate, connections_per_address), both ports.",
        &by_reason(&s.refusals.limited),
    );
    family(
        &mut out,
        "streamhub_http_connections",
        "gauge",
        "HTTP connections open now.",
        &one(s.http_connections),
    );
    family(
        &mut out,
        "streamhub_sse_streams",
        "gauge",
        "SSE streams open now.",
        &one(s.sse_streams),
    );
    family(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        &one(s.process.resident_bytes),
    );
    family(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        &one(s.process.cpu_seconds),
    );
    family(
        &mut out,
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        &one(s.process.threads),
    );
    family(
        &mut out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        &one(s.process.open_fds),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_parse() {
        let mut snapshot = Snapshot {
            http_responses: vec![(200, 5), (404, 1)],
            grpc_calls: vec![(("SendMessage", "OK"), 3)],
            grpc_floods: vec![("rapid_reset", 2)],
            refusals: Refusals {
                denied: vec![("expired", 3)],
                limited: vec![("publish_rate", 4)],
            },
            http_connections: 2,
            sse_streams: 1,
            process: ProcessSample {
                cpu_seconds: 1.5,
                resident_bytes: 8 << 20,
                threads: 12,
                open_fds: 9,
            },
            ..Snapshot::default()
        };
        snapshot.hub.subscribers_by_protocol = [4, 1];
        snapshot.hub.published = 10;
        snapshot.hub.closed.slow_consumer = 2;
        let text = render(&snapshot);
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "gauge" | "counter"), "{line}");
                assert!(text.contains(&format!("# HELP {name} ")), "{name}");
                declared.insert(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line} has no TYPE before it");
                let v = line.rsplit(' ').next().unwrap();
                assert!(v.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert_eq!(
            value(&text, r#"streamhub_subscribers{protocol="grpc"}"#),
            Some(4.0)
        );
        assert_eq!(
            value(&text, r#"streamhub_subscribers{protocol="sse"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "streamhub_messages_published_total"),
            Some(10.0)
        );
        assert_eq!(
            value(
                &text,
                r#"streamhub_subscribers_closed_total{reason="slow_consumer"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"streamhub_http_responses_total{code="404"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"streamhub_grpc_calls_total{method="SendMessage",code="OK"}"#
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&text, r#"streamhub_grpc_floods_total{kind="rapid_reset"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"streamhub_auth_refused_total{reason="expired"}"#),
            Some(3.0)
        );
        assert_eq!(
            value(
                &text,
                r#"streamhub_rate_limited_total{reason="publish_rate"}"#
            ),
            Some(4.0)
        );
        assert_eq!(
            value(&text, "process_resident_memory_bytes"),
            Some(8388608.0)
        );
        assert_eq!(value(&text, "process_cpu_seconds_total"), Some(1.5));
        assert_eq!(value(&text, "streamhub_http_connections"), Some(2.0));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\nw")]), r#"{a="x\"y\\z\nw"}"#);
    }
}
