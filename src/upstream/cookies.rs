//! One agent's cookies (GWS's `JSESSIONID`): an RFC 6265 jar (`cookie_store`), and the
//! `Cookie` header it gives, kept while it cannot change.
//!
//! Asking the jar costs more than the rest of preparing a request: it matches every cookie's
//! domain against the request's host (IDNA processing included) and formats the header
//! anew. But what it answers for an agent changes only when a reply sets a cookie, when a
//! cookie expires, or for a request whose path selects other cookies; all of an agent's
//! requests go to one origin. So the header is kept with what it depends on, and the jar
//! decides again as soon as any of that differs.

use cookie_store::{Cookie, CookieExpiration, CookiePath, CookieStore};
use http::HeaderValue;
use reqwest::Url;
use std::sync::Mutex;
use std::time::SystemTime;

/// An agent's jar. Reachable only through its agent: nothing here is ever shared.
#[derive(Default)]
pub struct Cookies(Mutex<Jar>);

#[derive(Default)]
struct Jar {
    store: CookieStore,
    /// The header of the last request, with what it depends on; `None` after a change.
    kept: Option<Kept>,
}

/// A `Cookie` header and the conditions under which the jar would give it again.
struct Kept {
    value: Option<HeaderValue>,
    /// The scheme and host it was made for: domain, `Secure` and `HttpOnly` matching depend
    /// on nothing else (cookies ignore the port).
    scheme: String,
    host: Option<String>,
    /// Each live cookie's path, and whether it matched the request's path: a request whose
    /// path matches the same ones selects the same cookies.
    paths: Vec<(CookiePath, bool)>,
    /// The first expiry among the live cookies: from then on the jar decides again.
    until: Option<SystemTime>,
}

impl Kept {
    fn holds(&self, url: &Url, now: impl Fn() -> SystemTime) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == self.host.as_deref()
            && self
                .paths
                .iter()
                .all(|(path, matched)| path.matches(url) == *matched)
            // Session cookies (GWS's) never expire: no clock read for them.
            && self.until.is_none_or(|until| now() < until)
    }
}

impl Cookies {
    /// The `Cookie` header for a request to `url` (marked sensitive), if any cookie applies.
    pub fn header(&self, url: &Url) -> Option<HeaderValue> {
        self.header_with(url, SystemTime::now)
    }

    /// Keeps the cookies a reply to `url` sets. Unparseable values are dropped, and so are
    /// values that are not visible ASCII: one such cookie would make the joined `Cookie`
    /// header invalid and cost the agent every cookie, `JSESSIONID` included.
    pub fn absorb<'a>(&self, set_cookie: impl Iterator<Item = &'a HeaderValue>, url: &Url) {
        let mut jar = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // First: however the loop ends, the kept header never outlives a change of the jar.
        jar.kept = None;
        for value in set_cookie {
            if let Ok(text) = value.to_str() {
                // An error is a cookie the jar refuses (bad domain, bad syntax): not kept.
                let _ = jar.store.parse(text, url);
            }
        }
    }

    /// [`Cookies::header`] at the time `now` gives.
    fn header_with(&self, url: &Url, now: impl Fn() -> SystemTime) -> Option<HeaderValue> {
        let mut jar = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = &jar.kept
            && kept.holds(url, &now)
        {
            return kept.value.clone();
        }
        let now = now();
        let alive = |c: &&Cookie<'static>| !c.expires_by(&now.into());
        let pairs: Vec<String> = jar
            .store
            .matches(url)
            .into_iter()
            .filter(alive)
            .map(|c| format!("{}={}", c.name(), c.value()))
            .collect();
        let mut value = if pairs.is_empty() {
            None
        } else {
            HeaderValue::from_str(&pairs.join("; ")).ok()
        };
        if let Some(value) = &mut value {
            value.set_sensitive(true);
        }
        let live: Vec<_> = jar.store.iter_any().filter(alive).collect();
        let kept = Kept {
            value: value.clone(),
            scheme: url.scheme().to_string(),
            host: url.host_str().map(str::to_string),
            paths: live
                .iter()
                .map(|c| (c.path.clone(), c.path.matches(url)))
                .collect(),
            until: live
                .iter()
                .filter_map(|c| match &c.expires {
                    CookieExpiration::AtUtc(at) => Some(SystemTime::from(*at)),
                    CookieExpiration::SessionEnd => None,
                })
                .min(),
        };
        jar.kept = Some(kept);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn url(path: &str) -> Url {
        format!("http://gws:8080{path}").parse().unwrap()
    }

    fn set(cookies: &Cookies, from: &str, values: &[&'static str]) {
        let values: Vec<_> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
        cookies.absorb(values.iter(), &url(from));
    }

    fn header(cookies: &Cookies, path: &str) -> Option<String> {
        cookies
            .header(&url(path))
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn a_reply_sets_the_cookie_later_requests_send() {
        let cookies = Cookies::default();
        assert_eq!(header(&cookies, "/api/v2/me"), None);
        set(
            &cookies,
            "/api/v2/me",
            &["JSESSIONID=one; Path=/; HttpOnly"],
        );
        let value = cookies.header(&url("/api/v2/me/smssessions/x")).unwrap();
        assert_eq!(value, "JSESSIONID=one");
        assert!(value.is_sensitive());
        // A new session replaces the kept header at once.
        set(&cookies, "/api/v2/me", &["JSESSIONID=two; Path=/"]);
        assert_eq!(
            header(&cookies, "/api/v2/me").as_deref(),
            Some("JSESSIONID=two")
        );
        // Max-Age=0 deletes it.
        set(
            &cookies,
            "/api/v2/me",
            &["JSESSIONID=gone; Path=/; Max-Age=0"],
        );
        assert_eq!(header(&cookies, "/api/v2/me"), None);
    }

    #[test]
    fn a_request_whose_path_selects_other_cookies_gets_them() {
        let cookies = Cookies::default();
        set(
            &cookies,
            "/api/v2/me",
            &[
                "JSESSIONID=s; Path=/",
                "BAYEUX_BROWSER=b; Path=/api/v2/notifications",
            ],
        );
        // Alternating paths, as an agent with a stream and REST calls does.
        for _ in 0..2 {
            assert_eq!(
                header(&cookies, "/api/v2/me/smssessions/x").as_deref(),
                Some("JSESSIONID=s")
            );
            let both = header(&cookies, "/api/v2/notifications").unwrap();
            let mut both: Vec<_> = both.split("; ").collect();
            both.sort();
            assert_eq!(both, ["BAYEUX_BROWSER=b", "JSESSIONID=s"]);
        }
        // A cookie without Path gets the reply's directory (RFC 6265 5.1.4).
        set(&cookies, "/api/v2/me", &["LOCAL=l"]);
        let under = header(&cookies, "/api/v2/me/smssessions/x").unwrap();
        assert!(under.contains("LOCAL=l"), "{under}");
        assert!(!header(&cookies, "/other").unwrap().contains("LOCAL"));
    }

    #[test]
    fn an_expired_cookie_is_no_longer_sent() {
        let cookies = Cookies::default();
        set(
            &cookies,
            "/api/v2/me",
            &["JSESSIONID=s; Path=/", "SHORT=t; Path=/; Max-Age=60"],
        );
        let now = SystemTime::now();
        let at = |t: SystemTime| {
            cookies
                .header_with(&url("/api/v2/me"), move || t)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let first = at(now).unwrap();
        assert!(first.contains("SHORT=t") && first.contains("JSESSIONID=s"));
        assert_eq!(
            at(now + Duration::from_secs(120)).as_deref(),
            Some("JSESSIONID=s")
        );
    }

    #[test]
    fn another_origin_is_asked_of_the_jar_again() {
        let cookies = Cookies::default();
        let https: Url = "https://gws:8080/api/v2/me".parse().unwrap();
        cookies.absorb(
            [
                HeaderValue::from_static("JSESSIONID=s; Path=/"),
                HeaderValue::from_static("SECURE=x; Path=/; Secure"),
            ]
            .iter(),
            &https,
        );
        // Kept for https first: plain http must still be asked of the jar (no Secure cookie).
        let both = cookies.header(&https).unwrap();
        assert!(both.to_str().unwrap().contains("SECURE=x"), "{both:?}");
        assert_eq!(
            header(&cookies, "/api/v2/me").as_deref(),
            Some("JSESSIONID=s")
        );
        let elsewhere: Url = "http://other:8080/api/v2/me".parse().unwrap();
        assert_eq!(cookies.header(&elsewhere), None, "host-only cookies");
        let other_port: Url = "https://gws:9090/api/v2/me".parse().unwrap();
        assert!(
            cookies.header(&other_port).is_some(),
            "cookies ignore the port"
        );
        assert!(
            cookies
                .header(&https)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("SECURE=x"),
            "and back"
        );
    }
}
