//! GET /: the page, rendered with maud with everyone online already in it, and
//! its script and style, compiled into the binary so it runs from any directory.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::AppState;
use crate::presence::{MAX_NAME_CHARS, UserView};

const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");
const FAVICON_SVG: &str = include_str!("../../static/favicon.svg");

/// The page runs the lobby's own script and style and nothing else: no inline
/// script, no other site's, and no framing by another site.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

pub async fn index(State(state): State<AppState>) -> Response {
    let mut response = Html(render(&state.presence.users().await).into_string()).into_response();
    let headers = response.headers_mut();
    // The list of who is online is only true now: never serve it from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

pub async fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

pub async fn favicon() -> Response {
    asset(FAVICON_SVG, "image/svg+xml")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// maud escapes every interpolated string, so a name is always text here.
fn render(users: &[UserView]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "lobby" }
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    h1 { "lobby" }
                    p.count { span #count { (users.len()) } " online" }
                }
                main {
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
                    p #status hidden {}
                    ul #users aria-live="polite" {
                        @for user in users {
                            li.user data-user-id=(user.id) { (user.name) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{Name, UserId};

    #[test]
    fn a_name_that_looks_like_markup_is_escaped_as_text() {
        let name = Name::parse("<img src=x onerror=alert(1)>").expect("valid name");
        let page = render(&[UserView {
            id: UserId::random(),
            name,
        }])
        .into_string();
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img"));
    }
}
