//! Which events a subscriber wants: session ids and notification types (empty = all).

use crate::mapping::Notification;
use crate::proto::NotificationType;
use std::collections::HashSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub session_ids: HashSet<String>,
    pub notification_types: HashSet<NotificationType>,
}

impl Filter {
    /// Notices are about the stream and always pass; events pass when both sets allow them.
    /// A `MessageLogUpdate` has no `NotificationType`, so a non-empty type filter excludes it:
    /// asking for, say, PROPERTIES_UPDATED only means no transcript traffic.
    pub fn matches(&self, event: &Notification) -> bool {
        let session_ok =
            self.session_ids.is_empty() || self.session_ids.contains(event.session_id());
        let type_ok = self.notification_types.is_empty()
            || event
                .notification_type()
                .is_some_and(|t| self.notification_types.contains(&t));
        session_ok && type_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn change(id: &str, t: NotificationType) -> Notification {
        Notification::StateChange(proto::SessionStateChange {
            notification_type: t as i32,
            session: Some(proto::SmsSession {
                id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn filters_by_session_and_type() {
        let all = Filter::default();
        let e = change("s1", NotificationType::PropertiesUpdated);
        assert!(all.matches(&e));
        let by_session = Filter {
            session_ids: ["s2".to_string()].into(),
            ..Default::default()
        };
        assert!(!by_session.matches(&e));
        assert!(by_session.matches(&change("s2", NotificationType::Error)));
        let by_type = Filter {
            notification_types: [NotificationType::StatusChange].into(),
            ..Default::default()
        };
        assert!(!by_type.matches(&e));
        assert!(by_type.matches(&change("s1", NotificationType::StatusChange)));
        let log = Notification::MessageLog(proto::MessageLogUpdate {
            session_id: "s1".into(),
            messages: vec![],
        });
        assert!(all.matches(&log));
        assert!(!by_type.matches(&log));
    }
}
