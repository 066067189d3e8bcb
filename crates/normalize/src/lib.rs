//! The MIME normalizer: one message's RFC 822 bytes (or Gmail's parsed part
//! tree) become a [`NormalizedMessage`].
//!
//! This crate depends on mail-parser and a few small crates, and on nothing
//! of gmail-ingest's: the product, the fuzz target and anyone else call it
//! the same way. It must never do I/O, log, read a clock or hold state.
//!
//! # Contract
//!
//! - **Pure.** No I/O, no logging, no clock, no global state: the output
//!   depends on the input bytes and the limits only.
//! - **Total.** Every input yields a `NormalizedMessage`; nothing panics.
//!   Damage is described in `parse_error` (one line) and whatever could be
//!   salvaged is kept. As a last resort each entry point runs inside
//!   [`std::panic::catch_unwind`]: a panic (in mail-parser or here) becomes
//!   `parse_error = "parser panicked: ..."` plus the top-level headers when
//!   those can still be read. This needs `panic = "unwind"` (the default
//!   profiles); the process-wide panic hook still runs and may print to
//!   stderr, which this module cannot prevent without touching global state.
//! - **Bounded.** Bodies are cut to `max_body_bytes` (on a char boundary,
//!   `truncated = true`); header-derived strings to 8 KiB; at most 2,000
//!   addresses, 500 references and 1,000 attachments are kept; the MIME tree
//!   is walked without recursion and reported to 64 levels. Attachments are
//!   decoded and hashed one at a time, so memory peaks at the input plus one
//!   decoded part (see `mime` for why).
//! - **Clean text.** Every string is valid UTF-8 without NUL (PostgreSQL
//!   `text` cannot hold it); single-line fields carry no control characters
//!   (an encoded word hiding `\r\nBcc:` yields spaces, not a line break);
//!   bodies have CRLF folded to LF.
//!
//! # Part ids
//!
//! Attachment `part_id`s follow Gmail's `partId`: the top-level part is
//! `""`, children of a multipart are numbered from 0 and joined with dots
//! (`"1"`, `"1.0"`, `"1.1"`). A nested `message/rfc822` is one attachment;
//! its inner parts are not listed (their bytes are in its hash).
//!
//! # Field rules
//!
//! - Subject, Message-ID, In-Reply-To, References and Date: first occurrence
//!   wins; ids lose their angle brackets; Date becomes RFC 3339 UTC, or
//!   `None` when absent or unparseable (not an error: Gmail's internalDate
//!   exists).
//! - Addresses: every From/Sender/Reply-To/To/Cc/Bcc header, groups
//!   flattened, in role order then header order, address lower-cased,
//!   duplicates of `(role, address)` dropped. A display name without an
//!   address (bare names, unbalanced quotes) is kept with `address = ""`.
//! - `body_text`: the text body parts mail-parser selects (text/plain, or
//!   text derived from HTML when a message or alternative has only HTML),
//!   joined by newlines. `body_html`: its text/html parts only.
//! - Attachments: every part mail-parser does not use as a body (binary
//!   parts, text parts with `Content-Disposition: attachment` or outside
//!   the body, `text/calendar`, nested messages). `inline` is the
//!   disposition when given, else "has a Content-ID".
//! - Charsets are converted by mail-parser's decoders (`full_encoding`);
//!   an unknown label is read as UTF-8 (lossy) and noted in `parse_error`.

mod headers;
mod mime;
mod model;
mod payload;
mod text;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

pub use model::{
    AddressRole, AttachmentMeta, MessageAddress, NormalizedMessage, UnknownAddressRole,
};
pub use payload::PayloadPart;
pub use text::snippet;

/// Size limits applied while normalizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalizeLimits {
    /// Inputs larger than this are still parsed for headers, addresses and
    /// attachment metadata, but marked `truncated` (`sync.max_message_bytes`).
    pub max_message_bytes: usize,
    /// The longest `body_text` / `body_html` kept, in bytes.
    pub max_body_bytes: usize,
}

impl Default for NormalizeLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 50_000_000,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Normalizes one RFC 822 message (Gmail `format=raw`, base64url-decoded).
pub fn normalize(raw: &[u8], limits: &NormalizeLimits) -> NormalizedMessage {
    guarded(
        || mime::normalize_raw(raw, limits),
        || mime::headers_only(raw),
    )
}

/// Normalizes Gmail's parsed part tree (`format=full` or `format=metadata`).
///
/// Attachments whose content Gmail keeps out of line (`attachment_id` set,
/// no `body`) get `size_bytes` from `body_size` and an empty `sha256`; a
/// text body kept out of line is missing and the result is `truncated`.
pub fn normalize_payload(part: &PayloadPart, limits: &NormalizeLimits) -> NormalizedMessage {
    guarded(
        || payload::normalize_payload_tree(part, limits),
        NormalizedMessage::default,
    )
}

/// Runs `primary`; if it panics, runs `fallback` (also guarded) and records
/// the panic in `parse_error`.
fn guarded(
    primary: impl FnOnce() -> NormalizedMessage,
    fallback: impl FnOnce() -> NormalizedMessage,
) -> NormalizedMessage {
    match catch_unwind(AssertUnwindSafe(primary)) {
        Ok(message) => message,
        Err(payload) => {
            let mut message = catch_unwind(AssertUnwindSafe(fallback)).unwrap_or_default();
            let cause = format!("parser panicked: {}", panic_text(payload.as_ref()));
            message.parse_error = text::clean_line(&cause).or(Some(cause));
            message
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown cause")
}

#[cfg(test)]
mod tests;
