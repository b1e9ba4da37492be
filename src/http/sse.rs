//! Server-Sent Events framing as pure functions: events, comments, the
//! `retry` field, the JSON of a room message, RFC 3339 timestamps, and the
//! parsing of what a client sends to resume or filter a stream.
//!
//! The one rule every function here keeps: a value can never break the
//! framing. CR and LF in `data` become separate `data:` lines (which a
//! client joins back with LF, as the WHATWG parser specifies); in `id`,
//! `event` and comments they are dropped, since those fields cannot carry
//! them. Room messages go out as one line of JSON, where serde_json escapes
//! every control character, so a message is always exactly one `data:` line.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::hub::{Message, MessageKind};

/// One event. `id: None` leaves the client's last event id as it was.
#[derive(Clone, Copy, Debug, Default)]
pub struct Event<'a> {
    pub id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub data: &'a str,
}

/// Appends `event` to `out`, ending with the blank line that dispatches it.
pub fn write_event(out: &mut Vec<u8>, event: &Event) {
    if let Some(id) = event.id {
        out.extend_from_slice(b"id: ");
        // NUL makes a client ignore the id field entirely; CR/LF end it.
        push_single_line(out, id, |c| c == '\0');
        out.push(b'\n');
    }
    if let Some(name) = event.event {
        out.extend_from_slice(b"event: ");
        push_single_line(out, name, |_| false);
        out.push(b'\n');
    }
    for line in split_lines(event.data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends a comment (ignored by clients; keeps the connection warm). Each
/// line of `text` becomes its own comment line.
pub fn write_comment(out: &mut Vec<u8>, text: &str) {
    for line in split_lines(text) {
        out.push(b':');
        if !line.is_empty() {
            out.push(b' ');
            out.extend_from_slice(line.as_bytes());
        }
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends the reconnection delay a client should use.
pub fn write_retry(out: &mut Vec<u8>, millis: u64) {
    out.extend_from_slice(format!("retry: {millis}\n\n").as_bytes());
}

fn push_single_line(out: &mut Vec<u8>, value: &str, also_drop: impl Fn(char) -> bool) {
    for c in value.chars() {
        if c != '\r' && c != '\n' && !also_drop(c) {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// Splits on CRLF, CR and LF, the line ends of the event stream format.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    loop {
        match rest.find(['\r', '\n']) {
            None => {
                lines.push(rest);
                return lines;
            }
            Some(i) => {
                lines.push(&rest[..i]);
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// The JSON of a room message: one line with id, seq, user, content, room,
/// timestamp and type.
pub fn message_json(m: &Message) -> String {
    serde_json::json!({
        "id": m.id,
        "seq": m.seq,
        "user": m.user,
        "content": m.content,
        "room": &*m.room,
        "timestamp": rfc3339(m.timestamp),
        "type": m.kind.as_str(),
    })
    .to_string()
}

/// A room message as a whole event: `id: <seq>`, `event: <type>`, `data:
/// <json>`. Made once per message and shared by every SSE subscriber
/// through [`Message::encoded`].
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + m.content.len());
    let seq = m.seq.to_string();
    write_event(
        &mut out,
        &Event {
            id: Some(&seq),
            event: Some(m.kind.as_str()),
            data: &message_json(m),
        },
    );
    out
}

/// A `system` event from the server itself (not a room message): it has
/// no `id`, so the client's resume position stays on the last real message.
pub fn system_notice(room: &str, content: &str, extra: Option<(&str, u64)>) -> Vec<u8> {
    let mut data = serde_json::json!({
        "id": "",
        "seq": 0,
        "user": "System",
        "content": content,
        "room": room,
        "timestamp": rfc3339(SystemTime::now()),
        "type": "system",
    });
    if let Some((key, value)) = extra {
        data[key] = value.into();
    }
    let mut out = Vec::new();
    write_event(
        &mut out,
        &Event {
            id: None,
            event: Some("system"),
            data: &data.to_string(),
        },
    );
    out
}

/// `2024-05-01T12:34:56.789Z`: RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, exact for every day a `SystemTime` can hold).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The sequence number a resuming client gives in `Last-Event-ID` or
/// `last_event_id`.
pub fn parse_last_event_id(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "last event id must be a message sequence number, got '{}'",
            text.chars().take(40).collect::<String>()
        ));
    }
    text.parse()
        .map_err(|_| "last event id is too large".to_string())
}

/// Which message types a stream passes (`?types=chat,system`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeFilter([bool; 4]);

impl Default for TypeFilter {
    fn default() -> Self {
        TypeFilter([true; 4])
    }
}

impl TypeFilter {
    /// Parses a comma-separated list of type names.
    pub fn parse(list: &str) -> Result<TypeFilter, String> {
        let mut filter = TypeFilter([false; 4]);
        let mut any = false;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let kind = MessageKind::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
                format!("unknown type '{name}' in types (expected chat, join, leave or system)")
            })?;
            filter.0[index(kind)] = true;
            any = true;
        }
        if !any {
            return Err("types names no type (expected chat, join, leave or system)".into());
        }
        Ok(filter)
    }

    pub fn passes(&self, kind: MessageKind) -> bool {
        self.0[index(kind)]
    }
}

fn index(kind: MessageKind) -> usize {
    match kind {
        MessageKind::Chat => 0,
        MessageKind::Join => 1,
        MessageKind::Leave => 2,
        MessageKind::System => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An event as a client sees it: id, event name, data.
    type Parsed = (Option<String>, String, String);

    /// The WHATWG event stream parser, reduced to what the tests need:
    /// returns (id, event, data) per dispatched event and the comments.
    fn parse(stream: &str) -> (Vec<Parsed>, Vec<String>) {
        let mut events = Vec::new();
        let mut comments = Vec::new();
        let (mut id, mut name, mut data) = (None, String::new(), String::new());
        let mut has_data = false;
        for line in split_lines(stream) {
            if line.is_empty() {
                if has_data {
                    events.push((id.clone(), std::mem::take(&mut name), data.clone()));
                }
                data.clear();
                has_data = false;
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                comments.push(c.trim_start().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_string()),
                "event" => name = value.to_string(),
                "data" => {
                    if has_data {
                        data.push('\n');
                    }
                    data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        (events, comments)
    }

    fn message(content: &str, user: &str, kind: MessageKind) -> std::sync::Arc<Message> {
        let hub = crate::hub::Hub::new(Default::default());
        let draft = crate::hub::Draft {
            room: "r".into(),
            user: user.into(),
            content: content.into(),
            kind,
        };
        hub.publish(draft).unwrap()
    }

    #[test]
    fn event_fields_and_blank_line() {
        let mut out = Vec::new();
        write_event(
            &mut out,
            &Event {
                id: Some("7"),
                event: Some("chat"),
                data: "{}",
            },
        );
        assert_eq!(out, b"id: 7\nevent: chat\ndata: {}\n\n");
    }

    #[test]
    fn multi_line_data_becomes_data_lines_and_round_trips() {
        let mut out = Vec::new();
        let data = "one\ntwo\r\nthree\rfour";
        write_event(
            &mut out,
            &Event {
                data,
                ..Event::default()
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "data: one\ndata: two\ndata: three\ndata: four\n\n");
        let (events, _) = parse(&text);
        assert_eq!(events[0].2, "one\ntwo\nthree\nfour");
    }

    #[test]
    fn hostile_id_event_and_comment_cannot_inject_fields() {
        let mut out = Vec::new();
        write_event(
            &mut out,
            &Event {
                id: Some("1\n\ndata: evil\0"),
                event: Some("chat\r\nid: 99"),
                data: "ok",
            },
        );
        write_comment(&mut out, "note\n\ndata: evil");
        let text = String::from_utf8(out).unwrap();
        let (events, comments) = parse(&text);
        assert_eq!(events.len(), 1, "{text:?}");
        assert_eq!(
            events[0],
            (Some("1data: evil".into()), "chatid: 99".into(), "ok".into())
        );
        assert_eq!(comments, vec!["note", "", "data: evil"]);
    }

    #[test]
    fn comment_and_retry_shapes() {
        let mut out = Vec::new();
        write_comment(&mut out, "connected");
        write_retry(&mut out, 3000);
        assert_eq!(out, b": connected\n\nretry: 3000\n\n");
    }

    #[test]
    fn message_is_one_data_line_of_json_whatever_its_content() {
        let hostile = "line1\nline2\r\n\r\ndata: injected\n\nid: 999\r:comment\u{2028}\0end";
        let m = message(hostile, "eve\nil", MessageKind::Chat);
        let bytes = encode_message(&m);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.matches('\n').count(), 4, "{text:?}");
        assert!(!text.contains('\r'));
        let (events, _) = parse(&text);
        assert_eq!(events.len(), 1);
        let (id, name, data) = &events[0];
        assert_eq!(id.as_deref(), Some("1"));
        assert_eq!(name, "chat");
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(json["content"], hostile);
        assert_eq!(json["user"], "eve\nil");
        assert_eq!(json["seq"], 1);
        assert_eq!(json["room"], "r");
        assert_eq!(json["type"], "chat");
        assert!(json["id"].as_str().unwrap().starts_with("msg_"));
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn event_name_follows_the_message_type() {
        for kind in [MessageKind::Join, MessageKind::Leave, MessageKind::System] {
            let text = String::from_utf8(encode_message(&message("x", "u", kind))).unwrap();
            assert!(
                text.contains(&format!("\nevent: {}\n", kind.as_str())),
                "{text}"
            );
        }
    }

    #[test]
    fn system_notice_has_no_id_and_carries_extra() {
        let text = String::from_utf8(system_notice("r", "3 missed", Some(("missed", 3)))).unwrap();
        assert!(!text.contains("id: "), "{text}");
        let (events, _) = parse(&text);
        assert_eq!(events[0].0, None);
        assert_eq!(events[0].1, "system");
        let json: serde_json::Value = serde_json::from_str(&events[0].2).unwrap();
        assert_eq!(json["missed"], 3);
        assert_eq!(json["type"], "system");
    }

    #[test]
    fn rfc3339_known_instants() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn rfc3339_agrees_with_day_counting_for_every_day_of_four_centuries() {
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(400 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d));
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[m as usize - 1] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn last_event_id_parsing() {
        assert_eq!(parse_last_event_id("42"), Ok(42));
        assert_eq!(parse_last_event_id(" 7 "), Ok(7));
        assert!(parse_last_event_id("").is_err());
        assert!(parse_last_event_id("-1").is_err());
        assert!(parse_last_event_id("msg_4").is_err());
        assert!(parse_last_event_id("99999999999999999999999").is_err());
    }

    #[test]
    fn type_filter_parsing() {
        let f = TypeFilter::parse("chat, SYSTEM").unwrap();
        assert!(f.passes(MessageKind::Chat) && f.passes(MessageKind::System));
        assert!(!f.passes(MessageKind::Join) && !f.passes(MessageKind::Leave));
        assert!(TypeFilter::default().passes(MessageKind::Leave));
        assert!(TypeFilter::parse("chat,bogus")
            .unwrap_err()
            .contains("bogus"));
        assert!(TypeFilter::parse(" , ").is_err());
    }
}

/// Properties of the pure functions, over generated input.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use streamhub_tools::sse::EventParser;

    use super::{encode_message, parse_last_event_id, write_event, Event};
    use crate::hub::{Draft, Hub, HubConfig};

    /// What an event-stream client makes of a stream, split into reads at
    /// `cuts`: (last event id, type, data) per event.
    fn parse(stream: &[u8], cuts: &[usize]) -> Vec<(String, String, String)> {
        let mut parser = EventParser::new();
        let mut events = Vec::new();
        let mut from = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        bounds.sort();
        bounds.push(stream.len());
        for to in bounds {
            parser.feed(&stream[from..to.max(from)], |e| {
                let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                events.push((s(e.id), s(e.event), s(e.data)));
            });
            from = to.max(from);
        }
        events
    }

    /// Text with plenty of what framing must survive: CR, LF, colons,
    /// NULs, spaces and non-ASCII.
    fn tricky() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\r'),
                Just('\n'),
                Just(':'),
                Just(' '),
                Just('\0'),
                Just('\u{feff}'),
                any::<char>(),
                proptest::char::range('a', 'z'),
            ],
            0..40,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn without_line_ends(text: &str, also_nul: bool) -> String {
        text.chars()
            .filter(|c| *c != '\r' && *c != '\n' && !(also_nul && *c == '\0'))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::http::property_cases()))]

        #[test]
        fn any_event_survives_framing_and_whatwg_parsing(
            events in proptest::collection::vec((tricky(), tricky(), tricky()), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut stream = Vec::new();
            for (id, name, data) in &events {
                write_event(&mut stream, &Event { id: Some(id), event: Some(name), data });
            }
            let parsed = parse(&stream, &cuts);
            prop_assert_eq!(parsed.len(), events.len());
            for ((id, name, data), (got_id, got_name, got_data)) in events.iter().zip(&parsed) {
                let name = without_line_ends(name, false);
                prop_assert_eq!(got_id, &without_line_ends(id, true));
                prop_assert_eq!(got_name, if name.is_empty() { "message" } else { &name });
                prop_assert_eq!(got_data, &data.replace("\r\n", "\n").replace('\r', "\n"));
            }
        }

        #[test]
        fn any_message_is_one_event_whose_json_gives_it_back(
            content in tricky().prop_filter("content is required", |c| !c.is_empty()),
            user in tricky().prop_filter("user is required", |u| !u.is_empty()),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let hub = Hub::new(HubConfig::default());
            let m = hub.publish(Draft::chat("r", &user, &content)).unwrap();
            let parsed = parse(&encode_message(&m), &cuts);
            prop_assert_eq!(parsed.len(), 1);
            let (id, name, data) = &parsed[0];
            prop_assert_eq!(id, &m.seq.to_string());
            prop_assert_eq!(name, "chat");
            let json: serde_json::Value = serde_json::from_str(data).unwrap();
            prop_assert_eq!(json["content"].as_str(), Some(content.as_str()));
            prop_assert_eq!(json["user"].as_str(), Some(user.as_str()));
            prop_assert_eq!(json["seq"].as_u64(), Some(m.seq));
        }

        #[test]
        fn last_event_id_accepts_exactly_padded_decimal_u64(
            n in any::<u64>(),
            pad in "[ \t]{0,3}",
            text in ".{0,24}",
        ) {
            prop_assert_eq!(parse_last_event_id(&format!("{pad}{n}{pad}")), Ok(n));
            let trimmed = text.trim();
            let expected = (!trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()))
                .then(|| trimmed.parse::<u64>().ok())
                .flatten();
            prop_assert_eq!(parse_last_event_id(&text).ok(), expected);
        }
    }
}
