//! Small deterministic building blocks: a stateless hash, a seeded generator, base64 engines, JSON
//! helpers and owner-only files.
//!
//! Everything the emulator derives from its seed goes through [`hash`] or [`SplitMix`], so the same
//! seed always gives the same mailboxes, IDs and fault sequence.

use std::path::Path;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;

/// base64url that accepts input with or without `=` padding.
pub(crate) const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard base64 that accepts input with or without `=` padding.
pub(crate) const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64url or standard base64, padded or not, ignoring line breaks.
pub(crate) fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    URL_SAFE_LENIENT
        .decode(&compact)
        .ok()
        .or_else(|| STANDARD_LENIENT.decode(&compact).ok())
}

/// SplitMix64 finaliser: a good 64-bit mixing function.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stateless hash of several words; the basis of lazy, order-independent generation.
pub(crate) fn hash(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |acc, &part| mix(acc ^ part))
}

/// Hashes a string into a word (FNV-1a), for seeding per-mailbox streams from addresses.
pub(crate) fn hash_str(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |acc, b| {
        (acc ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A small seeded generator (SplitMix64); deterministic and cheap to keep per mailbox.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Removes `null` members and empty arrays/objects, as Google omits absent and empty fields.
pub(crate) fn strip_empty(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for member in map.values_mut() {
                strip_empty(member);
            }
            map.retain(|_, member| match member {
                serde_json::Value::Null => false,
                serde_json::Value::Array(items) => !items.is_empty(),
                _ => true,
            });
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_empty),
        _ => {}
    }
}

/// A JSON response; `google_shape` strips nulls and empty arrays the way Google's API omits them.
pub(crate) fn json_response<T: Serialize>(
    status: StatusCode,
    body: &T,
    google_shape: bool,
) -> Response {
    let bytes = if google_shape {
        match serde_json::to_value(body) {
            Ok(mut value) => {
                strip_empty(&mut value);
                serde_json::to_vec(&value)
            }
            Err(e) => Err(e),
        }
    } else {
        serde_json::to_vec(body)
    };
    match bytes {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=UTF-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "Could not serialise an emulator response.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Parses a raw query string into ordered pairs (repeated keys kept, as Google's APIs use them).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// The last value of a query parameter.
pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every value of a repeated query parameter.
pub(crate) fn params<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Writes `contents` to a file only its owner can read (mode 0600 on Unix), for keys and
/// secrets.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let mut file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_empty_removes_nulls_and_empty_arrays_recursively() {
        let mut value =
            serde_json::json!({"a": null, "b": [], "c": {"d": null, "e": 1}, "f": [{"g": null}]});
        strip_empty(&mut value);
        assert_eq!(value, serde_json::json!({"c": {"e": 1}, "f": [{}]}));
    }

    #[test]
    fn lenient_base64_accepts_padded_and_unpadded_input() {
        assert_eq!(decode_base64_any("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64_any("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64_any("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
    }

    #[test]
    fn split_mix_is_deterministic() {
        let mut a = SplitMix::new(7);
        let mut b = SplitMix::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        assert!(a.unit() < 1.0);
    }
}
