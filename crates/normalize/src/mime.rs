//! The raw path: RFC 822 bytes parsed by mail-parser.
//!
//! # Why mail-parser does not decode transfer encodings here
//!
//! The parser is built so that `Content-Transfer-Encoding` is read as a
//! content-type-like token instead of as text. mail-parser then treats every
//! part as identity-encoded and hands back slices of the input, and this
//! module decodes base64 and quoted-printable itself with mail-parser's own
//! decoders (`MessageStream::decode_*_mime`), one part at a time. Three reasons:
//!
//! - **Stack safety.** mail-parser parses an *encoded* `message/rfc822` part by
//!   recursing into itself and then converts the result with the recursive
//!   `Message::into_owned`; a few thousand nested messages inside one base64
//!   part overflow a 2 MiB thread stack (tokio's default), which aborts the
//!   process and cannot be caught. Identity-encoded nesting is parsed
//!   iteratively; only its `Drop` recurses, which [`dismantle`] avoids.
//! - **Bounded memory.** Attachments are never all decoded at once: each is
//!   decoded, hashed and dropped in turn, so the peak is the input plus one
//!   decoded part.
//! - **Exact hashes.** A text attachment's SHA-256 is taken over its
//!   transfer-decoded bytes, not over mail-parser's UTF-8 conversion of them.

use std::borrow::Cow;
use std::collections::HashSet;

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::html_to_text;
use mail_parser::parsers::MessageStream;
use mail_parser::{
    GetHeader, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use sha2::{Digest, Sha256};

use super::NormalizeLimits;
use super::headers;
use super::text::{Problems, clean_line, prefix, push_body};
use crate::model::{AttachmentMeta, NormalizedMessage};

/// The deepest MIME tree level whose parts are reported (the root is level
/// 0). Deeper parts are skipped and noted in `parse_error`; mail-parser
/// itself parses any depth without recursion.
pub(super) const MAX_DEPTH: usize = 64;

/// The most attachments reported for one message.
pub(super) const MAX_ATTACHMENTS: usize = 1_000;

/// mail-parser records offsets as `u32`; a larger input cannot be parsed
/// reliably, so only its headers are read.
const MAX_PARSE_BYTES: usize = u32::MAX as usize;

/// How much of an unparseable-size input is scanned for headers.
const HEADER_PREFIX_BYTES: usize = 1 << 20;

/// The parser every raw path uses; see the module comment for why
/// `Content-Transfer-Encoding` is parsed as a content type.
pub(super) fn parser() -> MessageParser {
    MessageParser::new()
        .with_mime_headers()
        .with_date_headers()
        .with_address_headers()
        .with_message_ids()
        .header_text(HeaderName::Subject)
        .header_content_type(HeaderName::ContentTransferEncoding)
        .default_header_raw()
}

pub(super) fn normalize_raw(raw: &[u8], limits: &NormalizeLimits) -> NormalizedMessage {
    normalize_bounded(raw, limits, MAX_PARSE_BYTES)
}

fn normalize_bounded(
    raw: &[u8],
    limits: &NormalizeLimits,
    max_parse_bytes: usize,
) -> NormalizedMessage {
    if raw.is_empty() {
        return failed("empty input");
    }
    if raw.len() > max_parse_bytes {
        let mut out = headers_only(&raw[..raw.len().min(HEADER_PREFIX_BYTES)]);
        out.truncated = true;
        out.parse_error = Some(format!(
            "message of {} bytes is too large to parse; only its headers were kept",
            raw.len()
        ));
        return out;
    }
    let parser = parser();
    let Some(message) = parser.parse(raw) else {
        return failed("no header fields found");
    };
    let first_wave = encoded_message_types(&message);
    if first_wave.is_empty() {
        let out = from_message(&message, raw, limits, &HashSet::new());
        dismantle(message);
        return out;
    }
    dismantle(message);
    reparse_with_encoded_messages_opaque(&parser, raw, limits, first_wave)
}

/// The rare path for `message/*` parts with a base64 or quoted-printable
/// transfer encoding (RFC 2046 forbids it for `message/rfc822`, RFC 6532
/// allows it for `message/global`).
///
/// With transfer encodings left to this module, mail-parser would try to
/// parse such a part's encoded text as a nested message, which swallows the
/// parts after it. So the input is copied once and the `message` type token
/// of each such part is overwritten in place (`xessage`, same length, so
/// every offset stays valid); mail-parser then sees an opaque part, and the
/// attachment is reported as `message/*` again. Each pass can uncover more
/// such parts that the previous one had swallowed.
fn reparse_with_encoded_messages_opaque(
    parser: &MessageParser,
    raw: &[u8],
    limits: &NormalizeLimits,
    first_wave: Vec<EncodedMessageType>,
) -> NormalizedMessage {
    const MAX_PASSES: usize = 16;
    let mut patched = raw.to_vec();
    let mut opaque: HashSet<u32> = HashSet::new();
    let mut wave = first_wave;
    for _ in 0..MAX_PASSES {
        for found in &wave {
            opaque.insert(found.part_offset);
            for range in &found.value_ranges {
                if let Some(value) = patched.get_mut(range.clone()) {
                    disguise_message_token(value);
                }
            }
        }
        let Some(message) = parser.parse(&patched) else {
            return failed("no header fields found");
        };
        wave = encoded_message_types(&message);
        if wave.is_empty() {
            let out = from_message(&message, &patched, limits, &opaque);
            dismantle(message);
            return out;
        }
        dismantle(message);
    }
    let mut out = headers_only(raw);
    out.parse_error = Some(format!(
        "more than {MAX_PASSES} rounds of encoded message/* parts; only headers kept"
    ));
    out
}

/// A top-level `message/*` part with a non-identity transfer encoding: where
/// it starts and where its Content-Type values are.
struct EncodedMessageType {
    part_offset: u32,
    value_ranges: Vec<std::ops::Range<usize>>,
}

fn encoded_message_types(message: &Message<'_>) -> Vec<EncodedMessageType> {
    message
        .parts
        .iter()
        .filter(|part| {
            transfer_encoding(part) != TransferEncoding::Identity
                && part
                    .content_type()
                    .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("message"))
        })
        .map(|part| EncodedMessageType {
            part_offset: part.offset_header,
            value_ranges: part
                .headers
                .iter()
                .filter(|h| h.name == HeaderName::ContentType)
                .map(|h| h.offset_start as usize..h.offset_end as usize)
                .collect(),
        })
        .collect()
}

/// Overwrites every `message` (any case) in a header value with `xessage`.
fn disguise_message_token(value: &mut [u8]) {
    let mut i = 0;
    while i + 7 <= value.len() {
        if value[i..i + 7].eq_ignore_ascii_case(b"message") {
            value[i] = b'x';
            i += 7;
        } else {
            i += 1;
        }
    }
}

/// Only the top-level header fields; the fallback when full parsing is not
/// possible (and after a caught panic).
pub(super) fn headers_only(raw: &[u8]) -> NormalizedMessage {
    let mut out = NormalizedMessage::default();
    let mut problems = Problems::default();
    if let Some(message) = parser().parse_headers(raw) {
        if let Some(root) = message.parts.first() {
            headers::extract(&root.headers, raw, &mut out, &mut problems);
        }
        dismantle(message);
    }
    out.parse_error = problems.into_error();
    out
}

fn failed(cause: &str) -> NormalizedMessage {
    NormalizedMessage {
        parse_error: Some(cause.to_owned()),
        ..NormalizedMessage::default()
    }
}

/// Builds the result from a parsed message. `opaque` holds the header
/// offsets of parts whose `message` type token was disguised (see
/// [`reparse_with_encoded_messages_opaque`]).
fn from_message(
    message: &Message<'_>,
    raw: &[u8],
    limits: &NormalizeLimits,
    opaque: &HashSet<u32>,
) -> NormalizedMessage {
    let mut out = NormalizedMessage::default();
    let mut problems = Problems::default();
    let parts = &message.parts;
    let Some(root) = parts.first() else {
        return failed("no header fields found");
    };
    headers::extract(&root.headers, raw, &mut out, &mut problems);
    if !root
        .headers
        .iter()
        .any(|h| !matches!(h.name, HeaderName::Other(_)))
    {
        problems.push("no standard header fields found (not an RFC 822 message?)");
    }

    let ids = part_ids(parts, &mut problems);
    check_structure(raw, parts, &ids, &mut problems);

    let mut truncated = raw.len() > limits.max_message_bytes;
    let (text, cut) = body_text(message, raw, &ids, limits.max_body_bytes, &mut problems);
    out.body_text = text;
    truncated |= cut;
    let (html, cut) = body_html(message, raw, &ids, limits.max_body_bytes, &mut problems);
    out.body_html = html;
    truncated |= cut;
    out.attachments = attachments(message, raw, &ids, opaque, &mut problems);
    out.truncated = truncated;
    out.parse_error = problems.into_error();
    out
}

/// Gmail part ids for the flat part list: the root is `""`, its children
/// `"0"`, `"1"`, ..., grandchildren `"1.0"`, `"1.1"`, and so on. Only
/// multipart children are numbered: a nested `message/rfc822` is one
/// attachment, its own parts are not listed. `None` marks parts below
/// [`MAX_DEPTH`] (or unreachable ones).
fn part_ids(parts: &[MessagePart<'_>], problems: &mut Problems) -> Vec<Option<String>> {
    let mut ids: Vec<Option<String>> = vec![None; parts.len()];
    if parts.is_empty() {
        return ids;
    }
    ids[0] = Some(String::new());
    let mut too_deep = false;
    // An explicit stack: the depth of the tree is the input's to choose.
    let mut stack = vec![(0usize, 0usize)];
    while let Some((index, depth)) = stack.pop() {
        let PartType::Multipart(children) = &parts[index].body else {
            continue;
        };
        if depth >= MAX_DEPTH {
            too_deep = true;
            continue;
        }
        let path = ids[index].clone().unwrap_or_default();
        for (n, &child) in children.iter().enumerate().rev() {
            let child = child as usize;
            // The parser only ever lists later parts as children; anything
            // else would be a cycle.
            if child <= index || child >= parts.len() || ids[child].is_some() {
                continue;
            }
            ids[child] = Some(if path.is_empty() {
                n.to_string()
            } else {
                format!("{path}.{n}")
            });
            stack.push((child, depth + 1));
        }
    }
    if too_deep {
        problems.push(format!(
            "MIME tree deeper than {MAX_DEPTH} levels; deeper parts ignored"
        ));
    }
    ids
}

/// Notes structural damage mail-parser silently recovered from: multipart
/// bodies whose closing delimiter never comes (a truncated message), parts
/// declared multipart without a usable boundary, and parts it flagged.
fn check_structure(
    raw: &[u8],
    parts: &[MessagePart<'_>],
    ids: &[Option<String>],
    problems: &mut Problems,
) {
    let mut open: HashSet<&[u8]> = HashSet::new();
    for (part, id) in parts.iter().zip(ids) {
        let Some(id) = id else { continue };
        let declared_multipart = part
            .content_type()
            .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("multipart"));
        match &part.body {
            PartType::Multipart(_) => {
                if let Some(boundary) = part.content_type().and_then(|ct| ct.attribute("boundary"))
                {
                    open.insert(boundary.as_bytes());
                }
            }
            _ if declared_multipart => {
                problems.push(format!(
                    "{} is multipart without a usable boundary",
                    part_name(id)
                ));
            }
            _ => {}
        }
        let headers_only = parts.len() == 1 && part.offset_body as usize >= raw.len();
        if part.is_encoding_problem && !headers_only {
            problems.push(format!("{} is incomplete or malformed", part_name(id)));
        }
    }
    if open.is_empty() {
        return;
    }
    // One pass over the lines: a closing delimiter is `--boundary--`,
    // possibly followed by transport padding.
    for line in raw.split(|&b| b == b'\n') {
        if !line.starts_with(b"--") {
            continue;
        }
        let line = line.trim_ascii_end();
        if line.len() >= 4 && line.ends_with(b"--") {
            open.remove(&line[2..line.len() - 2]);
            if open.is_empty() {
                return;
            }
        }
    }
    let mut unclosed: Vec<String> = open
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    unclosed.sort();
    problems.push(format!(
        "multipart boundary {:?} never closed (message truncated?)",
        unclosed[0]
    ));
}

fn part_name(id: &str) -> String {
    if id.is_empty() {
        "the top-level part".to_owned()
    } else {
        format!("part {id}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferEncoding {
    Identity,
    Base64,
    QuotedPrintable,
}

fn transfer_encoding(part: &MessagePart<'_>) -> TransferEncoding {
    match part
        .headers
        .header_value(&HeaderName::ContentTransferEncoding)
    {
        Some(HeaderValue::ContentType(ct)) if ct.ctype().eq_ignore_ascii_case("base64") => {
            TransferEncoding::Base64
        }
        Some(HeaderValue::ContentType(ct))
            if ct.ctype().eq_ignore_ascii_case("quoted-printable") =>
        {
            TransferEncoding::QuotedPrintable
        }
        _ => TransferEncoding::Identity,
    }
}

/// The part's body bytes with the transfer encoding undone. Undecodable
/// content is returned as it stands, with a problem noted.
fn decoded_bytes<'r>(
    raw: &'r [u8],
    part: &MessagePart<'_>,
    problems: &mut Problems,
    id: &str,
) -> Cow<'r, [u8]> {
    let body = body_slice(raw, part);
    match transfer_encoding(part) {
        TransferEncoding::Identity => Cow::Borrowed(body),
        TransferEncoding::Base64 => {
            let (end, bytes) = MessageStream::new(body).decode_base64_mime(b"");
            if end == usize::MAX {
                problems.push(format!(
                    "{} has invalid base64; kept undecoded",
                    part_name(id)
                ));
                Cow::Borrowed(body)
            } else {
                Cow::Owned(bytes.into_owned())
            }
        }
        TransferEncoding::QuotedPrintable => {
            let (end, bytes) = MessageStream::new(body).decode_quoted_printable_mime(b"");
            if end == usize::MAX {
                problems.push(format!(
                    "{} has invalid quoted-printable; kept undecoded",
                    part_name(id)
                ));
                Cow::Borrowed(body)
            } else {
                Cow::Owned(bytes.into_owned())
            }
        }
    }
}

fn body_slice<'r>(raw: &'r [u8], part: &MessagePart<'_>) -> &'r [u8] {
    let (start, end) = (part.offset_body as usize, part.offset_end as usize);
    if start <= end {
        raw.get(start..end).unwrap_or_default()
    } else {
        &[]
    }
}

/// A text part as UTF-8, at most about `max_bytes` long (the caller cuts
/// exactly). Identity-encoded parts reuse mail-parser's charset conversion;
/// encoded ones are decoded, then converted here the same way.
fn part_text<'m>(
    raw: &[u8],
    part: &'m MessagePart<'_>,
    max_bytes: usize,
    problems: &mut Problems,
    id: &str,
) -> Cow<'m, str> {
    let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
    let decoder = charset.and_then(|c| charset_decoder(c.as_bytes()));
    if let Some(label) = charset
        && decoder.is_none()
        && !is_utf8_label(label)
    {
        problems.push(format!(
            "{} has unknown charset {label:?}; read as UTF-8",
            part_name(id)
        ));
    }
    if transfer_encoding(part) == TransferEncoding::Identity {
        return match &part.body {
            PartType::Text(text) | PartType::Html(text) => Cow::Borrowed(text.as_ref()),
            _ => Cow::Owned(String::from_utf8_lossy(body_slice(raw, part)).into_owned()),
        };
    }
    let bytes = decoded_bytes(raw, part, problems, id);
    // UTF-16/32 may need four input bytes per output byte; more input than
    // that can only produce text that is cut anyway.
    let bytes = &bytes[..bytes.len().min(max_bytes.saturating_mul(4))];
    match decoder {
        Some(decode) => Cow::Owned(decode(bytes)),
        None => Cow::Owned(String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn is_utf8_label(label: &str) -> bool {
    let label = label.trim().to_ascii_lowercase();
    matches!(
        label.as_str(),
        "utf8"
            | "utf-8"
            | "unicode-1-1-utf-8"
            | "unicode11utf8"
            | "unicode20utf8"
            | "x-unicode20utf8"
    )
}

/// The plain-text body: every text body part mail-parser selected, HTML-only
/// parts converted to text, joined by newlines. Returns whether it was cut.
fn body_text(
    message: &Message<'_>,
    raw: &[u8],
    ids: &[Option<String>],
    max_bytes: usize,
    problems: &mut Problems,
) -> (Option<String>, bool) {
    let mut out = String::new();
    let mut found = false;
    for &index in &message.text_body {
        let Some(part) = message.parts.get(index as usize) else {
            continue;
        };
        let id = id_of(ids, index);
        let (text, cut) = match &part.body {
            PartType::Text(_) => (part_text(raw, part, max_bytes, problems, &id), false),
            PartType::Html(_) => {
                let html = part_text(raw, part, max_bytes, problems, &id);
                // Convert at most `max_bytes` of markup: the text is shorter.
                let (html, cut) = prefix(&html, max_bytes);
                (Cow::Owned(html_to_text(html)), cut)
            }
            _ => continue,
        };
        if append(&mut out, &mut found, &text, max_bytes) || cut {
            return (Some(out), true);
        }
    }
    (found.then_some(out), false)
}

/// The HTML body: the text/html parts among mail-parser's HTML body parts
/// (plain-text parts it would render as HTML are left out).
fn body_html(
    message: &Message<'_>,
    raw: &[u8],
    ids: &[Option<String>],
    max_bytes: usize,
    problems: &mut Problems,
) -> (Option<String>, bool) {
    let mut out = String::new();
    let mut found = false;
    for &index in &message.html_body {
        let Some(part) = message.parts.get(index as usize) else {
            continue;
        };
        if !matches!(part.body, PartType::Html(_)) {
            continue;
        }
        let html = part_text(raw, part, max_bytes, problems, &id_of(ids, index));
        if append(&mut out, &mut found, &html, max_bytes) {
            return (Some(out), true);
        }
    }
    (found.then_some(out), false)
}

/// The Gmail part id of a flat part index, or the index itself for parts
/// below the depth cap (used only in problem descriptions).
fn id_of(ids: &[Option<String>], index: u32) -> String {
    match ids.get(index as usize) {
        Some(Some(id)) => id.clone(),
        _ => format!("#{index}"),
    }
}

fn append(out: &mut String, found: &mut bool, text: &str, max_bytes: usize) -> bool {
    if *found && push_body(out, "\n", max_bytes) {
        return true;
    }
    *found = true;
    push_body(out, text, max_bytes)
}

fn attachments(
    message: &Message<'_>,
    raw: &[u8],
    ids: &[Option<String>],
    opaque: &HashSet<u32>,
    problems: &mut Problems,
) -> Vec<AttachmentMeta> {
    let mut out = Vec::new();
    let mut dropped = 0usize;
    for &index in &message.attachments {
        let index = index as usize;
        let (Some(part), Some(Some(part_id))) = (message.parts.get(index), ids.get(index)) else {
            continue;
        };
        if out.len() >= MAX_ATTACHMENTS {
            dropped += 1;
            continue;
        }
        out.push(attachment(raw, part, part_id, opaque, problems));
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} attachments beyond the first {MAX_ATTACHMENTS} dropped"
        ));
    }
    out
}

fn attachment(
    raw: &[u8],
    part: &MessagePart<'_>,
    part_id: &str,
    opaque: &HashSet<u32>,
    problems: &mut Problems,
) -> AttachmentMeta {
    let mime_type = match part.content_type() {
        Some(ct) => {
            let ctype = if opaque.contains(&part.offset_header) {
                "message"
            } else {
                ct.ctype()
            };
            match ct.subtype() {
                Some(sub) => format!("{ctype}/{sub}"),
                None => ctype.to_owned(),
            }
        }
        None if matches!(part.body, PartType::Message(_)) => "message/rfc822".to_owned(),
        None => "text/plain".to_owned(),
    };
    let mime_type = clean_line(&mime_type.to_ascii_lowercase())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let content_id = part
        .content_id()
        .and_then(|id| clean_line(id.trim_matches(['<', '>'])));
    let inline = match part.content_disposition() {
        Some(cd) if cd.is_inline() => true,
        Some(cd) if cd.is_attachment() => false,
        _ => content_id.is_some(),
    };
    let bytes = decoded_bytes(raw, part, problems, part_id);
    AttachmentMeta {
        part_id: part_id.to_owned(),
        filename: part.attachment_name().and_then(clean_line),
        mime_type,
        size_bytes: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        sha256: hex_sha256(&bytes),
        inline,
        content_id,
    }
}

pub(super) fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Drops a parsed message without recursion. Nested `message/rfc822` parts
/// hold whole `Message`s, and the derived `Drop` would recurse once per
/// level: tens of thousands of levels fit in a few megabytes of input.
pub(super) fn dismantle(message: Message<'_>) {
    let mut pending = vec![message];
    while let Some(mut message) = pending.pop() {
        for part in &mut message.parts {
            if matches!(part.body, PartType::Message(_))
                && let PartType::Message(inner) = std::mem::take(&mut part.body)
            {
                pending.push(inner);
            }
        }
    }
}

#[cfg(test)]
pub(super) fn normalize_with_parse_cap(
    raw: &[u8],
    limits: &NormalizeLimits,
    cap: usize,
) -> NormalizedMessage {
    normalize_bounded(raw, limits, cap)
}
