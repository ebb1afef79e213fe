//! One subscriber's stream: first the items decided at subscription (SUBSCRIBED, GAP,
//! replay), then its live queue. It remembers the last token it yielded, so a cut-off
//! consumer learns where to resume. Dropping it (the client went away) unregisters it at once.

use super::feed::Feed;
use super::item::Item;
use super::state::EndReason;
use super::{EventsError, Interest};
use futures::Stream;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Item, EventsError>> + Send>>;

/// Unregisters the subscriber from its feed (and starts its pin's resume window, if it was
/// cut) when dropped: by the stream, or by the subscription itself if it is cancelled before
/// the stream exists (during its snapshot read, say).
pub(super) struct SlotGuard {
    feed: Arc<Feed>,
    slot: u64,
    _interest: Interest,
}

impl SlotGuard {
    pub(super) fn new(feed: Arc<Feed>, slot: u64, interest: Interest) -> Self {
        Self {
            feed,
            slot,
            _interest: interest,
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.feed.remove_slot(self.slot);
    }
}

/// One subscriber's stream. Written by hand rather than with `unfold` + `select!`: a fan-out
/// to 10,000 streams polls each one per item, and `select!` made a new shutdown future per
/// poll (registering in, then leaving, the token's waiter list each time, under its lock);
/// here the shutdown wait is registered once per waker, each poll checks one atomic flag,
/// and the last item is kept by reference (its token is read only when the stream ends).
struct SubscriberStream {
    pre: VecDeque<Item>,
    rx: mpsc::Receiver<Item>,
    end: EndReason,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `shutdown` was last polled with: it wakes that one when cancelled.
    registered: Option<Waker>,
    /// Set just before the token is cancelled.
    stopping: Arc<AtomicBool>,
    last: Option<Item>,
    done: bool,
    guard: SlotGuard,
}

pub(super) fn new(
    pre: VecDeque<Item>,
    rx: mpsc::Receiver<Item>,
    end: EndReason,
    shutdown: CancellationToken,
    stopping: Arc<AtomicBool>,
    guard: SlotGuard,
) -> EventStream {
    Box::pin(SubscriberStream {
        pre,
        rx,
        end,
        shutdown: Box::pin(shutdown.cancelled_owned()),
        registered: None,
        stopping,
        last: None,
        done: false,
        guard,
    })
}

impl SubscriberStream {
    fn last_token(&self) -> String {
        self.last
            .as_ref()
            .map(|item| item.resume_token.clone())
            .unwrap_or_default()
    }

    /// Why the feed closed the queue (everything queued was delivered).
    fn closed(&self) -> EventsError {
        let reason = self.end.lock().unwrap_or_else(|e| e.into_inner()).take();
        match reason {
            Some(EventsError::SlowConsumer { .. }) => {
                let last_resume_token = self.last_token();
                EventsError::SlowConsumer {
                    resumable: self
                        .guard
                        .feed
                        .resumable(self.guard.slot, &last_resume_token),
                    last_resume_token,
                }
            }
            Some(other) => other,
            None if self.stopping.load(Ordering::Acquire) => EventsError::ShuttingDown,
            None => EventsError::Ended("upstream notification session closed".into()),
        }
    }
}

impl Stream for SubscriberStream {
    type Item = Result<Item, EventsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(item) = this.pre.pop_front() {
            this.last = Some(item.clone());
            return Poll::Ready(Some(Ok(item)));
        }
        // Shutdown first, and it ends the stream promptly, whatever is still queued. The
        // token is polled (and its lock taken) only for a waker it does not hold yet.
        let mut stopping = this.stopping.load(Ordering::Acquire);
        if !stopping
            && !this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            stopping = this.shutdown.as_mut().poll(cx).is_ready();
            this.registered = Some(cx.waker().clone());
        }
        if stopping {
            this.done = true;
            return Poll::Ready(Some(Err(EventsError::ShuttingDown)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(item)) => {
                this.last = Some(item.clone());
                // The fan-out case: this item was the stream's only one. A stream with more
                // queued goes on sending them in this poll (a burst is not slowed down).
                if this.rx.is_empty() {
                    yield_the_connection(cx);
                }
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Err(this.closed())))
            }
        }
    }
}

/// Uses up this task's scheduling budget, so the HTTP/2 connection task that sending this
/// item wakes is queued behind the other streams' tasks instead of running right after this
/// one (tokio runs a task woken by the current one next, unless the budget is spent). In a
/// fan-out, the connection then writes the frames of many streams in one `writev` instead
/// of one each: the system calls were 40% of the CPU of a delivery. Alone, the connection
/// task still runs next: nothing else is queued.
/// Bounded: tokio's budget is 128 units, and an unconstrained task never runs out.
fn yield_the_connection(cx: &mut Context<'_>) {
    for _ in 0..=128 {
        match tokio::task::coop::poll_proceed(cx) {
            Poll::Ready(progress) => progress.made_progress(),
            Poll::Pending => break,
        }
    }
}
