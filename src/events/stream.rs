//! One subscriber's stream: first the items decided at subscription (SUBSCRIBED, GAP,
//! replay), then its live queue. It remembers the last token it yielded, so a cut-off
//! consumer learns where to resume. Dropping it (the client went away) unregisters it at once.

use super::feed::{EndReason, Feed, Item};
use super::{EventsError, Interest};
use futures::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

struct StreamState {
    pre: VecDeque<Item>,
    rx: mpsc::Receiver<Item>,
    end: EndReason,
    shutdown: CancellationToken,
    last_token: String,
    done: bool,
    guard: SlotGuard,
}

pub(super) fn new(
    pre: VecDeque<Item>,
    rx: mpsc::Receiver<Item>,
    end: EndReason,
    shutdown: CancellationToken,
    guard: SlotGuard,
) -> EventStream {
    let state = StreamState {
        pre,
        rx,
        end,
        shutdown,
        last_token: String::new(),
        done: false,
        guard,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(item) = st.pre.pop_front() {
            st.last_token.clone_from(&item.resume_token);
            return Some((Ok(item), st));
        }
        let next = tokio::select! {
            biased;
            _ = st.shutdown.cancelled() => None,
            item = st.rx.recv() => Some(item),
        };
        match next {
            // Shutdown ends the stream promptly, whatever is still queued.
            None => {
                st.done = true;
                Some((Err(EventsError::ShuttingDown), st))
            }
            Some(Some(item)) => {
                st.last_token.clone_from(&item.resume_token);
                Some((Ok(item), st))
            }
            // The feed closed the queue: everything queued was delivered; now say why.
            Some(None) => {
                st.done = true;
                let reason = st.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                let error = match reason {
                    Some(EventsError::SlowConsumer { .. }) => EventsError::SlowConsumer {
                        resumable: st.guard.feed.resumable(st.guard.slot, &st.last_token),
                        last_resume_token: st.last_token.clone(),
                    },
                    Some(other) => other,
                    None if st.shutdown.is_cancelled() => EventsError::ShuttingDown,
                    None => EventsError::Ended("upstream notification session closed".into()),
                };
                Some((Err(error), st))
            }
        }
    }))
}
