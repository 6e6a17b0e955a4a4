//! GET / and GET /rooms/{room}: the page of a room (`/` is the lobby's),
//! rendered with maud with everyone in it already there; its script and
//! style; and the client, `/lobby.js` and its types `/lobby.d.ts`, which other
//! sites load. All compiled into the binary so it runs from any directory, each
//! with an ETag so that a browser revalidates it for a 304.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest, Sha256};

use super::AppState;
use super::rooms::Room;
use crate::presence::{MAX_NAME_CHARS, RoomName, UserView};

static APP_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../static/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static LOBBY_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../static/lobby.js"),
        "text/javascript; charset=utf-8",
    )
    .for_any_site()
});
static LOBBY_D_TS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../static/lobby.d.ts"),
        "application/typescript; charset=utf-8",
    )
    .for_any_site()
});
static STYLE_CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../static/style.css"),
        "text/css; charset=utf-8",
    )
});
static FAVICON_SVG: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("../../static/favicon.svg"), "image/svg+xml"));

/// The static files' policy. Their URLs carry no version, so a browser must
/// not keep one past an upgrade of lobby (whose page, never cached, would then
/// run an old script): it asks every time, and gets a 304 with no body while
/// the ETag still matches. A max-age would save that round trip but serve a
/// stale script to a new page for as long as it lasts.
const ASSET_CACHE_CONTROL: &str = "no-cache";

/// The page runs the lobby's own script and style and nothing else: no inline
/// script, no other site's, and no framing by another site.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

pub async fn index(Room(room): Room, State(state): State<AppState>) -> Response {
    let users = state.presence.users(&room).await;
    let signed = state.tickets.is_some();
    let mut response = Html(render(&room, &users, signed).into_string()).into_response();
    let headers = response.headers_mut();
    // The list of who is online is only true now: never serve it from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

pub async fn script(request: HeaderMap) -> Response {
    APP_JS.answer(&request)
}

pub async fn client(request: HeaderMap) -> Response {
    LOBBY_JS.answer(&request)
}

pub async fn client_types(request: HeaderMap) -> Response {
    LOBBY_D_TS.answer(&request)
}

pub async fn style(request: HeaderMap) -> Response {
    STYLE_CSS.answer(&request)
}

pub async fn favicon(request: HeaderMap) -> Response {
    FAVICON_SVG.answer(&request)
}

/// A file compiled into the binary, and its ETag, computed once.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
    /// Whether any site's page may read it (`Access-Control-Allow-Origin: *`).
    for_any_site: bool,
}

impl Asset {
    /// The ETag is the start of the content's SHA-256: it changes exactly when
    /// the file does, and is the same on every node of a cluster.
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Asset {
            body,
            content_type,
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a header value"),
            for_any_site: false,
        }
    }

    /// The client's files are public and carry no secret: any site's page may
    /// load them (a module script is fetched with CORS), so that on a site
    /// missing from `--cors-origin` the client runs and says so, rather than
    /// failing to load with nothing shown. The API stays behind `--cors-origin`.
    fn for_any_site(self) -> Asset {
        Asset {
            for_any_site: true,
            ..self
        }
    }

    /// 304 with no body when the request's `If-None-Match` names this
    /// version, else the file.
    fn answer(&self, request: &HeaderMap) -> Response {
        let mut response = if self.matches(request) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut response = self.body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            response
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(ASSET_CACHE_CONTROL),
        );
        if self.for_any_site {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        response
    }

    /// Whether `If-None-Match` lists this ETag (compared weakly, as RFC 9110
    /// asks for this header) or is `*`.
    fn matches(&self, request: &HeaderMap) -> bool {
        let ours = self.etag.as_bytes();
        request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
    }
}

/// maud escapes every interpolated string, so a name is always text here.
/// The lobby's page (`/`) names no room; another room's names it in its
/// title and heading, and tells the script in `data-room` which routes are its.
/// With signed joins (`signed`) it has no name form: the site joins its people.
fn render(room: &RoomName, users: &[UserView], signed: bool) -> Markup {
    let named = (!room.is_lobby()).then_some(room.as_str());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @match named {
                    Some(room) => title { (room) " · lobby" },
                    None => title { "lobby" },
                }
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/static/style.css";
                script type="module" src="/static/app.js" {}
            }
            body data-room=[named] {
                header {
                    @match named {
                        Some(room) => h1 { (room) },
                        None => h1 { "lobby" },
                    }
                    p.count { span #count { (users.len()) } " online" }
                }
                main {
                    @if signed {
                        p #signed {
                            "This lobby takes signed joins: people appear here when the site that embeds it signs them in."
                        }
                    } @else {
                    form #join {
                        label for="name" { "What is your name?" }
                        div.row {
                            input #name name="name" type="text" required autocomplete="nickname"
                                // maxlength counts UTF-16 units, and an emoji is two:
                                // room for 32 of them; the server counts characters.
                                maxlength=(2 * MAX_NAME_CHARS) placeholder="Your name";
                            button type="submit" { "Join" }
                        }
                        p #error role="alert" {}
                    }
                    }
                    p #status hidden {}
                    ul #users aria-live="polite" {
                        @for user in users {
                            li class=(if away(user) { "user away" } else { "user" })
                                data-user-id=(user.id) { (user.name) }
                        }
                    }
                }
            }
        }
    }
}

/// Whether the page shows `user` as away: their state's `status` says so.
fn away(user: &UserView) -> bool {
    user.state.as_ref().is_some_and(|state| {
        serde_json::from_str::<serde_json::Value>(state.as_json())
            .is_ok_and(|state| state["status"] == "away")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{Name, UserId};

    fn if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn an_asset_s_etag_is_a_quoted_hash_of_its_content() {
        let a = Asset::new("one", "text/plain");
        let b = Asset::new("two", "text/plain");
        let tag = a.etag.to_str().expect("ascii");
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() == 18,
            "{tag}"
        );
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.etag, Asset::new("one", "text/plain").etag);
    }

    #[test]
    fn if_none_match_matches_the_etag_in_a_list_weak_or_strong_or_star() {
        let asset = Asset::new("body", "text/plain");
        let tag = asset.etag.to_str().expect("ascii").to_owned();
        assert!(asset.matches(&if_none_match(&tag)));
        assert!(asset.matches(&if_none_match(&format!("W/{tag}"))));
        assert!(asset.matches(&if_none_match(&format!("\"other\", {tag}"))));
        assert!(asset.matches(&if_none_match("*")));
        assert!(!asset.matches(&if_none_match("\"other\"")));
        assert!(!asset.matches(&HeaderMap::new()));
    }

    #[test]
    fn a_name_that_looks_like_markup_is_escaped_as_text() {
        let name = Name::parse("<img src=x onerror=alert(1)>").expect("valid name");
        let page = render(
            &RoomName::lobby(),
            &[UserView::new(UserId::random(), &name)],
            false,
        )
        .into_string();
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img"));
    }
}
