//! One agent's lease: the right to run its upstream session, a key in the lease bucket.
//!
//! Taken with `create` (only if absent), renewed by compare-and-set on the revision it last
//! wrote (`update`; fails if anyone else wrote since), handed back by a delete that expects
//! that revision, and gone by itself when its owner stops renewing (the bucket's `max_age` is
//! the TTL). Its first revision is the owner's *term*: every message it publishes carries it,
//! and followers drop what carries a term below the highest they have seen (a stale owner).

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use prost::bytes::Bytes;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds it (or wrote since our last revision).
    #[error("held by another replica")]
    Taken,
    #[error("lease bucket: {0}")]
    Nats(String),
}

/// A draining owner's lease value: `draining:<term>`.
pub const DRAINING: &str = "draining:";
/// How often a reclaim reads and writes again when the key changed in between.
const RECLAIM_ATTEMPTS: usize = 3;
/// The KV header that says a write is a delete or a purge (JetStream's KV convention).
const KV_OPERATION: &str = "KV-Operation";

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
    value: Bytes,
}

impl Lease {
    /// Takes the lease of `key` if nobody holds it.
    pub async fn take(
        store: &kv::Store,
        key: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let value = Bytes::from(replica.to_string());
        let started = Instant::now();
        match store.create(key, value.clone()).await {
            Ok(revision) => Ok(Self {
                store: store.clone(),
                key: key.to_string(),
                revision,
                term: revision,
                valid_until: started + margin(ttl),
                ttl,
                value,
            }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(LeaseError::Taken),
            Err(e) => Err(LeaseError::Nats(e.to_string())),
        }
    }

    /// Renews it; `Taken` when someone else wrote it since (this owner is stale).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let started = Instant::now();
        match self
            .store
            .update(&self.key, self.value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.valid_until = started + margin(self.ttl);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(LeaseError::Taken),
            Err(e) => Err(LeaseError::Nats(e.to_string())),
        }
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
                Some((revision, value)) if value == self.value => {
                    self.revision = revision;
                    self.renew().await
                }
                Some(_) => return Err(LeaseError::Taken),
                None => match self.store.create(&self.key, self.value.clone()).await {
                    Ok(revision) => {
                        self.revision = revision;
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
        self.value = Bytes::from(format!("{DRAINING}{}", self.term));
        self.renew().await
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
