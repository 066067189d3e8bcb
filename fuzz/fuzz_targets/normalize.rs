//! Arbitrary bytes into `normalize`: it must never panic (its own
//! `catch_unwind` would hide a panic, so the target also checks that none
//! was reported) and must return clean text.

#![no_main]

use gmail_ingest::sync::normalize::{NormalizeLimits, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = NormalizeLimits {
        max_message_bytes: 64 * 1024,
        max_body_bytes: 16 * 1024,
    };
    let m = normalize(data, &limits);
    if let Some(error) = &m.parse_error {
        assert!(!error.starts_with("parser panicked"), "{error}");
    }
    for body in m.body_text.iter().chain(&m.body_html) {
        assert!(!body.contains('\0'));
        assert!(body.len() <= limits.max_body_bytes);
    }
    let single_line = m
        .subject
        .iter()
        .chain(&m.message_id)
        .chain(&m.in_reply_to)
        .chain(&m.references)
        .chain(
            m.addresses
                .iter()
                .flat_map(|a| a.name.iter().chain([&a.address])),
        )
        .chain(
            m.attachments
                .iter()
                .flat_map(|a| a.filename.iter().chain([&a.part_id])),
        );
    for s in single_line {
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }
});
