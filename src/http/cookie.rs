//! The token as a cookie, for a page that streams with the browser's own
//! `EventSource`, which cannot send a header: a join sets it, `GET /events`
//! takes it when no token is given otherwise, and a leave clears it. It is
//! `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it), `Secure` over HTTPS, and its `Path` is the room's events route,
//! so no other request carries it. Since `/leave` is not under that path, the
//! join also sets, on the leave route, the token's SHA-256 (which is not the
//! token): a leave clears both when it ends that token, and leaves another
//! person's cookie (another tab of the same browser) alone.

use axum::http::{HeaderMap, HeaderValue, header};
use cookie::{Cookie, SameSite};

use crate::presence::Token;

/// The token, on the room's events route.
const TOKEN: &str = "lobby_token";
/// The token's SHA-256, on the room's leave route.
const TOKEN_KEY: &str = "lobby_token_key";

/// The `Set-Cookie` headers of a join at `join_path` (`…/join`).
pub fn joined(token: &Token, join_path: &str, secure: bool) -> Vec<HeaderValue> {
    let key = token.key().to_hex();
    [
        cookie(
            TOKEN,
            token.expose(),
            sibling(join_path, "events"),
            secure,
            false,
        ),
        cookie(TOKEN_KEY, &key, sibling(join_path, "leave"), secure, false),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The `Set-Cookie` headers of a leave at `leave_path` (`…/leave`) that
/// ended `token`, where the request carried the token key's cookie `sent`
/// (from [`sent_key`]): both cookies cleared if they are that token's, else none.
pub fn left(sent: Option<&str>, token: &Token, leave_path: &str, secure: bool) -> Vec<HeaderValue> {
    if sent.is_none_or(|key| key != token.key().to_hex()) {
        return Vec::new();
    }
    [
        cookie(TOKEN, "", sibling(leave_path, "events"), secure, true),
        cookie(TOKEN_KEY, "", sibling(leave_path, "leave"), secure, true),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The token key's cookie, which a leave request carries (a leave reads it
/// before its body, which takes the request).
pub fn sent_key(headers: &HeaderMap) -> Option<String> {
    sent(headers, TOKEN_KEY)
}

/// The token from the cookie, if the request carries one that is not empty.
pub fn token(headers: &HeaderMap) -> Option<Token> {
    sent(headers, TOKEN)
        .filter(|token| !token.trim().is_empty())
        .map(|token| Token::from_client(&token))
}

/// Whether the request came over HTTPS: lobby's own TLS (`tls`), or behind a
/// trusted proxy (`trust_proxy`) that says so in `X-Forwarded-Proto` (its
/// last entry, the one it wrote).
pub fn over_https(tls: bool, trust_proxy: bool, headers: &HeaderMap) -> bool {
    tls || (trust_proxy
        && headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .next_back()
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")))
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn sent(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

/// One `Set-Cookie` value, or (`cleared`) one that makes the browser forget
/// it at once (`Max-Age=0`); `None` for a value that cannot be a header (a
/// token always can: it is hex, a dot and a room's name).
fn cookie(
    name: &str,
    value: &str,
    path: String,
    secure: bool,
    cleared: bool,
) -> Option<HeaderValue> {
    let mut cookie = Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure);
    if cleared {
        cookie = cookie.max_age(cookie::time::Duration::ZERO);
    }
    let cookie = cookie.build();
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// The route beside `path` in the same room: `/rooms/r/join` → `/rooms/r/events`.
fn sibling(path: &str, route: &str) -> String {
    let room = path.rsplit_once('/').map_or("", |(room, _)| room);
    format!("{room}/{route}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("a header"));
        }
        map
    }

    #[test]
    fn a_join_sets_the_token_on_the_rooms_events_route_only_and_its_key_on_its_leave_route() {
        let token = Token::from_client("abc.doc-42");
        let set: Vec<String> = joined(&token, "/rooms/doc-42/join", true)
            .iter()
            .map(|value| value.to_str().expect("text").to_owned())
            .collect();
        assert_eq!(
            set,
            [
                "lobby_token=abc.doc-42; HttpOnly; SameSite=Strict; Secure; Path=/rooms/doc-42/events".to_owned(),
                format!(
                    "lobby_token_key={}; HttpOnly; SameSite=Strict; Secure; Path=/rooms/doc-42/leave",
                    token.key().to_hex()
                ),
            ]
        );
        let plain = joined(&token, "/join", false);
        assert_eq!(
            plain[0],
            "lobby_token=abc.doc-42; HttpOnly; SameSite=Strict; Path=/events"
        );
    }

    #[test]
    fn a_leave_clears_the_cookies_only_when_they_are_the_token_it_ends() {
        let token = Token::from_client("abc");
        let mine = format!("lobby_token_key={}", token.key().to_hex());
        let sent = sent_key(&headers(&[("cookie", &mine)]));
        let cleared = left(sent.as_deref(), &token, "/leave", false);
        assert_eq!(
            cleared,
            [
                "lobby_token=; HttpOnly; SameSite=Strict; Path=/events; Max-Age=0",
                "lobby_token_key=; HttpOnly; SameSite=Strict; Path=/leave; Max-Age=0",
            ]
        );
        let someone_else = Token::from_client("xyz");
        assert!(left(sent.as_deref(), &someone_else, "/leave", false).is_empty());
        assert!(left(None, &token, "/leave", false).is_empty());
    }

    #[test]
    fn the_token_is_read_from_among_other_cookies_and_an_empty_one_is_none() {
        let sent = headers(&[("cookie", "a=1; lobby_token=abc; b=2")]);
        assert_eq!(
            token(&sent).map(|t| t.expose().to_owned()).as_deref(),
            Some("abc")
        );
        assert!(token(&headers(&[("cookie", "lobby_token=")])).is_none());
        assert!(token(&HeaderMap::new()).is_none());
    }

    #[test]
    fn https_is_lobby_s_own_tls_or_a_trusted_proxy_s_word() {
        let forwarded = headers(&[("x-forwarded-proto", "http, https")]);
        assert!(over_https(true, false, &HeaderMap::new()));
        assert!(over_https(false, true, &forwarded));
        assert!(
            !over_https(false, false, &forwarded),
            "anyone can write the header"
        );
        assert!(!over_https(
            false,
            true,
            &headers(&[("x-forwarded-proto", "https, http")])
        ));
    }
}
