//! Routing as a pure function: a [`Request`] becomes an [`Action`], with
//! every parameter checked here so that the code that runs the action has
//! nothing left to reject. Also CORS, and the mapping from [`Error`] to a
//! status.
//!
//! | path              | methods        | action                         |
//! |-------------------|----------------|--------------------------------|
//! | `/events`         | GET, HEAD      | an SSE stream of one room      |
//! | `/messages`       | POST           | publish one message            |
//! | `/metrics/events` | GET, HEAD      | StreamMetrics as SSE           |
//! | `/metrics`        | GET, HEAD      | Prometheus text                |
//! | `/healthz`        | GET, HEAD      | `{"status":"ok"}`              |
//!
//! `OPTIONS` on any of them answers 204 with `Allow` (and the CORS preflight
//! headers when `--cors-origin` is set).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::request::Request;
use super::response::Response;
use super::sse::{self, TypeFilter};
use crate::error::Error;
use crate::hub::{check_user, normalize_room, Draft, Message, MessageKind, DEFAULT_ROOM};
use crate::metrics::{bad_interval, stream_interval};

/// What a request asks for, parameters validated.
#[derive(Debug)]
pub enum Action {
    /// Answer now with this.
    Respond(Response),
    /// Publish a chat message (`POST /messages`).
    Publish(Draft),
    /// Open an SSE stream of a room (`GET /events`).
    Events(EventsParams),
    /// Open an SSE stream of measurements (`GET /metrics/events`).
    MetricsEvents(MetricsParams),
    /// The Prometheus exposition (`GET /metrics`).
    Prometheus,
    /// `GET /healthz`.
    Health,
}

#[derive(Debug, PartialEq, Eq)]
pub struct EventsParams {
    /// A valid room name ("" already mapped to the default room).
    pub room: String,
    /// Resume after this sequence number.
    pub after_seq: Option<u64>,
    pub types: TypeFilter,
    /// Announce JOIN/LEAVE for this user; empty: no announcements.
    pub user: String,
    /// When the client's token expires: the stream ends then. Set by the
    /// gate, not by routing.
    pub expires: Option<SystemTime>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct MetricsParams {
    pub instance: String,
    pub interval: Duration,
}

const ROUTES: &[(&str, &[&str])] = &[
    ("/events", &["GET", "HEAD"]),
    ("/messages", &["POST"]),
    ("/metrics/events", &["GET", "HEAD"]),
    ("/metrics", &["GET", "HEAD"]),
    ("/healthz", &["GET", "HEAD"]),
];

/// Headers a browser may send on a cross-origin request to streamhub.
const CORS_ALLOW_HEADERS: &str = "Content-Type, Last-Event-ID, Cache-Control, Authorization";

/// The methods `path` answers to, or `None` for an unknown path.
fn methods(path: &str) -> Option<&'static [&'static str]> {
    ROUTES.iter().find(|(p, _)| *p == path).map(|(_, m)| *m)
}

/// The `Allow` value of a path: its methods and OPTIONS.
fn allow(methods: &[&str]) -> String {
    let mut list = methods.to_vec();
    list.push("OPTIONS");
    list.join(", ")
}

/// Decides what `req` asks for.
pub fn route(req: &Request) -> Action {
    let Some(methods) = methods(&req.path) else {
        if req.path == "*" && req.method == "OPTIONS" {
            return Action::Respond(Response::new(204).header("Allow", "GET, HEAD, POST, OPTIONS"));
        }
        let shown: String = req.path.chars().take(200).collect();
        return Action::Respond(Response::error(404, &format!("no such path: {shown}")));
    };
    if req.method == "OPTIONS" {
        return Action::Respond(Response::new(204).header("Allow", allow(methods)));
    }
    if !methods.contains(&req.method.as_str()) {
        let shown: String = req.method.chars().take(20).collect();
        return Action::Respond(
            Response::error(
                405,
                &format!("method {shown} is not allowed on {}", req.path),
            )
            .header("Allow", allow(methods)),
        );
    }
    let action = match req.path.as_str() {
        "/events" => events_params(req).map(Action::Events),
        "/messages" => parse_publish(&req.body).map(Action::Publish),
        "/metrics/events" => metrics_params(req).map(Action::MetricsEvents),
        "/metrics" => Ok(Action::Prometheus),
        _ => Ok(Action::Health),
    };
    match action {
        // HEAD of a stream: the head it would have, without opening it.
        Ok(Action::Events(_) | Action::MetricsEvents(_)) if req.is_head() => {
            Action::Respond(Response::event_stream())
        }
        Ok(action) => action,
        Err(message) => Action::Respond(Response::error(400, &message)),
    }
}

fn events_params(req: &Request) -> Result<EventsParams, String> {
    let room = normalize_room(req.query("room").unwrap_or(DEFAULT_ROOM))
        .map_err(|e| format!("room: {e}"))?
        .to_string();
    // The header is what a reconnecting EventSource sends; it wins over the
    // query, which is how a page opens a stream at a known position.
    let after_seq = req
        .header("last-event-id")
        .or_else(|| req.query("last_event_id"))
        .map(sse::parse_last_event_id)
        .transpose()?;
    let types = req
        .query("types")
        .map(TypeFilter::parse)
        .transpose()?
        .unwrap_or_default();
    let user = req.query("user").unwrap_or_default().to_string();
    check_user(&user).map_err(|e| e.to_string())?;
    Ok(EventsParams {
        room,
        after_seq,
        types,
        user,
        expires: None,
    })
}

fn metrics_params(req: &Request) -> Result<MetricsParams, String> {
    let interval = match req.query("interval_seconds") {
        None => Duration::from_secs(1),
        Some(text) => {
            let seconds = text.trim().parse::<i64>().map_err(|_| {
                let shown: String = text.chars().take(20).collect();
                bad_interval(format!("'{shown}'")).to_string()
            })?;
            stream_interval(seconds).map_err(|e| e.to_string())?
        }
    };
    Ok(MetricsParams {
        instance: req.query("instance").unwrap_or_default().to_string(),
        interval,
    })
}

/// Reads `{"room","user","content"}`. Every field must be a string; `room`
/// and `content` must be present, `user` may be left out when a token
/// names the user (without one the hub then refuses the empty name). The
/// hub validates the values exactly as for gRPC.
pub fn parse_publish(body: &[u8]) -> Result<Draft, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "body must be a JSON object with room, user and content".to_string())?;
    let field = |name: &str, default: Option<&str>| -> Result<String, String> {
        match (object.get(name), default) {
            (None, Some(default)) => Ok(default.to_string()),
            (None, None) => Err(format!("missing field '{name}'")),
            (Some(serde_json::Value::String(s)), _) => Ok(s.clone()),
            (Some(_), _) => Err(format!("field '{name}' must be a string")),
        }
    };
    Ok(Draft {
        room: field("room", None)?,
        user: field("user", Some(""))?,
        content: field("content", None)?,
        kind: MessageKind::Chat,
    })
}

/// The HTTP status of an error from the hub.
pub fn status_of(e: &Error) -> u16 {
    match e {
        Error::InvalidArgument(_) => 400,
        Error::TooLarge(_) => 413,
        Error::StorageFull(_) => 507,
        Error::ResourceExhausted(_) | Error::Unavailable(_) => 503,
        _ => 500,
    }
}

/// An error from the hub as a JSON response (503s say when to retry).
pub fn error_response(e: &Error) -> Response {
    match status_of(e) {
        503 => Response::unavailable(&e.to_string(), 1),
        status => Response::error(status, &e.to_string()),
    }
}

/// The answer to `POST /messages`.
pub fn publish_response(result: Result<Arc<Message>, Error>) -> Response {
    match result {
        Ok(m) => Response::json(
            200,
            &serde_json::json!({
                "message_id": m.id,
                "seq": m.seq,
                "timestamp": sse::rfc3339(m.timestamp),
            }),
        ),
        Err(e) => error_response(&e),
    }
}

/// The CORS headers for a response to `req`, given the configured origins
/// (empty: CORS is off and nothing is added).
pub fn cors_headers(req: &Request, origins: &[String]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if origins.is_empty() {
        return out;
    }
    let any = origins.iter().any(|o| o == "*");
    if !any {
        // The answer depends on the Origin header: caches must know.
        out.push(("Vary", "Origin".to_string()));
    }
    let Some(origin) = req.header("origin") else {
        return out;
    };
    if any {
        out.push(("Access-Control-Allow-Origin", "*".to_string()));
    } else if origins.iter().any(|o| o == origin) {
        out.push(("Access-Control-Allow-Origin", origin.to_string()));
        // A named origin may send its cookie (the token of an EventSource
        // made with `withCredentials`); `*` never may (Fetch standard).
        out.push(("Access-Control-Allow-Credentials", "true".to_string()));
    } else {
        return out;
    }
    if req.method == "OPTIONS" && req.header("access-control-request-method").is_some() {
        if let Some(methods) = methods(&req.path) {
            out.push(("Access-Control-Allow-Methods", allow(methods)));
            out.push((
                "Access-Control-Allow-Headers",
                CORS_ALLOW_HEADERS.to_string(),
            ));
            out.push(("Access-Control-Max-Age", "600".to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_head;

    fn req(text: &str) -> Request {
        parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    fn get(target: &str) -> Request {
        req(&format!("GET {target} HTTP/1.1\r\n\r\n"))
    }

    fn status(action: &Action) -> u16 {
        match action {
            Action::Respond(r) => r.status,
            _ => 0,
        }
    }

    fn header<'a>(action: &'a Action, name: &str) -> Option<&'a str> {
        match action {
            Action::Respond(r) => r
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    #[test]
    fn events_defaults_and_parameters() {
        let Action::Events(p) = route(&get("/events")) else {
            panic!("not events")
        };
        assert_eq!(
            p,
            EventsParams {
                room: "default".into(),
                after_seq: None,
                types: TypeFilter::default(),
                user: String::new(),
                expires: None,
            }
        );
        let Action::Events(p) = route(&get(
            "/events?room=lobby&types=chat&user=ann&last_event_id=5",
        )) else {
            panic!("not events")
        };
        assert_eq!(
            (p.room.as_str(), p.after_seq, p.user.as_str()),
            ("lobby", Some(5), "ann")
        );
        assert!(!p.types.passes(MessageKind::Join));
    }

    #[test]
    fn last_event_id_header_beats_the_query() {
        let r = req("GET /events?last_event_id=5 HTTP/1.1\r\nLast-Event-ID: 9\r\n\r\n");
        let Action::Events(p) = route(&r) else {
            panic!()
        };
        assert_eq!(p.after_seq, Some(9));
    }

    #[test]
    fn bad_event_parameters_are_400() {
        for target in [
            "/events?room=bad%20room",
            "/events?types=chat,nope",
            "/events?last_event_id=abc",
            &format!("/events?user={}", "u".repeat(300)),
            "/metrics/events?interval_seconds=-1",
            "/metrics/events?interval_seconds=3601",
        ] {
            assert_eq!(status(&route(&get(target))), 400, "{target}");
        }
    }

    #[test]
    fn head_of_a_stream_is_its_head_only() {
        let action = route(&req("HEAD /events?room=x HTTP/1.1\r\n\r\n"));
        let Action::Respond(r) = action else { panic!() };
        assert!(r.streaming);
        assert_eq!(r.status, 200);
        assert!(matches!(
            route(&req("HEAD /healthz HTTP/1.1\r\n\r\n")),
            Action::Health
        ));
        assert!(matches!(
            route(&req("HEAD /metrics HTTP/1.1\r\n\r\n")),
            Action::Prometheus
        ));
    }

    #[test]
    fn metrics_stream_parameters() {
        let Action::MetricsEvents(p) = route(&get("/metrics/events?instance=a&interval_seconds=0"))
        else {
            panic!()
        };
        assert_eq!(
            p,
            MetricsParams {
                instance: "a".into(),
                interval: Duration::from_secs(1)
            }
        );
        let Action::MetricsEvents(p) = route(&get("/metrics/events?interval_seconds=5")) else {
            panic!()
        };
        assert_eq!(p.interval, Duration::from_secs(5));
    }

    #[test]
    fn unknown_path_404_wrong_method_405_with_allow() {
        let a = route(&get("/nope"));
        assert_eq!(status(&a), 404);
        let a = route(&req("DELETE /events HTTP/1.1\r\n\r\n"));
        assert_eq!(status(&a), 405);
        assert_eq!(header(&a, "Allow"), Some("GET, HEAD, OPTIONS"));
        let a = route(&get("/messages"));
        assert_eq!(status(&a), 405);
        assert_eq!(header(&a, "Allow"), Some("POST, OPTIONS"));
        assert_eq!(status(&route(&get("/events/"))), 404);
    }

    #[test]
    fn options_answers_204_with_allow() {
        let a = route(&req("OPTIONS /messages HTTP/1.1\r\n\r\n"));
        assert_eq!(status(&a), 204);
        assert_eq!(header(&a, "Allow"), Some("POST, OPTIONS"));
    }

    #[test]
    fn publish_body_parsing() {
        let draft = parse_publish(br#"{"room":"r","user":"u","content":"hi","extra":1}"#).unwrap();
        assert_eq!(
            (
                draft.room.as_str(),
                draft.user.as_str(),
                draft.content.as_str()
            ),
            ("r", "u", "hi")
        );
        assert!(parse_publish(b"{").unwrap_err().contains("not valid JSON"));
        assert!(parse_publish(b"[1]").unwrap_err().contains("JSON object"));
        assert_eq!(
            parse_publish(br#"{"room":"r","user":"u"}"#).unwrap_err(),
            "missing field 'content'"
        );
        assert_eq!(
            parse_publish(br#"{"room":"r","user":7,"content":"x"}"#).unwrap_err(),
            "field 'user' must be a string"
        );
        let r = req("POST /messages HTTP/1.1\r\n\r\n");
        assert_eq!(status(&route(&r)), 400);
    }

    #[test]
    fn hub_errors_map_to_statuses() {
        assert_eq!(status_of(&Error::InvalidArgument("x".into())), 400);
        assert_eq!(status_of(&Error::TooLarge("x".into())), 413);
        assert_eq!(status_of(&Error::ResourceExhausted("x".into())), 503);
        let r = error_response(&Error::Unavailable("stopping".into()));
        assert!(r.headers.iter().any(|(n, _)| *n == "Retry-After"));
    }

    #[test]
    fn cors_off_adds_nothing() {
        let r = req("GET /events HTTP/1.1\r\nOrigin: http://a\r\n\r\n");
        assert!(cors_headers(&r, &[]).is_empty());
    }

    #[test]
    fn cors_allows_listed_origins_and_answers_preflight() {
        let origins = vec!["http://a.example".to_string()];
        let r = req("GET /events HTTP/1.1\r\nOrigin: http://a.example\r\n\r\n");
        let h = cors_headers(&r, &origins);
        assert!(h.contains(&("Access-Control-Allow-Origin", "http://a.example".into())));
        assert!(h.contains(&("Vary", "Origin".into())));
        let r = req("GET /events HTTP/1.1\r\nOrigin: http://evil.example\r\n\r\n");
        let h = cors_headers(&r, &origins);
        assert!(!h.iter().any(|(n, _)| *n == "Access-Control-Allow-Origin"));
        let r = req(
            "OPTIONS /messages HTTP/1.1\r\nOrigin: http://a.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
        );
        let h = cors_headers(&r, &origins);
        assert!(h.contains(&("Access-Control-Allow-Methods", "POST, OPTIONS".into())));
        assert!(h
            .iter()
            .any(|(n, v)| *n == "Access-Control-Allow-Headers" && v.contains("Content-Type")));
    }

    #[test]
    fn cors_wildcard() {
        let origins = vec!["*".to_string()];
        let r = req("GET /healthz HTTP/1.1\r\nOrigin: http://x\r\n\r\n");
        assert_eq!(
            cors_headers(&r, &origins),
            vec![("Access-Control-Allow-Origin", "*".into())]
        );
    }
}

/// Properties of the pure functions, over generated input.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::parse_publish;
    use crate::hub::{normalize_room, Draft, Hub, HubConfig, MAX_ROOM_NAME, MAX_USER_NAME};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::http::property_cases()))]

        #[test]
        fn validation_accepts_exactly_the_valid_drafts(
            room in prop_oneof!["[A-Za-z0-9._-]{0,70}", ".{0,10}"],
            user in prop_oneof![".{0,10}", "u{250,260}"],
            content_len in 0usize..80,
        ) {
            let hub = Hub::new(HubConfig { max_content_bytes: 64, ..HubConfig::default() });
            let content = "c".repeat(content_len);
            let draft = Draft::chat(&room, &user, &content);
            let room_ok = room.is_empty()
                || (room.len() <= MAX_ROOM_NAME
                    && room.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            prop_assert_eq!(normalize_room(&room).is_ok(), room_ok);
            let valid = room_ok
                && !user.is_empty()
                && user.len() <= MAX_USER_NAME
                && content_len > 0
                && content_len <= 64;
            prop_assert_eq!(hub.validate(&draft).is_ok(), valid);
            // POST /messages reads the same fields back from any JSON strings.
            let body = serde_json::json!({"room": room, "user": user, "content": content});
            let parsed = parse_publish(body.to_string().as_bytes()).unwrap();
            prop_assert_eq!((parsed.room, parsed.user, parsed.content), (room, user, content));
        }
    }
}
