//! Session expiry: a session that stops connecting lives `interval + max_interval` after
//! its last reply, then is swept. There is no timer task: every hub call sweeps first under
//! the lock it takes anyway, so an expired session is never seen and nothing runs while the
//! hub is idle. Tests move the hub's clock instead of sleeping.

use std::time::Duration;

use tokio::time::Instant;

use super::CometdHub;
use super::session::State;

impl CometdHub {
    /// How long after a reply a session survives without a connect. Capped at a day so
    /// `Instant + grace` cannot overflow whatever the configuration says.
    pub(super) fn grace(&self) -> Duration {
        const CAP: Duration = Duration::from_secs(24 * 3600);
        self.inner
            .config
            .interval
            .saturating_add(self.inner.config.max_interval)
            .min(CAP)
    }

    /// Moves the hub's clock forward (expiry only; hold timeouts use tokio's clock).
    #[cfg(test)]
    pub(super) fn advance_clock(&self, by: Duration) {
        self.lock().skew += by;
    }
}

pub(super) fn now(st: &State) -> Instant {
    let now = Instant::now();
    #[cfg(test)]
    let now = now + st.skew;
    #[cfg(not(test))]
    let _ = st;
    now
}

/// Removes expired sessions (and agents left with none); returns the current time.
pub(super) fn sweep(st: &mut State) -> Instant {
    let now = now(st);
    st.agents.retain(|agent, sessions| {
        sessions.retain(|_, s| {
            let live = s.expires_at.is_none_or(|t| t > now);
            if !live {
                tracing::debug!(agent, "CometD session expired");
            }
            live
        });
        !sessions.is_empty()
    });
    now
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[tokio::test]
    async fn sessions_expire_without_connects() {
        let hub = hub();
        let idle = handshake(&hub, A).await;
        let active = handshake(&hub, A).await;
        hub.advance_clock(Duration::from_secs(10));
        connect(&hub, A, &active, Some(0)).await;
        hub.advance_clock(Duration::from_secs(6));
        // idle: 16 s since its handshake > maxInterval 15 s; active: 6 s since its connect.
        assert_eq!(hub.session_count(A), 1);
        assert_402(meta(
            &connect(&hub, A, &idle, Some(0)).await,
            "/meta/connect",
        ));
        assert_eq!(
            meta(&connect(&hub, A, &active, Some(0)).await, "/meta/connect")["successful"],
            true
        );
        hub.advance_clock(Duration::from_secs(16));
        assert_eq!(hub.session_count(A), 0);
    }

    #[tokio::test]
    async fn a_parked_connect_keeps_the_session_alive_and_a_cancelled_one_does_not() {
        let hub = hub();
        let c = handshake(&hub, A).await;
        let parked = parked_connect(&hub, A, &c).await;
        hub.advance_clock(Duration::from_secs(3600));
        assert_eq!(hub.session_count(A), 1, "parked: not expiring");
        // The HTTP client goes away mid-poll: the request future is dropped.
        parked.abort();
        let _ = parked.await;
        assert_eq!(hub.parked_count(), 0);
        assert_eq!(hub.session_count(A), 1);
        hub.advance_clock(Duration::from_secs(16));
        assert_eq!(hub.session_count(A), 0, "expires after the cancelled poll");
    }
}
