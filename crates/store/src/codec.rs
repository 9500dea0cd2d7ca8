//! Byte layouts of the embedded store's records: one version of a key, and the keys one revision touched.

use bytes::Bytes;

use crate::Revision;

const TAG_PUT: u8 = 1;
const TAG_TOMBSTONE: u8 = 2;
const HEADER: usize = 1 + 8 + 8;

/// One version of a key in the history table, keyed there by (key, mod revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Put {
        create_revision: Revision,
        version: i64,
        value: Bytes,
    },
    Tombstone,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Record::Put {
                create_revision,
                version,
                value,
            } => {
                let mut out = Vec::with_capacity(HEADER + value.len());
                out.push(TAG_PUT);
                out.extend_from_slice(&create_revision.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(value);
                out
            }
            Record::Tombstone => vec![TAG_TOMBSTONE],
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, String> {
        match bytes.first() {
            Some(&TAG_PUT) if bytes.len() >= HEADER => Ok(Record::Put {
                create_revision: i64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
                version: i64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes")),
                value: Bytes::copy_from_slice(&bytes[HEADER..]),
            }),
            Some(&TAG_TOMBSTONE) if bytes.len() == 1 => Ok(Record::Tombstone),
            _ => Err(format!(
                "history record of {} bytes has an unknown layout",
                bytes.len()
            )),
        }
    }
}

/// The keys written at one revision, length-prefixed, for watch replay and compaction.
pub(crate) fn encode_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out
}

pub(crate) fn decode_keys(mut bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err("truncated key length in revision log".into());
        }
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let rest = &bytes[4..];
        if rest.len() < len {
            return Err("truncated key in revision log".into());
        }
        let key = std::str::from_utf8(&rest[..len])
            .map_err(|_| "key in revision log is not UTF-8".to_string())?;
        keys.push(key.to_string());
        bytes = &rest[len..];
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let cases = [
            Record::Put {
                create_revision: 7,
                version: 3,
                value: Bytes::from_static(b"{\"kind\":\"Pod\"}"),
            },
            Record::Put {
                create_revision: i64::MAX,
                version: 1,
                value: Bytes::new(),
            },
            Record::Tombstone,
        ];
        for record in cases {
            assert_eq!(Record::decode(&record.encode()), Ok(record));
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        for bytes in [&b""[..], &[9, 0, 0], &[TAG_PUT, 1, 2], &[TAG_TOMBSTONE, 0]] {
            assert!(Record::decode(bytes).is_err(), "{bytes:?} decoded");
        }
    }

    #[test]
    fn key_lists_round_trip_and_reject_truncation() {
        let keys = ["/registry/pods/default/a", "", "/x/ü"];
        let encoded = encode_keys(keys);
        assert_eq!(decode_keys(&encoded).unwrap(), keys);
        assert!(decode_keys(&encoded[..encoded.len() - 1]).is_err());
        assert!(decode_keys(&[0, 0]).is_err());
    }
}
