//! The caller's GWS credential, from `authorization: Basic ...` metadata, or the operator's
//! default agent credential when the call carries none.

use crate::upstream::{Credential, CredentialError};
use tonic::metadata::MetadataMap;

/// The credential to act with. A call that carries an `authorization` value is judged on it
/// alone: a bad one is never silently replaced by the default credential.
pub fn credential(
    metadata: &MetadataMap,
    default: Option<&Credential>,
) -> Result<Credential, CredentialError> {
    match metadata.get("authorization") {
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| CredentialError::Malformed("authorization is not ASCII"))?;
            Credential::from_authorization(value)
        }
        None => default.cloned().ok_or(CredentialError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_wins_and_default_fills_in() {
        let default = Credential::new("dflt", "x").unwrap();
        let mut md = MetadataMap::new();
        assert_eq!(credential(&md, None), Err(CredentialError::Missing));
        assert_eq!(credential(&md, Some(&default)).unwrap().user(), "dflt");
        md.insert("authorization", "Bearer t".parse().unwrap());
        assert_eq!(
            credential(&md, Some(&default)),
            Err(CredentialError::UnsupportedScheme)
        );
        let c = Credential::new("u", "p").unwrap();
        md.insert("authorization", c.authorization().parse().unwrap());
        assert_eq!(credential(&md, Some(&default)).unwrap(), c);
    }
}
