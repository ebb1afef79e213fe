//! Stand-in until the real mapper lands (same interface).
use crate::proto;
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    StateChange(proto::SessionStateChange),
    MessageLog(proto::MessageLogUpdate),
}
impl Notification {
    pub fn session_id(&self) -> &str {
        match self {
            Self::StateChange(s) => s.session.as_ref().map(|s| s.id.as_str()).unwrap_or(""),
            Self::MessageLog(m) => &m.session_id,
        }
    }
    pub fn notification_type(&self) -> Option<proto::NotificationType> {
        match self {
            Self::StateChange(s) => proto::NotificationType::try_from(s.notification_type).ok(),
            Self::MessageLog(_) => None,
        }
    }
}
#[derive(Debug, thiserror::Error)]
#[error("unmappable")]
pub struct MappingError;
pub fn map_notification(_data: &serde_json::Value) -> Result<Notification, MappingError> {
    Err(MappingError)
}
pub fn user_data_to_json(_v: &proto::UserDataValue) -> serde_json::Value {
    serde_json::Value::Null
}
