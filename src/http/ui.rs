//! The built-in page at `/` (`--ui on`, the default): a room's messages
//! live, who is here, a box to send, and the server's telemetry. Its three
//! files are embedded at build time (`src/http/ui/`), so the page works
//! offline on a LAN with no CDN; together they are about 16 KiB of plain
//! HTML, CSS and JS, no library. The page talks to the server only through
//! its public doors: `GET /events` and `/metrics/events` (EventSource) and
//! gRPC-Web `SendMessage`.

use super::request::Request;
use super::response::Response;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The page's file at `path`, if it is one (GET or HEAD).
pub fn asset(req: &Request) -> Option<Response> {
    if req.method != "GET" && req.method != "HEAD" {
        return None;
    }
    let (body, content_type) = match req.path.as_str() {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(
        Response::new(200)
            .header("Content-Type", content_type)
            // Small, and a new binary may bring a new page: revalidate.
            .header("Cache-Control", "no-cache")
            .header("X-Content-Type-Options", "nosniff")
            .body(body.as_bytes().to_vec()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_head;

    fn get(target: &str) -> Option<Response> {
        let text = format!("GET {target} HTTP/1.1\r\n\r\n");
        asset(&parse_head(text.as_bytes()).unwrap().unwrap().0)
    }

    #[test]
    fn the_page_and_its_files_are_served_with_their_types() {
        let page = get("/").unwrap();
        assert_eq!(page.status, 200);
        assert!(String::from_utf8(page.body).unwrap().contains("/ui/app.js"));
        let script = get("/ui/app.js").unwrap();
        assert!(script
            .headers
            .contains(&("Content-Type", "text/javascript; charset=utf-8".into())));
        assert!(get("/ui/style.css").is_some());
        assert!(get("/ui/nope.js").is_none());
        assert!(get("/events").is_none());
    }

    #[test]
    fn the_page_stays_small() {
        // Plain JS and CSS: anything much larger needs a reason.
        let total = INDEX.len() + SCRIPT.len() + STYLE.len();
        assert!(total < 32 * 1024, "{total} bytes");
    }
}
