//! What one client may ask of the lobby, and who the client is: joins per
//! address and state updates per token (token buckets from governor), and
//! which other sites' pages may use the API. (Connections open at once are
//! the transport's: `server`.)

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{ApiError, AppState};
use crate::presence::{Token, TokenKey};

/// A bucket per key: `rate` a second on average, `burst` at once.
pub struct Buckets<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

/// Joins per client address.
pub type JoinLimiter = Buckets<IpAddr>;

/// State updates per token (by its key).
pub type StateLimiter = Buckets<TokenKey>;

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Buckets<K> {
        Buckets {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one from the bucket of `key`, or says how long to wait.
    fn take(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets the clients whose buckets are full again, so a flood from many
    /// addresses does not stay in memory.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.limiter.len()
    }
}

impl JoinLimiter {
    /// Takes one join from the bucket of `client`, or says how long to wait.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        self.take(&bucket_of(client))
            .map_err(ApiError::TooManyJoins)
    }
}

impl StateLimiter {
    /// Takes one update from the bucket of `token`, or says how long to wait.
    pub fn check(&self, token: &Token) -> Result<(), ApiError> {
        self.take(&token.key()).map_err(ApiError::TooManyUpdates)
    }
}

/// The client's address, as the limits count clients: the socket's peer,
/// or behind a trusted proxy (`--trust-proxy`) the one the proxy names.
pub struct Client(pub IpAddr);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.0.ip());
        if !state.trust_proxy {
            warn_of_an_untrusted_proxy(&parts.headers, &state.proxy_warned);
        }
        Ok(Client(client_ip(peer, &parts.headers, state.trust_proxy)))
    }
}

/// A request that a proxy forwarded while `--trust-proxy` is off: every
/// client behind that proxy then shares the proxy's address, and so one
/// budget of joins. Said once per process (`warned`), the first time.
fn warn_of_an_untrusted_proxy(headers: &HeaderMap, warned: &AtomicBool) {
    let forwarded =
        headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED);
    if forwarded && !warned.load(Ordering::Relaxed) && !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a request came through a proxy (it carries X-Forwarded-For or Forwarded), but \
             --trust-proxy is off: every client behind that proxy counts as the proxy's one \
             address against the limits. Start lobby with --trust-proxy (LOBBY_TRUST_PROXY=1) \
             if a proxy you run is in front of it"
        );
    }
}

/// Watcher streams open at once per client address: past `max`, another is
/// refused.
pub struct Watchers {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One open watcher stream, counted against its client until dropped.
pub struct WatcherSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl Watchers {
    pub fn new(max: usize) -> Watchers {
        Watchers {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for one more watcher of `client`, unless it has `max` open.
    pub fn open(&self, client: IpAddr) -> Result<WatcherSlot, ApiError> {
        let client = bucket_of(client);
        let mut open = lock(&self.open);
        let count = open.entry(client).or_default();
        if *count >= self.max {
            return Err(ApiError::TooManyWatchers(self.max));
        }
        *count += 1;
        Ok(WatcherSlot {
            open: self.open.clone(),
            client,
        })
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The client's address: the socket's peer, or behind a trusted proxy the
/// last `X-Forwarded-For` entry, the one that proxy wrote (entries before it
/// come from the client and prove nothing).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trust_proxy: bool) -> IpAddr {
    if !trust_proxy {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .next_back()
        .and_then(|entry| entry.trim().parse().ok())
        .unwrap_or(peer)
}

/// The bucket an address draws on: an IPv6 client usually has a whole /64 to
/// itself, so one bucket serves the /64 rather than each of its addresses.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// How often the join limiter forgets idle clients.
pub const FORGET_EVERY: Duration = Duration::from_secs(60);

/// A request that no other site's page sent, unless that site is allowed:
/// the first argument of every API handler, so that a refused site is told
/// nothing else (403).
pub struct AllowedSite;

impl FromRequestParts<AppState> for AllowedSite {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.origins.check(&parts.headers)?;
        Ok(AllowedSite)
    }
}

/// Which other sites' pages may use the API (CORS). Browsers say where a
/// request comes from in `Sec-Fetch-Site`, which proxies leave alone; requests
/// without it (curl, servers) are not a browser's and are let through.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    allowed: Arc<[HeaderValue]>,
}

impl Origins {
    pub fn new(origins: &[String]) -> Origins {
        Origins {
            allowed: origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok())
                .collect(),
        }
    }

    pub fn allowed(&self) -> &[HeaderValue] {
        &self.allowed
    }

    /// `Ok(Some(origin))` for an allowed origin's page (the response names it
    /// in `Access-Control-Allow-Origin`), `Ok(None)` for the lobby's own page
    /// or a client that is not a browser, and an error for any other site.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
        let origin = headers.get(header::ORIGIN);
        if let Some(origin) = origin.filter(|origin| self.is_allowed(origin)) {
            return Ok(Some(origin.clone()));
        }
        let site = headers
            .get("sec-fetch-site")
            .and_then(|value| value.to_str().ok());
        match site {
            Some("cross-site" | "same-site") => Err(ApiError::CrossOrigin),
            _ => Ok(None),
        }
    }

    fn is_allowed(&self, origin: &HeaderValue) -> bool {
        self.allowed
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn without_a_trusted_proxy_x_forwarded_for_is_ignored() {
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(PEER, &forwarded, false), PEER);
    }

    #[test]
    fn behind_a_trusted_proxy_the_last_entry_is_the_client() {
        let forwarded = headers(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            client_ip(PEER, &forwarded, true),
            "203.0.113.9".parse::<IpAddr>().expect("an address")
        );
        let garbage = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(client_ip(PEER, &garbage, true), PEER);
        assert_eq!(client_ip(PEER, &HeaderMap::new(), true), PEER);
    }

    #[test]
    fn an_ipv6_client_draws_on_the_bucket_of_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("an address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("an address");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("an address");
        assert_eq!(bucket_of(a), bucket_of(b));
        assert_ne!(bucket_of(a), bucket_of(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("an address");
        assert_eq!(bucket_of(mapped), PEER);
    }

    #[test]
    fn a_client_past_its_burst_is_told_how_long_to_wait_and_others_are_not() {
        let limiter = JoinLimiter::new(
            NonZeroU32::new(1).expect("one"),
            NonZeroU32::new(3).expect("three"),
        );
        for _ in 0..3 {
            assert!(limiter.check(PEER).is_ok());
        }
        match limiter.check(PEER) {
            Err(ApiError::TooManyJoins(wait)) => {
                assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
            }
            other => panic!("expected TooManyJoins, got {other:?}"),
        }
        let other: IpAddr = "10.0.0.2".parse().expect("an address");
        assert!(limiter.check(other).is_ok());
        assert_eq!(limiter.clients(), 2);
    }

    #[test]
    fn a_client_past_its_watchers_is_refused_until_one_closes() {
        let watchers = Watchers::new(2);
        let first = watchers.open(PEER).expect("a slot");
        let _second = watchers.open(PEER).expect("a slot");
        assert!(matches!(
            watchers.open(PEER),
            Err(ApiError::TooManyWatchers(2))
        ));
        let other: IpAddr = "10.0.0.2".parse().expect("an address");
        let _third = watchers.open(other).expect("another client's slot");
        drop(first);
        assert!(watchers.open(PEER).is_ok());
        drop(_third);
        assert_eq!(
            lock(&watchers.open).len(),
            1,
            "a client with none open is forgotten"
        );
    }

    #[test]
    fn another_site_s_page_is_refused_unless_its_origin_is_allowed() {
        let origins = Origins::new(&["https://app.example".to_owned()]);
        let allowed = headers(&[
            ("origin", "https://app.example"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(
            origins.check(&allowed).expect("allowed"),
            Some(HeaderValue::from_static("https://app.example"))
        );
        let other = headers(&[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(matches!(origins.check(&other), Err(ApiError::CrossOrigin)));
        let own = headers(&[
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(origins.check(&own).expect("own page"), None);
        assert_eq!(origins.check(&HeaderMap::new()).expect("curl"), None);
    }
}
