//! How long an upstream call may take: what is left of the caller's `grpc-timeout` when it
//! sent one, otherwise the configured upstream timeout.
//!
//! tonic's server enforces `grpc-timeout` itself, from the moment the request arrives, but
//! answers `CANCELLED` when it fires. The gateway stamps the arrival ([`Stamped`], a wrapper
//! around the service, on the HTTP request itself: a tonic interceptor would convert every
//! request to a `tonic::Request` and back for it) and ends the upstream call a
//! little before that same deadline. tonic polls the service before its own timer, so even
//! when both timers are due in the same wake-up the caller gets our precise
//! `DEADLINE_EXCEEDED`.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

/// When the request entered the service.
#[derive(Debug, Clone, Copy)]
pub struct Received(pub Instant);

/// A service whose requests are stamped with their arrival ([`Received`]).
#[derive(Debug, Clone)]
pub struct Stamped<S>(pub S);

impl<S: NamedService> NamedService for Stamped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Stamped<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(Received(Instant::now()));
        self.0.call(request)
    }
}

/// The upstream budget for this call: what is left of the caller's deadline, or the
/// configured upstream timeout when the caller set none.
pub fn budget(metadata: &MetadataMap, extensions: &Extensions, configured: Duration) -> Duration {
    caller(metadata, extensions).unwrap_or(configured)
}

/// What is left of the caller's `grpc-timeout` (minus the answering margin), if it sent one.
pub fn caller(metadata: &MetadataMap, extensions: &Extensions) -> Option<Duration> {
    let caller = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse)?;
    let elapsed = extensions
        .get::<Received>()
        .map(|r| r.0.elapsed())
        .unwrap_or_default();
    Some(
        caller
            .saturating_sub(elapsed)
            .saturating_sub(margin(caller)),
    )
}

/// A tenth of the deadline, between 2 ms and 100 ms: room to answer before tonic's own
/// timer, small enough not to waste the caller's budget.
fn margin(deadline: Duration) -> Duration {
    (deadline / 10).clamp(Duration::from_millis(2), Duration::from_millis(100))
}

/// Parses a `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit).
fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_requests_carry_their_arrival() {
        /// Answers when its request was stamped.
        struct Arrival;
        impl tower::Service<http::Request<()>> for Arrival {
            type Response = Option<Instant>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Option<Instant>, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, request: http::Request<()>) -> Self::Future {
                std::future::ready(Ok(request.extensions().get::<Received>().map(|r| r.0)))
            }
        }
        let before = Instant::now();
        let mut service = Stamped(Arrival);
        let Poll::Ready(Ok(Some(at))) =
            std::pin::pin!(tower::Service::call(&mut service, http::Request::new(())))
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
        else {
            panic!("no arrival stamp");
        };
        assert!(at >= before && at <= Instant::now());
    }

    #[test]
    fn caller_deadline_bounds_the_budget() {
        let mut md = MetadataMap::new();
        let none = Extensions::new();
        let configured = Duration::from_secs(10);
        assert_eq!(budget(&md, &none, configured), configured);
        md.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(budget(&md, &none, configured), Duration::from_millis(180));
        md.insert("grpc-timeout", "30S".parse().unwrap());
        assert_eq!(
            budget(&md, &none, configured),
            Duration::from_millis(29_900)
        );
        md.insert("grpc-timeout", "garbage".parse().unwrap());
        assert_eq!(budget(&md, &none, configured), configured);
    }

    #[test]
    fn time_already_spent_is_deducted() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "200m".parse().unwrap());
        let mut ext = Extensions::new();
        ext.insert(Received(Instant::now() - Duration::from_millis(150)));
        assert!(budget(&md, &ext, Duration::from_secs(10)) <= Duration::from_millis(30));
        ext.insert(Received(Instant::now() - Duration::from_secs(1)));
        assert_eq!(budget(&md, &ext, Duration::from_secs(10)), Duration::ZERO);
    }

    #[test]
    fn parses_every_unit_and_rejects_the_rest() {
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("-1S"), None);
        assert_eq!(parse("10x"), None);
    }
}
