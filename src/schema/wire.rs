//! The two wire formats schema-aware producers write, and the Protobuf message indexes inside them.
//!
//! - Confluent: magic byte `0`, the schema id as a 4-byte big-endian integer, then the payload. For
//!   Protobuf the payload starts with the message indexes: a zigzag varint count followed by that many
//!   zigzag varint indexes (the path to the message type in the `.proto` file), where a single `0` byte is
//!   shorthand for `[0]`, the file's first message.
//! - Glue: header version byte `3`, a compression byte (`0` none, `5` zlib), the 16-byte schema version
//!   UUID, then the (possibly zlib-compressed) payload. For Protobuf the payload starts with one unsigned
//!   varint: the message's position among all message types of the file, nested ones included, sorted by
//!   full name (the Glue SerDe library's `MessageIndexFinder`).

use std::borrow::Cow;
use std::io::Read as _;

/// Confluent's magic byte.
pub const CONFLUENT_MAGIC: u8 = 0;
/// The Glue SerDe library's header version byte.
pub const GLUE_HEADER_VERSION: u8 = 3;
/// Glue's compression byte for an uncompressed payload.
pub const GLUE_COMPRESSION_NONE: u8 = 0;
/// Glue's compression byte for a zlib-compressed payload.
pub const GLUE_COMPRESSION_ZLIB: u8 = 5;
/// Glue's header: version, compression, UUID.
pub const GLUE_HEADER_LEN: usize = 18;

/// Limit on a decompressed Glue payload: a record can be at most what a broker accepts, and a zlib bomb
/// must not take the relay's memory.
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes do not have the framing the registry's producers write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Fewer bytes than the header needs.
    #[error("{len} bytes are too short for the {format} header ({needed} bytes)")]
    TooShort {
        /// `Confluent` or `Glue`.
        format: &'static str,
        /// Bytes present.
        len: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// The first byte is not the format's magic / version byte.
    #[error("first byte is {found}, not the {format} {expected} byte {wanted}")]
    BadMagic {
        /// `Confluent` or `Glue`.
        format: &'static str,
        /// `magic` or `header version`.
        expected: &'static str,
        /// What the format requires.
        wanted: u8,
        /// The byte found.
        found: u8,
    },
    /// Glue's compression byte is neither 0 nor 5.
    #[error("Glue compression byte is {0}; known are 0 (none) and 5 (zlib)")]
    UnknownCompression(u8),
    /// zlib decompression failed or exceeded [`MAX_DECOMPRESSED_BYTES`].
    #[error("zlib payload does not decompress: {0}")]
    Zlib(String),
    /// The Protobuf message indexes are malformed.
    #[error("Protobuf message indexes are malformed: {0}")]
    MessageIndexes(&'static str),
}

/// A Confluent-framed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfluentFrame<'a> {
    /// The registry's schema id.
    pub schema_id: u32,
    /// Everything after the 5-byte header (Protobuf message indexes included).
    pub payload: &'a [u8],
}

/// Splits Confluent's header off `bytes`.
pub fn confluent(bytes: &[u8]) -> Result<ConfluentFrame<'_>, FramingError> {
    if bytes.len() < 5 {
        return Err(FramingError::TooShort { format: "Confluent", len: bytes.len(), needed: 5 });
    }
    if bytes[0] != CONFLUENT_MAGIC {
        return Err(FramingError::BadMagic {
            format: "Confluent",
            expected: "magic",
            wanted: CONFLUENT_MAGIC,
            found: bytes[0],
        });
    }
    let schema_id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok(ConfluentFrame { schema_id, payload: &bytes[5..] })
}

/// A Glue-framed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlueFrame<'a> {
    /// The schema version id.
    pub schema_version_id: uuid::Uuid,
    /// The payload, decompressed when it was compressed.
    pub payload: Cow<'a, [u8]>,
}

/// Splits Glue's header off `bytes` and decompresses the payload.
pub fn glue(bytes: &[u8]) -> Result<GlueFrame<'_>, FramingError> {
    if bytes.len() < GLUE_HEADER_LEN {
        return Err(FramingError::TooShort { format: "Glue", len: bytes.len(), needed: GLUE_HEADER_LEN });
    }
    if bytes[0] != GLUE_HEADER_VERSION {
        return Err(FramingError::BadMagic {
            format: "Glue",
            expected: "header version",
            wanted: GLUE_HEADER_VERSION,
            found: bytes[0],
        });
    }
    let uuid_bytes: [u8; 16] = bytes[2..GLUE_HEADER_LEN].try_into().expect("16 bytes");
    let schema_version_id = uuid::Uuid::from_bytes(uuid_bytes);
    let body = &bytes[GLUE_HEADER_LEN..];
    let payload = match bytes[1] {
        GLUE_COMPRESSION_NONE => Cow::Borrowed(body),
        GLUE_COMPRESSION_ZLIB => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(body)
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| FramingError::Zlib(e.to_string()))?;
            if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
                return Err(FramingError::Zlib(format!("more than {MAX_DECOMPRESSED_BYTES} bytes")));
            }
            Cow::Owned(out)
        }
        other => return Err(FramingError::UnknownCompression(other)),
    };
    Ok(GlueFrame { schema_version_id, payload })
}

/// Reads one unsigned LEB128 varint (at most 32 bits), returning it and the rest.
fn read_uvarint(bytes: &[u8]) -> Result<(u32, &[u8]), FramingError> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = u32::try_from(value).map_err(|_| FramingError::MessageIndexes("varint exceeds 32 bits"))?;
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err(FramingError::MessageIndexes(if bytes.len() < 5 { "truncated varint" } else { "varint longer than 5 bytes" }))
}

fn read_zigzag(bytes: &[u8]) -> Result<(i32, &[u8]), FramingError> {
    let (raw, rest) = read_uvarint(bytes)?;
    Ok((((raw >> 1) as i32) ^ -((raw & 1) as i32), rest))
}

/// Largest number of message indexes accepted (the nesting depth of the message type).
const MAX_MESSAGE_INDEXES: i32 = 100;

/// Reads Confluent's Protobuf message indexes from the start of `payload`: the path to the message type
/// (top-level index, then nested indexes), and the message bytes after them.
pub fn confluent_message_indexes(payload: &[u8]) -> Result<(Vec<usize>, &[u8]), FramingError> {
    let (count, mut rest) = read_zigzag(payload)?;
    if count == 0 {
        // Confluent's optimisation for the most common case: the file's first message.
        return Ok((vec![0], rest));
    }
    if !(1..=MAX_MESSAGE_INDEXES).contains(&count) {
        return Err(FramingError::MessageIndexes("count is negative or above 100"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (index, after) = read_zigzag(rest)?;
        let index = usize::try_from(index).map_err(|_| FramingError::MessageIndexes("negative index"))?;
        indexes.push(index);
        rest = after;
    }
    Ok((indexes, rest))
}

/// Reads Glue's Protobuf message index from the start of `payload`, and the message bytes after it.
pub fn glue_message_index(payload: &[u8]) -> Result<(usize, &[u8]), FramingError> {
    let (index, rest) = read_uvarint(payload)?;
    Ok((index as usize, rest))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write as _;

    pub(crate) fn confluent_frame(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![CONFLUENT_MAGIC];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub(crate) fn glue_frame(id: uuid::Uuid, payload: &[u8], zlib: bool) -> Vec<u8> {
        let mut out = vec![GLUE_HEADER_VERSION, if zlib { GLUE_COMPRESSION_ZLIB } else { GLUE_COMPRESSION_NONE }];
        out.extend_from_slice(id.as_bytes());
        if zlib {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(payload).unwrap();
            out.extend(encoder.finish().unwrap());
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    #[test]
    fn confluent_header_gives_big_endian_id_and_payload() {
        let frame = confluent(&[0, 0, 0, 1, 2, b'x', b'y']).unwrap();
        assert_eq!(frame, ConfluentFrame { schema_id: 258, payload: b"xy" });
    }

    #[test]
    fn confluent_rejects_short_input_and_wrong_magic() {
        assert_eq!(confluent(&[0, 0, 0]), Err(FramingError::TooShort { format: "Confluent", len: 3, needed: 5 }));
        assert_eq!(
            confluent(b"{\"a\":1}"),
            Err(FramingError::BadMagic { format: "Confluent", expected: "magic", wanted: 0, found: b'{' })
        );
    }

    #[test]
    fn glue_header_gives_uuid_and_plain_or_zlib_payload() {
        let id = uuid::Uuid::parse_str("b7b4a7f0-9c0e-4d1e-8b6a-4a4f7d1c2e3f").unwrap();
        for zlib in [false, true] {
            let bytes = glue_frame(id, b"hello avro", zlib);
            let frame = glue(&bytes).unwrap();
            assert_eq!(frame.schema_version_id, id);
            assert_eq!(&*frame.payload, b"hello avro");
        }
    }

    #[test]
    fn glue_rejects_wrong_version_unknown_compression_and_bad_zlib() {
        let id = uuid::Uuid::nil();
        let mut bytes = glue_frame(id, b"x", false);
        bytes[0] = 2;
        assert_eq!(
            glue(&bytes),
            Err(FramingError::BadMagic { format: "Glue", expected: "header version", wanted: 3, found: 2 })
        );
        bytes[0] = 3;
        bytes[1] = 9;
        assert_eq!(glue(&bytes), Err(FramingError::UnknownCompression(9)));
        bytes[1] = GLUE_COMPRESSION_ZLIB;
        assert!(matches!(glue(&bytes), Err(FramingError::Zlib(_))));
        assert_eq!(glue(&[3, 0, 1]), Err(FramingError::TooShort { format: "Glue", len: 3, needed: 18 }));
    }

    #[test]
    fn confluent_message_indexes_shorthand_and_full_form() {
        // A single 0: the first message.
        assert_eq!(confluent_message_indexes(&[0, 8, 1]).unwrap(), (vec![0], &[8u8, 1][..]));
        // Count 2 (zigzag 4), indexes 1 (zigzag 2) and 0: the first nested message of the second message.
        assert_eq!(confluent_message_indexes(&[4, 2, 0, 8, 1]).unwrap(), (vec![1, 0], &[8u8, 1][..]));
        // Count 1, index 300 (zigzag 600 = 0xd8 0x04).
        assert_eq!(confluent_message_indexes(&[2, 0xd8, 0x04]).unwrap(), (vec![300], &[][..]));
        // Count -1 (zigzag 1) and a truncated varint are malformed.
        assert!(confluent_message_indexes(&[1]).is_err());
        assert!(confluent_message_indexes(&[2, 0x80]).is_err());
    }

    #[test]
    fn glue_message_index_is_one_unsigned_varint() {
        assert_eq!(glue_message_index(&[2, 8, 1]).unwrap(), (2, &[8u8, 1][..]));
        assert_eq!(glue_message_index(&[0xac, 0x02]).unwrap(), (300, &[][..]));
        assert!(glue_message_index(&[]).is_err());
    }
}
