//! Confluent wire format: byte 0 is the magic byte 0, bytes 1..5 the big-endian schema id,
//! then the Avro binary datum.

use thiserror::Error;

/// The only magic byte the Confluent format defines.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("value is empty (a tombstone?): expected Confluent wire format (magic byte 0, 4-byte schema id, Avro datum)")]
    Empty,
    #[error("value is {0} bytes, shorter than the 5-byte Confluent header: the producer did not use a Schema Registry serializer")]
    TooShort(usize),
    #[error("magic byte is {0}, expected 0: the value is not in Confluent wire format (produce it with a Schema Registry serializer)")]
    BadMagic(u8),
}

/// A value split into its schema id and Avro datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    pub datum: &'a [u8],
}

/// Splits a Confluent-framed value without copying.
pub fn decode_frame(value: &[u8]) -> Result<Framed<'_>, WireError> {
    match value {
        [] => Err(WireError::Empty),
        [magic, ..] if *magic != MAGIC_BYTE => Err(WireError::BadMagic(*magic)),
        v if v.len() < HEADER_LEN => Err(WireError::TooShort(v.len())),
        v => Ok(Framed {
            schema_id: u32::from_be_bytes([v[1], v[2], v[3], v[4]]),
            datum: &v[HEADER_LEN..],
        }),
    }
}

/// Frames an Avro datum with its schema id.
pub fn encode_frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode_frame(0x0102_0304, b"datum");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        let parsed = decode_frame(&framed).unwrap();
        assert_eq!(parsed.schema_id, 0x0102_0304);
        assert_eq!(parsed.datum, b"datum");
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(decode_frame(b""), Err(WireError::Empty));
        assert_eq!(decode_frame(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert_eq!(
            decode_frame(b"{\"json\":1}"),
            Err(WireError::BadMagic(b'{'))
        );
        // A header with an empty datum is framed correctly; the datum decoder judges it.
        assert_eq!(decode_frame(&[0, 0, 0, 0, 7]).unwrap().datum, b"");
    }
}
