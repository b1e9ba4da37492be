//! Response values and their bytes on the wire.
//!
//! A handler returns a [`Response`]; the connection code turns it into
//! bytes with [`Response::to_bytes`], which adds `Content-Length` and
//! `Connection` and leaves the body out for `HEAD`. Errors are JSON objects
//! `{"error": "..."}` everywhere.

/// An HTTP response before serialization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// The body is a stream that runs until the connection closes (SSE): no
    /// `Content-Length`, and the connection is not reused.
    pub streaming: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            streaming: false,
        }
    }

    /// A JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// A 503 telling the client when to come back.
    pub fn unavailable(message: &str, retry_after_secs: u64) -> Response {
        Response::error(503, message).header("Retry-After", retry_after_secs.to_string())
    }

    /// The head of a Server-Sent Events stream.
    pub fn event_stream() -> Response {
        Response {
            streaming: true,
            ..Response::new(200)
        }
        .header("Content-Type", "text/event-stream")
        .header("Cache-Control", "no-cache")
        .header("X-Accel-Buffering", "no")
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }

    /// The status line and headers. `close` adds `Connection: close`.
    pub fn head_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            // Values are ours, but a stray CR or LF would split the head.
            out.extend(value.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
        if !self.streaming {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if close || self.streaming {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The whole response; without the body when answering `HEAD`.
    pub fn to_bytes(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut out = self.head_bytes(close);
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrase of every status streamhub sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_with_length_and_keep_alive() {
        let bytes = Response::error(404, "no such path: /x").to_bytes(false, false);
        let text = String::from_utf8(bytes).unwrap();
        let body = "{\"error\":\"no such path: /x\"}\n";
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let r = Response::new(200).body(b"hello".to_vec());
        let text = String::from_utf8(r.to_bytes(true, true)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn event_stream_has_no_length_and_closes() {
        let text = String::from_utf8(Response::event_stream().head_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/event-stream\r\n"));
        assert!(text.contains("Cache-Control: no-cache\r\n"));
        assert!(text.contains("X-Accel-Buffering: no\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(!text.contains("Content-Length"));
    }

    #[test]
    fn header_values_cannot_split_the_head() {
        let r = Response::new(200).header("X", "a\r\nInjected: yes");
        let text = String::from_utf8(r.head_bytes(false)).unwrap();
        assert!(text.contains("X: aInjected: yes\r\n"));
        assert!(!text.contains("\r\nInjected"));
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let r = Response::unavailable("too many", 2);
        assert_eq!(r.status, 503);
        assert!(r.headers.contains(&("Retry-After", "2".to_string())));
    }
}
