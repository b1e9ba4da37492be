//! The HTTP side of the gate ([`crate::access`]): where a request's token
//! is (`Authorization: Bearer`, then the `--auth-cookie` cookie, then the
//! `access_token` query parameter, which is what an `EventSource` can send)
//! and what a refusal looks like: 401 with `WWW-Authenticate: Bearer`
//! (RFC 6750), 403, or 429 with `Retry-After`, each with a JSON `error`.
//! Pure: tested without sockets.

use super::request::Request;
use super::response::Response;
use crate::access::Refusal;
use crate::auth::{bearer_token, Denied, Unauthenticated};
use crate::rate::retry_after_secs;

/// The token `req` carries, if any. An `Authorization` header of another
/// scheme is an error rather than no token: the client meant to
/// authenticate, and silently serving it as anonymous would hide why it
/// is refused.
pub fn token_of<'r>(req: &'r Request, cookie: Option<&str>) -> Result<Option<&'r str>, Denied> {
    if let Some(header) = req.header("authorization") {
        return bearer_token(header)
            .map(Some)
            .ok_or(Denied::Unauthenticated(Unauthenticated::Malformed(
                "Authorization is not a Bearer token",
            )));
    }
    if let Some(token) = cookie.and_then(|name| cookie_value(req, name)) {
        return Ok(Some(token));
    }
    Ok(req.query("access_token").filter(|t| !t.is_empty()))
}

/// The value of the cookie called `name` (RFC 6265: `a=b; c=d`, in any of
/// the request's `Cookie` headers).
fn cookie_value<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// A refusal as the response that says it.
pub fn refusal_response(refusal: &Refusal) -> Response {
    let message = refusal.to_string();
    match refusal {
        Refusal::Denied(Denied::Unauthenticated(why)) => {
            // Without a token RFC 6750 wants the bare challenge; with a bad
            // one, error="invalid_token" and why.
            let challenge = match why {
                Unauthenticated::Missing => r#"Bearer realm="streamhub""#.to_string(),
                _ => format!(
                    r#"Bearer realm="streamhub", error="invalid_token", error_description="{}""#,
                    message.replace(['"', '\\'], "'")
                ),
            };
            Response::error(401, &message).header("WWW-Authenticate", challenge)
        }
        Refusal::Denied(_) => Response::error(403, &message).header(
            "WWW-Authenticate",
            r#"Bearer realm="streamhub", error="insufficient_scope""#,
        ),
        Refusal::Limited { retry_after, .. } => Response::error(429, &message)
            .header("Retry-After", retry_after_secs(*retry_after).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::access::Limit;
    use crate::auth::Action;
    use crate::http::request::parse_head;

    fn req(head: &str) -> Request {
        parse_head(format!("{head}\r\n\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_header_wins_then_the_cookie_then_the_query() {
        let all = req(
            "GET /events?access_token=q HTTP/1.1\r\nCookie: x=1; sh=c\r\nAuthorization: Bearer h",
        );
        assert_eq!(token_of(&all, Some("sh")), Ok(Some("h")));
        let no_header = req("GET /events?access_token=q HTTP/1.1\r\nCookie: x=1; sh=c");
        assert_eq!(token_of(&no_header, Some("sh")), Ok(Some("c")));
        // The cookie is read only when --auth-cookie names it.
        assert_eq!(token_of(&no_header, None), Ok(Some("q")));
        assert_eq!(token_of(&no_header, Some("other")), Ok(Some("q")));
        assert_eq!(token_of(&req("GET /events HTTP/1.1"), Some("sh")), Ok(None));
        assert_eq!(
            token_of(&req("GET /events?access_token= HTTP/1.1"), None),
            Ok(None)
        );
    }

    #[test]
    fn an_authorization_header_of_another_scheme_is_an_error_not_anonymous() {
        let basic = req("POST /messages HTTP/1.1\r\nAuthorization: Basic YTpi");
        let refused = token_of(&basic, None).unwrap_err();
        assert_eq!(refused.label(), "malformed");
        let empty = req("POST /messages HTTP/1.1\r\nAuthorization: Bearer ");
        assert!(token_of(&empty, None).is_err());
    }

    #[test]
    fn refusals_become_401_403_and_429_with_their_headers() {
        let missing = refusal_response(&Refusal::Denied(Unauthenticated::Missing.into()));
        assert_eq!(missing.status, 401);
        assert_eq!(
            header(&missing, "WWW-Authenticate"),
            Some(r#"Bearer realm="streamhub""#)
        );
        let expired = refusal_response(&Refusal::Denied(Unauthenticated::Expired.into()));
        assert_eq!(
            header(&expired, "WWW-Authenticate"),
            Some(
                r#"Bearer realm="streamhub", error="invalid_token", error_description="token has expired""#
            )
        );
        let body = String::from_utf8(expired.body.clone()).unwrap();
        assert!(body.contains(r#""error":"token has expired""#), "{body}");
        let forbidden = refusal_response(&Refusal::Denied(Denied::Forbidden {
            action: Action::Publish,
            room: "vip".into(),
        }));
        assert_eq!(forbidden.status, 403);
        let limited = refusal_response(&Refusal::Limited {
            limit: Limit::Publish,
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(limited.status, 429);
        assert_eq!(header(&limited, "Retry-After"), Some("2"));
    }
}
