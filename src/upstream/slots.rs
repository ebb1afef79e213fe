//! How many requests may be out to GWS at once. Each request in flight holds an upstream
//! connection, so a share of slots is a share of the process's file descriptors
//! ([`crate::descriptors`]): the REST calls have one, the event feed (CometD long-polls and
//! handshakes, the snapshot reads of streams) its own, so a burst of unary calls can never
//! take what a stream needs to keep polling. A request beyond its share waits for a slot in
//! arrival order (tokio's semaphore is fair), within the time it was given; one that never
//! got a slot was never sent.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One share of upstream slots. A cloneable handle.
#[derive(Debug, Clone)]
pub struct Share {
    permits: Arc<Semaphore>,
    max: usize,
    /// The REST share is observed (in flight, waiting); the feed's is seen as CometD
    /// sessions already.
    observed: bool,
}

/// A slot held: released when dropped (after the reply's body is read, so the connection
/// is back in the pool or closed by then).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _in_flight: Option<crate::metrics::GaugeGuard>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

/// No slot freed within the time given; nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSlot {
    pub limit: usize,
    pub waited: Duration,
}

impl Share {
    /// A share of `max` slots (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            observed: false,
        }
    }

    /// The REST calls' share, observed by the in-flight and waiting gauges.
    pub fn observed(max: usize) -> Self {
        Self {
            observed: true,
            ..Self::new(max)
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot, waiting in arrival order for at most `within`.
    pub async fn acquire(&self, within: Duration) -> Result<Slot, NoSlot> {
        // The common case takes no timer and no gauge round trip.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = self
                    .observed
                    .then(|| crate::metrics::hold(&crate::metrics::UPSTREAM_WAITING));
                let wait = tokio::time::timeout(within, self.permits.clone().acquire_owned());
                match wait.await {
                    Ok(Ok(permit)) => permit,
                    // Never closed; and a timeout means none freed in time.
                    Ok(Err(_)) | Err(_) => {
                        return Err(NoSlot {
                            limit: self.max,
                            waited: within,
                        });
                    }
                }
            }
        };
        Ok(Slot {
            _permit: permit,
            _in_flight: self
                .observed
                .then(|| crate::metrics::hold(&crate::metrics::UPSTREAM_IN_FLIGHT)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_handed_out_in_arrival_order_within_the_wait() {
        let share = Share::new(1);
        let held = share.acquire(Duration::from_secs(1)).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (share, tx) = (share.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = share.acquire(Duration::from_secs(10)).await;
                let _ = tx.send(i);
                drop(slot);
            });
            // Each waiter queues before the next one is spawned.
            tokio::task::yield_now().await;
        }
        drop(held);
        let order = [rx.recv().await, rx.recv().await, rx.recv().await];
        assert_eq!(order, [Some(0), Some(1), Some(2)]);

        let _held = share.acquire(Duration::from_secs(1)).await.unwrap();
        let refused = share.acquire(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(
            refused,
            NoSlot {
                limit: 1,
                waited: Duration::from_millis(50)
            }
        );
    }
}
