//! Encoding of openraft's own records (entries, votes, log ids, membership,
//! snapshot metadata): postcard, prefixed with a format version byte so a
//! later format can be told apart. Application commands inside entries are
//! protobuf bytes already (see `app`).

use serde::{Serialize, de::DeserializeOwned};

/// The one format written today.
pub const FORMAT_V1: u8 = 1;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Empty bytes where a record was expected.
    #[error("empty record")]
    Empty,
    /// A version this build does not know (written by a newer tidal?).
    #[error("record format version {0} is not known to this build (it knows {FORMAT_V1})")]
    UnknownVersion(u8),
    /// postcard failed.
    #[error("malformed record: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes `value` as version byte + postcard.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    out.extend(postcard::to_allocvec(value)?);
    Ok(out)
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_checks() {
        let bytes = encode(&(7u64, "x".to_owned())).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(
            decode::<(u64, String)>(&bytes).unwrap(),
            (7, "x".to_owned())
        );
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>(&[9, 1]),
            Err(CodecError::UnknownVersion(9))
        ));
        assert!(matches!(
            decode::<String>(&[1, 200]),
            Err(CodecError::Postcard(_))
        ));
    }
}
