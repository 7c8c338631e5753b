//! Version bodies at rest on DynamoDB, compressed: read units are charged
//! on stored bytes, and FHIR JSON compressed one resource at a time with a
//! dictionary trained on FHIR R4 is several times smaller: a Synthea
//! resource of 1,259 bytes is about 200 on patients the dictionary was not
//! trained on (`scripts/train-body-dictionary.py`), the generated sample's
//! 893 bytes are 233 (`functions/benches/body_codec.rs`).
//!
//! A version item holds its body in one of two attributes:
//! - `bz` (binary): one byte naming the dictionary, then a zstd frame
//!   (with its content size, without checksum or dictionary id);
//! - `body` (string): the JSON as is, for items written before bodies were
//!   compressed and for bodies that compression would not shrink.
//!
//! Decompression gives back the exact bytes written: what an export
//! writes is unchanged by a byte. Dictionaries are never changed once
//! shipped; a better one gets the next number and the old stays here, so
//! every item ever written stays readable.

use std::borrow::Cow;
use std::cell::RefCell;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use zstd::bulk::{Compressor, Decompressor};

use super::dynamo::Item;
use crate::ports::{PortError, PortResult};

/// The attribute of a compressed body, and of a plain one.
pub const COMPRESSED: &str = "bz";
pub const PLAIN: &str = "body";

/// The dictionaries by number; new items use the last.
const DICTIONARIES: &[(u8, &[u8])] = &[(1, include_bytes!("../../dictionaries/fhir-r4-1.zdict"))];

/// Level 9: 4.5% fewer bytes at rest than zstd's default level 3, for
/// about 20 µs more per write (23 µs a resource; level 19 saves 8% more
/// for 220 µs). Decompression costs the same at any level, and reads are
/// what every export pays (`functions/benches/body_codec.rs`).
const LEVEL: i32 = 9;

/// A body larger than this cannot be an item's (DynamoDB's 400 KB item
/// limit), so a frame that claims more is corrupt.
const MAX_BODY_BYTES: usize = 400 * 1024;

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSORS: RefCell<Vec<(u8, Decompressor<'static>)>> = const { RefCell::new(Vec::new()) };
}

/// The attribute (name and value) that stores `json`.
pub fn encode(json: &str) -> (&'static str, AttributeValue) {
    match compress(json.as_bytes()) {
        Some(bytes) if bytes.len() < json.len() => {
            (COMPRESSED, AttributeValue::B(Blob::new(bytes)))
        }
        _ => (PLAIN, AttributeValue::S(json.to_string())),
    }
}

/// An item's body as JSON text, whichever way it is stored; `None` when it
/// has none (a tombstone, or a projection without it).
pub fn decode(item: &Item) -> PortResult<Option<Cow<'_, str>>> {
    match (item.get(COMPRESSED), item.get(PLAIN)) {
        (Some(AttributeValue::B(blob)), _) => {
            decompress(blob.as_ref()).map(|s| Some(Cow::Owned(s)))
        }
        (_, Some(AttributeValue::S(text))) => Ok(Some(Cow::Borrowed(text))),
        _ => Ok(None),
    }
}

/// `[dictionary number] ++ zstd frame`, with the newest dictionary.
fn compress(json: &[u8]) -> Option<Vec<u8>> {
    let &(number, dictionary) = DICTIONARIES.last()?;
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut c = Compressor::with_dictionary(LEVEL, dictionary).ok()?;
            // The leading byte names the dictionary.
            c.include_dictid(false).ok()?;
            c.include_checksum(false).ok()?;
            *cell = Some(c);
        }
        let frame = cell.as_mut()?.compress(json).ok()?;
        let mut out = Vec::with_capacity(frame.len() + 1);
        out.push(number);
        out.extend_from_slice(&frame);
        Some(out)
    })
}

fn decompress(bytes: &[u8]) -> PortResult<String> {
    let corrupt = |why: &str| PortError::corrupt("a stored record is corrupt", why.to_string());
    let (&number, frame) = bytes
        .split_first()
        .ok_or_else(|| corrupt("an empty body"))?;
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .filter(|n| *n as usize <= MAX_BODY_BYTES)
        .ok_or_else(|| corrupt("a compressed body without a valid size"))? as usize;
    let bytes = DECOMPRESSORS.with(|cell| {
        let mut decompressors = cell.borrow_mut();
        let at = match decompressors.iter().position(|(n, _)| *n == number) {
            Some(at) => at,
            None => {
                let (_, dictionary) = DICTIONARIES
                    .iter()
                    .find(|(n, _)| *n == number)
                    .ok_or_else(|| corrupt("a body compressed with an unknown dictionary"))?;
                let d = Decompressor::with_dictionary(dictionary)
                    .map_err(|e| corrupt(&e.to_string()))?;
                decompressors.push((number, d));
                decompressors.len() - 1
            }
        };
        decompressors[at]
            .1
            .decompress(frame, size)
            .map_err(|e| corrupt(&e.to_string()))
    })?;
    String::from_utf8(bytes).map_err(|_| corrupt("a compressed body that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn item(attr: (&'static str, AttributeValue)) -> Item {
        HashMap::from([(attr.0.to_string(), attr.1)])
    }

    #[test]
    fn bodies_come_back_byte_for_byte() {
        // Exact decimals and key order are the bytes themselves.
        let json = r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"},"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]}}"#;
        let (name, value) = encode(json);
        assert_eq!(name, COMPRESSED);
        let AttributeValue::B(blob) = &value else {
            panic!("not binary")
        };
        assert!(
            blob.as_ref().len() * 2 < json.len(),
            "{} bytes",
            blob.as_ref().len()
        );
        assert_eq!(blob.as_ref()[0], 1, "the dictionary's number leads");
        assert_eq!(decode(&item((name, value))).unwrap().as_deref(), Some(json));
    }

    #[test]
    fn plain_bodies_stay_readable_and_tiny_ones_stay_plain() {
        let old = item((PLAIN, AttributeValue::S(r#"{"a":1}"#.into())));
        assert_eq!(decode(&old).unwrap().as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(encode("{}").0, PLAIN);
        assert_eq!(decode(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let (_, value) = encode(&format!(
            r#"{{"resourceType":"Patient","id":"{}"}}"#,
            "x".repeat(200)
        ));
        let AttributeValue::B(blob) = value else {
            panic!("not binary")
        };
        let mut bytes = blob.into_inner();
        for damaged in [
            vec![],
            vec![9, 1, 2, 3],
            bytes[..bytes.len() / 2].to_vec(),
            {
                bytes[0] = 200;
                bytes.clone()
            },
        ] {
            let it = item((COMPRESSED, AttributeValue::B(Blob::new(damaged))));
            assert!(decode(&it).is_err());
        }
    }
}
