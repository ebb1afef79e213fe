//! One agent's lease: the right to run its upstream session, a key in the lease bucket.
//!
//! Taken with `create` (only if absent), renewed by compare-and-set on the revision it last
//! wrote (`update`; fails if anyone else wrote since), handed back by a delete that expects
//! that revision, and gone by itself when its owner stops renewing (the bucket's `max_age` is
//! the TTL). Its first revision is the owner's *term*: every message it publishes carries it,
//! and followers drop what carries a term below the highest they have seen (a stale owner).
//!
//! Its value also says whether the owner's upstream session is subscribed ([`Holder`]): the
//! agent's subject says so too, but its retention (events per agent, bytes, age) may have
//! dropped every message that did, and a replica that starts following then must still
//! know whether to tell its streams SUBSCRIBED.

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use prost::bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds it (or wrote since our last revision).
    #[error("held by another replica")]
    Taken,
    #[error("lease bucket: {0}")]
    Nats(String),
}

/// A draining owner's lease value starts `draining:<term>`.
const DRAINING: &str = "draining:";
/// Appended while the owner's upstream session is subscribed.
const UP: &str = ";up";
/// How often a reclaim reads and writes again when the key changed in between.
const RECLAIM_ATTEMPTS: usize = 3;
/// The KV header that says a write is a delete or a purge (JetStream's KV convention).
const KV_OPERATION: &str = "KV-Operation";

/// What a lease's value says of its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `Some(term)` when the owner is shutting down and hands the agent over.
    pub draining: Option<u64>,
    /// Whether its upstream session is subscribed (as of its last write).
    pub up: bool,
}

impl Holder {
    fn encode(&self, replica: &str) -> Bytes {
        let up = if self.up { UP } else { "" };
        Bytes::from(match self.draining {
            Some(term) => format!("{DRAINING}{term}{up}"),
            None => format!("{replica}{up}"),
        })
    }

    /// Reads a lease value (anything unreadable is a holder that is neither).
    pub fn decode(value: &[u8]) -> Self {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let (rest, up) = match text.strip_suffix(UP) {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        Self {
            draining: rest.strip_prefix(DRAINING).and_then(|t| t.parse().ok()),
            up,
        }
    }
}

pub struct Lease {
    store: kv::Store,
    key: String,
    /// The revision this owner last wrote.
    revision: u64,
    /// Its first revision: the owner's term.
    pub term: u64,
    /// Until when this owner may act as one: the last successful write plus the TTL minus a
    /// margin (the bucket's clock is not ours).
    pub valid_until: Instant,
    ttl: Duration,
    replica: String,
    draining: bool,
    /// Whether the owner's session is subscribed: written with the next renewal.
    up: Arc<AtomicBool>,
    /// The value this owner last wrote (a reclaim recognises it).
    written: Bytes,
}

impl Lease {
    /// Takes the lease of `key` if nobody holds it.
    pub async fn take(
        store: &kv::Store,
        key: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let holder = Holder {
            draining: None,
            up: false,
        };
        let started = Instant::now();
        let written = holder.encode(replica);
        match store.create(key, written.clone()).await {
            Ok(revision) => Ok(Self {
                store: store.clone(),
                key: key.to_string(),
                revision,
                term: revision,
                valid_until: started + margin(ttl),
                ttl,
                replica: replica.to_string(),
                draining: false,
                up: Arc::new(AtomicBool::new(false)),
                written,
            }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(LeaseError::Taken),
            Err(e) => Err(LeaseError::Nats(e.to_string())),
        }
    }

    /// Renews it; `Taken` when someone else wrote it since (this owner is stale).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let started = Instant::now();
        let value = self.value();
        match self
            .store
            .update(&self.key, value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.written = value;
                self.valid_until = started + margin(self.ttl);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(LeaseError::Taken),
            Err(e) => Err(LeaseError::Nats(e.to_string())),
        }
    }

    /// What this owner's value says now.
    fn value(&self) -> Bytes {
        Holder {
            draining: self.draining.then_some(self.term),
            up: self.up.load(Ordering::Relaxed),
        }
        .encode(&self.replica)
    }

    /// After a renewal was refused (`Taken`): keeps the lease if nobody else holds it. Its
    /// key may hold this owner's own last write (a renewal whose answer was lost: its value
    /// is this owner's), then that revision is the one to renew; or it may be gone (it ran
    /// out while the bucket had no leader to renew it with, and nobody took it since), then
    /// it is taken again, and its new first revision is this owner's new term. Anyone else's
    /// value: `Taken`. The key is read from the bucket's leader (a follower's copy may still
    /// hold what the leader has let run out), and read again when it changed in between.
    pub async fn reclaim(&mut self) -> Result<(), LeaseError> {
        for _ in 0..RECLAIM_ATTEMPTS {
            let started = Instant::now();
            let outcome = match self.read().await? {
                Some((revision, value)) if value == self.written => {
                    self.revision = revision;
                    self.renew().await
                }
                Some(_) => return Err(LeaseError::Taken),
                None => match self.store.create(&self.key, self.value()).await {
                    Ok(revision) => {
                        self.revision = revision;
                        self.written = self.value();
                        // (A draining value names the old term: the next renewal writes the
                        // new one.)
                        self.term = revision;
                        self.valid_until = started + margin(self.ttl);
                        Ok(())
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        Err(LeaseError::Taken)
                    }
                    Err(e) => Err(LeaseError::Nats(e.to_string())),
                },
            };
            match outcome {
                // Written between the read and the write (or run out): read again.
                Err(LeaseError::Taken) => {}
                other => return other,
            }
        }
        Err(LeaseError::Nats(
            "the lease changed under every reclaim attempt".into(),
        ))
    }

    /// The key's last write as the bucket's leader has it: its revision and value, `None`
    /// when absent or deleted.
    async fn read(&self) -> Result<Option<(u64, Bytes)>, LeaseError> {
        let subject = format!("{}{}", self.store.prefix, self.key);
        match self
            .store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => {
                let deleted = m
                    .headers
                    .get(KV_OPERATION)
                    .is_some_and(|op| op.as_str() != "PUT");
                Ok((!deleted).then_some((m.sequence, m.payload)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(LeaseError::Nats(e.to_string())),
        }
    }

    /// Says in the lease that its owner is shutting down: replicas holding the credential
    /// start their own session, and the first one subscribed says so (see `source`).
    pub async fn mark_draining(&mut self) -> Result<(), LeaseError> {
        self.draining = true;
        self.renew().await
    }

    /// Where the owner's session state goes: the value says it from the next renewal on.
    pub fn up(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    pub fn valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Hands it back, unless someone else holds it by now.
    pub async fn release(self) {
        if let Err(e) = self
            .store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!(error = %e, "lease not handed back (expired or taken already)");
        }
    }
}

/// Whether the bucket's leader answers for `key`: a read only the leader serves (a follower
/// answers a direct get even while the bucket has no leader, and a write needs one).
pub async fn bucket_answers(store: &kv::Store, key: &str) -> bool {
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(_) => true,
        Err(e) => e.kind() == LastRawMessageErrorKind::NoMessageFound,
    }
}

/// What of the TTL an owner relies on: a fifth is left for clock rates and the write's trip.
fn margin(ttl: Duration) -> Duration {
    ttl.mul_f64(0.8)
}

#[cfg(test)]
mod tests {
    use super::Holder;

    #[test]
    fn a_lease_value_says_whether_its_owner_drains_and_whether_its_session_is_up() {
        for draining in [None, Some(7)] {
            for up in [false, true] {
                let h = Holder { draining, up };
                assert_eq!(Holder::decode(&h.encode("0123abcd")), h);
            }
        }
        // A replica id is never read as a term, and garbage is neither draining nor up.
        assert_eq!(
            Holder::decode(b"draining"),
            Holder {
                draining: None,
                up: false
            }
        );
        assert_eq!(
            Holder::decode(&[0xff, 0xfe]),
            Holder {
                draining: None,
                up: false
            }
        );
        assert_eq!(
            Holder::decode(b"draining:x;up"),
            Holder {
                draining: None,
                up: true
            }
        );
    }
}
