//! The Gmail part-tree path: `format=full` and `format=metadata` responses.
//!
//! Header values are re-parsed with mail-parser from a header block built
//! here, so encoded words, address lists, groups and dates behave exactly as
//! on the raw path. Only the named headers are copied into that block, under
//! their canonical names and with CR, LF and NUL replaced by spaces, so a
//! hostile value cannot smuggle in another header.

use mail_parser::MimeHeaders;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::html_to_text;

use super::NormalizeLimits;
use super::headers;
use super::mime::{MAX_ATTACHMENTS, MAX_DEPTH, dismantle, hex_sha256, parser};
use super::text::{Problems, clean_line, prefix, push_body};
use crate::model::{AttachmentMeta, NormalizedMessage};

/// One node of a Gmail `MessagePart` tree, reduced to what normalizing needs.
///
/// The Gmail client layer converts `google_gmail1::api::MessagePart` into
/// this once, at the edge; `body` holds the already base64url-decoded
/// `body.data` (Gmail has undone the transfer encoding but not the charset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadPart {
    /// Gmail `partId`: `""` for the top-level part, then `0`, `1`, `1.0`, ...
    pub part_id: String,
    pub mime_type: String,
    /// Gmail `filename`; Gmail sends `""` for parts without one.
    pub filename: Option<String>,
    /// The part's headers in order, as Gmail returns them.
    pub headers: Vec<(String, String)>,
    /// Decoded `body.data`, when Gmail sent it inline.
    pub body: Option<Vec<u8>>,
    /// Gmail `body.size`: the decoded size in bytes, also when `body` is absent.
    pub body_size: i64,
    /// Gmail `body.attachmentId`, set when the content must be fetched separately.
    pub attachment_id: Option<String>,
    pub parts: Vec<PayloadPart>,
}

const TOP_LEVEL_HEADERS: &[&str] = &[
    "Subject",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Date",
];

const PART_HEADERS: &[&str] = &["Content-Type", "Content-Disposition", "Content-ID"];

pub(super) fn normalize_payload_tree(
    root: &PayloadPart,
    limits: &NormalizeLimits,
) -> NormalizedMessage {
    let mut out = NormalizedMessage::default();
    let mut problems = Problems::default();
    let parser = parser();
    let block = header_block(&root.headers, TOP_LEVEL_HEADERS);
    if let Some(message) = parser.parse_headers(&block) {
        if let Some(head) = message.parts.first() {
            headers::extract(&head.headers, &block, &mut out, &mut problems);
        }
        dismantle(message);
    }

    let mut text = Bodies::default();
    let mut html = Bodies::default();
    let mut total_bytes: i64 = 0;
    let mut body_missing = false;
    let mut too_deep = false;
    let mut dropped = 0usize;

    // Pre-order walk with an explicit stack: the tree's depth is the sender's.
    let mut stack = vec![(root, 0usize)];
    while let Some((part, depth)) = stack.pop() {
        total_bytes = total_bytes.saturating_add(part.body_size.max(0));
        let mime_type = part.mime_type.trim().to_ascii_lowercase();
        if mime_type.starts_with("multipart/") {
            if depth >= MAX_DEPTH {
                too_deep = true;
                continue;
            }
            stack.extend(part.parts.iter().rev().map(|child| (child, depth + 1)));
            continue;
        }
        let block = header_block(&part.headers, PART_HEADERS);
        let mime_headers = parser.parse_headers(&block);
        let head = mime_headers.as_ref().and_then(|m| m.parts.first());
        let filename = part
            .filename
            .as_deref()
            .and_then(clean_line)
            .or_else(|| head.and_then(|h| h.attachment_name()).and_then(clean_line));
        let disposition_attachment = head
            .and_then(|h| h.content_disposition())
            .is_some_and(|cd| cd.is_attachment());
        let is_body_type = mime_type == "text/plain" || mime_type == "text/html";
        if is_body_type && filename.is_none() && !disposition_attachment {
            let Some(body) = &part.body else {
                // Gmail moved a large body out of line; it is not in this response.
                body_missing |= part.attachment_id.is_some() || part.body_size > 0;
                continue;
            };
            let charset = head
                .and_then(|h| h.content_type())
                .and_then(|ct| ct.attribute("charset"));
            let decoded = decode_text(body, charset, limits.max_body_bytes);
            if mime_type == "text/html" {
                html.push(&decoded, limits.max_body_bytes);
            } else {
                text.push(&decoded, limits.max_body_bytes);
            }
        } else if out.attachments.len() >= MAX_ATTACHMENTS {
            dropped += 1;
        } else {
            out.attachments
                .push(attachment(part, &mime_type, filename, head));
        }
        // A message/rfc822 part's children are the forwarded message's own
        // parts: they belong to that attachment, not to this message.
        if let Some(message) = mime_headers {
            dismantle(message);
        }
    }

    if too_deep {
        problems.push(format!(
            "MIME tree deeper than {MAX_DEPTH} levels; deeper parts ignored"
        ));
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} attachments beyond the first {MAX_ATTACHMENTS} dropped"
        ));
    }
    let mut truncated = body_missing
        || usize::try_from(total_bytes).map_or(true, |total| total > limits.max_message_bytes);
    if text.found {
        truncated |= text.cut;
        out.body_text = Some(text.out);
    } else if html.found {
        let (markup, cut) = prefix(&html.out, limits.max_body_bytes);
        let mut derived = String::new();
        truncated |= cut | push_body(&mut derived, &html_to_text(markup), limits.max_body_bytes);
        out.body_text = Some(derived);
    }
    if html.found {
        truncated |= html.cut;
        out.body_html = Some(html.out);
    }
    out.truncated = truncated;
    out.parse_error = problems.into_error();
    out
}

#[derive(Default)]
struct Bodies {
    out: String,
    found: bool,
    cut: bool,
}

impl Bodies {
    fn push(&mut self, text: &str, max_bytes: usize) {
        if self.cut {
            return;
        }
        if self.found && push_body(&mut self.out, "\n", max_bytes) {
            self.cut = true;
            return;
        }
        self.found = true;
        self.cut = push_body(&mut self.out, text, max_bytes);
    }
}

fn decode_text(body: &[u8], charset: Option<&str>, max_bytes: usize) -> String {
    let body = &body[..body.len().min(max_bytes.saturating_mul(4))];
    match charset.and_then(|c| charset_decoder(c.as_bytes())) {
        Some(decode) => decode(body),
        None => String::from_utf8_lossy(body).into_owned(),
    }
}

fn attachment(
    part: &PayloadPart,
    mime_type: &str,
    filename: Option<String>,
    head: Option<&mail_parser::MessagePart<'_>>,
) -> AttachmentMeta {
    let content_id = head
        .and_then(|h| h.content_id())
        .and_then(|id| clean_line(id.trim_matches(['<', '>'])));
    let inline = match head.and_then(|h| h.content_disposition()) {
        Some(cd) if cd.is_inline() => true,
        Some(cd) if cd.is_attachment() => false,
        _ => content_id.is_some(),
    };
    let (size_bytes, sha256) = match &part.body {
        Some(body) => (
            i64::try_from(body.len()).unwrap_or(i64::MAX),
            hex_sha256(body),
        ),
        // Content Gmail keeps out of line cannot be hashed here.
        None => (part.body_size.max(0), String::new()),
    };
    AttachmentMeta {
        part_id: clean_line(&part.part_id).unwrap_or_default(),
        filename,
        mime_type: clean_line(mime_type).unwrap_or_else(|| "application/octet-stream".to_owned()),
        size_bytes,
        sha256,
        inline,
        content_id,
    }
}

/// A header block holding only the `wanted` headers of `headers`, each under
/// its canonical name, with line breaks and NUL in values made spaces.
fn header_block(headers: &[(String, String)], wanted: &[&str]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        let Some(canonical) = wanted.iter().find(|w| w.eq_ignore_ascii_case(name.trim())) else {
            continue;
        };
        block.extend_from_slice(canonical.as_bytes());
        block.extend_from_slice(b": ");
        let mut in_break = false;
        for &b in value.as_bytes() {
            if matches!(b, b'\r' | b'\n' | b'\0') {
                if !in_break {
                    block.push(b' ');
                }
                in_break = true;
            } else {
                block.push(b);
                in_break = false;
            }
        }
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}
