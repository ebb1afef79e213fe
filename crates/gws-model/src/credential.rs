//! An agent's GWS credential (HTTP Basic) and the key its upstream state is stored under.
//!
//! The key is a SHA-256 of the whole credential, salted with a secret drawn at process start,
//! so two callers share upstream state only when they present the same user *and* password,
//! the password never sits in a map key, and the key prefix that logs show cannot be used to
//! test password guesses offline. `Debug` never prints the password.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use std::fmt;

/// Longest `authorization` value accepted: GWS user names and passwords are short, and an
/// unbounded header would be decoded and hashed for nothing.
const MAX_HEADER_LEN: usize = 4096;

/// Why a credential was refused before any upstream call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("no credentials: send metadata `authorization: Basic base64(user:password)`")]
    Missing,
    #[error("unsupported authorization scheme: only `Basic` is accepted")]
    UnsupportedScheme,
    #[error("malformed Basic credentials: {0}")]
    Malformed(&'static str),
}

/// The key an agent's upstream state is stored under: a hash of the credential.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey([u8; 32]);

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A short prefix is enough to tell agents apart in logs and reveals nothing useful.
        write!(
            f,
            "AgentKey({:02x}{:02x}{:02x}{:02x})",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A GWS agent's user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    user: String,
    password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credential {
    pub fn new(
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, CredentialError> {
        let (user, password) = (user.into(), password.into());
        if user.is_empty() {
            return Err(CredentialError::Malformed("empty user name"));
        }
        if user.contains(':') {
            return Err(CredentialError::Malformed("user name contains ':'"));
        }
        if user.len() + password.len() > MAX_HEADER_LEN {
            return Err(CredentialError::Malformed("credentials too long"));
        }
        Ok(Self { user, password })
    }

    /// Parses an `authorization` header value: `Basic base64(user:password)`.
    pub fn from_authorization(value: &str) -> Result<Self, CredentialError> {
        if value.len() > MAX_HEADER_LEN {
            return Err(CredentialError::Malformed("authorization value too long"));
        }
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(CredentialError::UnsupportedScheme);
        }
        let decoded = STANDARD
            .decode(rest.trim())
            .map_err(|_| CredentialError::Malformed("not base64"))?;
        let text =
            String::from_utf8(decoded).map_err(|_| CredentialError::Malformed("not UTF-8"))?;
        let (user, password) = text.split_once(':').ok_or(CredentialError::Malformed(
            "no ':' between user and password",
        ))?;
        Self::new(user, password)
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The `authorization` header value for this credential.
    pub fn authorization(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.user, self.password))
        )
    }

    pub fn key(&self) -> AgentKey {
        static SALT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let salt = SALT.get_or_init(rand::random);
        let mut hasher = Sha256::new();
        hasher.update(salt);
        // Length-prefix the user so ("a:b", "c") and ("a", "b:c") can never collide.
        hasher.update((self.user.len() as u64).to_be_bytes());
        hasher.update(self.user.as_bytes());
        hasher.update(self.password.as_bytes());
        AgentKey(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_and_round_trips() {
        let c = Credential::new("agent1", "p:w").unwrap();
        let parsed = Credential::from_authorization(&c.authorization()).unwrap();
        assert_eq!(parsed, c);
        assert_eq!(parsed.password(), "p:w");
        assert!(
            Credential::from_authorization("basic YTpi").is_ok(),
            "scheme is case-insensitive"
        );
    }

    #[test]
    fn rejects_other_schemes_and_garbage() {
        assert_eq!(
            Credential::from_authorization("Bearer abc"),
            Err(CredentialError::UnsupportedScheme)
        );
        assert!(matches!(
            Credential::from_authorization("Basic !!!"),
            Err(CredentialError::Malformed(_))
        ));
        // "nocolon" in base64
        assert!(matches!(
            Credential::from_authorization("Basic bm9jb2xvbg=="),
            Err(CredentialError::Malformed(_))
        ));
        assert!(matches!(
            Credential::from_authorization("Basic Og=="),
            Err(CredentialError::Malformed(_))
        ));
        let huge = format!("Basic {}", "A".repeat(10_000));
        assert!(matches!(
            Credential::from_authorization(&huge),
            Err(CredentialError::Malformed(_))
        ));
    }

    #[test]
    fn keys_differ_per_credential_and_debug_hides_password() {
        let a = Credential::new("a", "secret").unwrap();
        let b = Credential::new("a", "other").unwrap();
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), a.clone().key());
        let shown = format!("{a:?} {:?}", a.key());
        assert!(!shown.contains("secret"), "{shown}");
    }
}
