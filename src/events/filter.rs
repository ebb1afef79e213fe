//! Which events a subscriber wants: session ids and notification types (empty = all), and
//! whether it asked for snapshots.

use super::item::Item;
use super::replay::Stored;
use crate::proto::session_events_response::Event;
use crate::proto::{NotificationType, SessionEventsResponse, SessionSnapshot};
use std::collections::HashSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub session_ids: HashSet<String>,
    pub notification_types: HashSet<NotificationType>,
    /// Snapshots (`include_snapshot`) are delivered only to streams that asked for them.
    pub include_snapshot: bool,
}

impl Filter {
    /// Whether this subscriber gets a stored (notification) item.
    pub fn select(&self, stored: &Stored) -> Option<Item> {
        self.matches(&stored.session_id, stored.notification_type)
            .then(|| stored.response.clone())
    }

    /// What of a snapshot item this subscriber gets: nothing unless it asked for snapshots;
    /// under a session filter, a copy holding just its sessions.
    pub fn snapshot(&self, item: &Item) -> Option<Item> {
        if !self.include_snapshot {
            return None;
        }
        let Some(Event::Snapshot(snapshot)) = &item.event else {
            return None;
        };
        if self.session_ids.is_empty() {
            return Some(item.clone());
        }
        Some(Item::new(SessionEventsResponse {
            event: Some(Event::Snapshot(SessionSnapshot {
                sessions: snapshot
                    .sessions
                    .iter()
                    .filter(|s| self.session_ids.contains(&s.id))
                    .cloned()
                    .collect(),
            })),
            resume_token: item.resume_token.clone(),
            receive_time: item.receive_time,
        }))
    }

    /// Whether an event of `session_id` with `notification_type` passes (notices are about
    /// the stream and bypass filters). A `MessageLogUpdate` has no `NotificationType`, so a
    /// non-empty type filter excludes it: asking for, say, PROPERTIES_UPDATED only means no
    /// transcript traffic.
    pub fn matches(&self, session_id: &str, notification_type: Option<NotificationType>) -> bool {
        let session_ok = self.session_ids.is_empty() || self.session_ids.contains(session_id);
        let type_ok = self.notification_types.is_empty()
            || notification_type.is_some_and(|t| self.notification_types.contains(&t));
        session_ok && type_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_session_and_type() {
        let props = Some(NotificationType::PropertiesUpdated);
        let all = Filter::default();
        assert!(all.matches("s1", props));
        let by_session = Filter {
            session_ids: ["s2".to_string()].into(),
            ..Default::default()
        };
        assert!(!by_session.matches("s1", props));
        assert!(by_session.matches("s2", Some(NotificationType::Error)));
        let by_type = Filter {
            notification_types: [NotificationType::StatusChange].into(),
            ..Default::default()
        };
        assert!(!by_type.matches("s1", props));
        assert!(by_type.matches("s1", Some(NotificationType::StatusChange)));
        // A message log update (no notification type).
        assert!(all.matches("s1", None));
        assert!(!by_type.matches("s1", None));
    }
}
