//! Which events a subscriber wants: session ids and notification types (empty = all).

use crate::proto::NotificationType;
use std::collections::HashSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub session_ids: HashSet<String>,
    pub notification_types: HashSet<NotificationType>,
}

impl Filter {
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
