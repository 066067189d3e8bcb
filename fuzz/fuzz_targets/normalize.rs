//! Arbitrary bytes into `normalize`: it must never panic and must return
//! clean text.
//!
//! libfuzzer aborts on every panic, even one `normalize`'s `catch_unwind`
//! would catch, so panics are findings. The one exception: mail-parser 0.11
//! marks some states it recovers from with `debug_assert!(false, ..)`. Those
//! are compiled out of release builds, and in debug builds `normalize` turns
//! them into `parse_error`; the hook below lets exactly those unwind.

#![no_main]

use std::panic;

use libfuzzer_sys::fuzz_target;
use gmail_normalize::{NormalizeLimits, normalize};

/// mail-parser's recoverable-state debug assertions (`src/parsers/message.rs`).
const MAIL_PARSER_DEBUG_ASSERTS: &[&str] = &[
    "Invalid part ID, could not find message.",
    "Failed to restore parent message. Aborting.",
    "Invalid part ID, could not find multipart.",
    "This should not have happened.",
];

fn is_mail_parser_debug_assert(message: &str) -> bool {
    MAIL_PARSER_DEBUG_ASSERTS
        .iter()
        .any(|m| message.contains(m))
}

fuzz_target!(
    init: {
        let abort_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            let in_mail_parser = info.location().is_some_and(|l| l.file().contains("mail-parser"));
            if !(in_mail_parser && is_mail_parser_debug_assert(message)) {
                abort_hook(info);
            }
        }));
    },
    |data: &[u8]| {
        let limits = NormalizeLimits {
            max_message_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
        };
        let m = normalize(data, &limits);
        if let Some(error) = &m.parse_error {
            assert!(
                !error.starts_with("parser panicked") || is_mail_parser_debug_assert(error),
                "{error}"
            );
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
    }
);
