//! Gmail's parsed view of a message (`format=full` / `metadata`) and attachment look-ups,
//! built from the raw RFC 822 bytes with mail-parser.

use base64::Engine as _;
use google_gmail1::api::{MessagePart, MessagePartBody, MessagePartHeader};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use super::util::URL_SAFE_LENIENT;

/// An opaque attachment ID that names the message and part (Gmail's start with `ANGjdJ`).
pub(crate) fn attachment_id(message_id: u64, part_id: &str) -> String {
    format!(
        "ANGjdJ{}",
        URL_SAFE_LENIENT.encode(format!("{message_id:016x}:{part_id}"))
    )
}

/// The `(message, part)` an attachment ID names.
pub(crate) fn parse_attachment_id(id: &str) -> Option<(u64, String)> {
    let bytes = URL_SAFE_LENIENT.decode(id.strip_prefix("ANGjdJ")?).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (message, part) = text.split_once(':')?;
    Some((u64::from_str_radix(message, 16).ok()?, part.to_owned()))
}

/// mail-parser 0.11 panics on some malformed input (debug assertions); the
/// emulator, like Gmail, must answer anyway: a panic means "unparsed".
fn parse(raw: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        MessageParser::default().parse(raw)
    }))
    .ok()
    .flatten()
}

/// The header list of a part, names as written and values unfolded.
fn headers_of(raw: &[u8], part: &mail_parser::MessagePart<'_>) -> Vec<MessagePartHeader> {
    part.headers
        .iter()
        .map(|h| {
            let start = (h.offset_start as usize).min(raw.len());
            let end = (h.offset_end as usize).clamp(start, raw.len());
            let value = String::from_utf8_lossy(&raw[start..end]);
            let value = value
                .trim_start_matches(':')
                .replace("\r\n", "")
                .replace('\n', "");
            MessagePartHeader {
                name: Some(h.name.as_str().to_owned()),
                value: Some(value.trim().to_owned()),
            }
        })
        .collect()
}

fn mime_type_of(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type()
        .map(|ct| {
            format!(
                "{}/{}",
                ct.c_type,
                ct.c_subtype.as_deref().unwrap_or("plain")
            )
            .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "text/plain".to_owned())
}

fn child_part_id(parent: &str, i: usize) -> String {
    if parent.is_empty() {
        i.to_string()
    } else {
        format!("{parent}.{i}")
    }
}

/// Whether Gmail would move this leaf's body out to `attachments.get`.
fn is_attachment(part: &mail_parser::MessagePart<'_>) -> bool {
    part.attachment_name().is_some()
        || matches!(
            part.body,
            PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Message(_)
        )
}

fn build(
    message_id: u64,
    raw: &[u8],
    parsed: &Message<'_>,
    index: usize,
    part_id: String,
) -> MessagePart {
    let part = &parsed.parts[index];
    let mut out = MessagePart {
        part_id: Some(part_id.clone()),
        mime_type: Some(mime_type_of(part)),
        filename: Some(part.attachment_name().unwrap_or_default().to_owned()),
        headers: Some(headers_of(raw, part)),
        ..MessagePart::default()
    };
    match &part.body {
        PartType::Multipart(children) => {
            out.body = Some(MessagePartBody {
                size: Some(0),
                ..MessagePartBody::default()
            });
            out.parts = Some(
                children
                    .iter()
                    .enumerate()
                    .map(|(i, &child)| {
                        build(
                            message_id,
                            raw,
                            parsed,
                            child as usize,
                            child_part_id(&part_id, i),
                        )
                    })
                    .collect(),
            );
        }
        _ => {
            let contents = part.contents();
            let size = i32::try_from(contents.len()).unwrap_or(i32::MAX);
            out.body = Some(if is_attachment(part) {
                MessagePartBody {
                    attachment_id: Some(attachment_id(message_id, &part_id)),
                    size: Some(size),
                    data: None,
                }
            } else {
                MessagePartBody {
                    attachment_id: None,
                    size: Some(size),
                    data: Some(contents.to_vec()),
                }
            });
        }
    }
    out
}

/// What Gmail's search looks at in one message: decoded addresses and subject (lower case),
/// its text, and its attachments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Searchable {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) cc: String,
    pub(crate) bcc: String,
    pub(crate) subject: String,
    pub(crate) message_id: String,
    /// Subject, addresses and the text bodies together, lower case, for free-text terms.
    pub(crate) text: String,
    /// One entry per attachment leaf (the same leaves `full_payload` moves out), its file
    /// name lower case (empty when it has none).
    pub(crate) attachments: Vec<String>,
    pub(crate) size: usize,
}

fn addresses(address: Option<&mail_parser::Address<'_>>) -> String {
    address
        .map(|a| {
            a.iter()
                .map(|addr| {
                    format!(
                        "{} <{}>",
                        addr.name().unwrap_or_default(),
                        addr.address().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// The searchable view of a raw message; an unparsable one is searchable by its bytes only.
pub(crate) fn searchable(raw: &[u8]) -> Searchable {
    let Some(parsed) = parse(raw) else {
        return Searchable {
            text: String::from_utf8_lossy(raw).to_lowercase(),
            size: raw.len(),
            ..Searchable::default()
        };
    };
    let mut out = Searchable {
        from: addresses(parsed.from()),
        to: addresses(parsed.to()),
        cc: addresses(parsed.cc()),
        bcc: addresses(parsed.bcc()),
        subject: parsed.subject().unwrap_or_default().to_lowercase(),
        message_id: parsed.message_id().unwrap_or_default().to_lowercase(),
        size: raw.len(),
        ..Searchable::default()
    };
    let mut text = format!("{} {} {} {}", out.subject, out.from, out.to, out.cc);
    for index in 0..parsed.text_body_count() {
        if let Some(body) = parsed.body_text(index) {
            text.push(' ');
            text.push_str(&body.to_lowercase());
        }
    }
    out.text = text;
    out.attachments = parsed
        .parts
        .iter()
        .filter(|p| !matches!(p.body, PartType::Multipart(_)) && is_attachment(p))
        .map(|p| p.attachment_name().unwrap_or_default().to_lowercase())
        .collect();
    out
}

/// `format=full`: the whole MIME tree, text bodies inline, attachments by ID.
pub(crate) fn full_payload(message_id: u64, raw: &[u8]) -> MessagePart {
    match parse(raw) {
        Some(parsed) if !parsed.parts.is_empty() => {
            build(message_id, raw, &parsed, 0, String::new())
        }
        _ => MessagePart {
            part_id: Some(String::new()),
            mime_type: Some("text/plain".to_owned()),
            body: Some(MessagePartBody {
                size: Some(i32::try_from(raw.len()).unwrap_or(i32::MAX)),
                data: Some(raw.to_vec()),
                attachment_id: None,
            }),
            ..MessagePart::default()
        },
    }
}

/// `format=metadata`: top-level headers only, optionally limited to `wanted` (case-insensitive).
pub(crate) fn metadata_payload(raw: &[u8], wanted: &[&str]) -> MessagePart {
    let (headers, mime_type) = match parse(raw) {
        Some(parsed) if !parsed.parts.is_empty() => (
            headers_of(raw, &parsed.parts[0]),
            mime_type_of(&parsed.parts[0]),
        ),
        _ => (Vec::new(), "text/plain".to_owned()),
    };
    let headers = headers
        .into_iter()
        .filter(|h| {
            wanted.is_empty()
                || wanted
                    .iter()
                    .any(|w| h.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(w)))
        })
        .collect();
    MessagePart {
        part_id: Some(String::new()),
        mime_type: Some(mime_type),
        filename: Some(String::new()),
        headers: Some(headers),
        body: Some(MessagePartBody {
            size: Some(0),
            ..MessagePartBody::default()
        }),
        parts: None,
    }
}

/// The decoded body of the part an attachment ID names, if it is in this message.
pub(crate) fn attachment(message_id: u64, raw: &[u8], id: &str) -> Option<MessagePartBody> {
    let (owner, wanted) = parse_attachment_id(id)?;
    if owner != message_id {
        return None;
    }
    let parsed = parse(raw)?;
    let mut index = 0usize;
    let mut current = String::new();
    for step in wanted.split('.').filter(|s| !s.is_empty()) {
        let child: usize = step.parse().ok()?;
        let PartType::Multipart(children) = &parsed.parts.get(index)?.body else {
            return None;
        };
        index = *children.get(child)? as usize;
        current = child_part_id(&current, child);
    }
    let part = parsed.parts.get(index)?;
    if current != wanted || matches!(part.body, PartType::Multipart(_)) {
        return None;
    }
    let contents = part.contents();
    Some(MessagePartBody {
        attachment_id: Some(id.to_owned()),
        size: Some(i32::try_from(contents.len()).unwrap_or(i32::MAX)),
        data: Some(contents.to_vec()),
    })
}

/// Gmail's snippet for mail that was not generated: the start of the text body.
pub(crate) fn snippet(raw: &[u8]) -> String {
    let parsed = parse(raw);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parsed.and_then(|m| m.body_preview(100).map(|p| super::generate::snippet_of(&p)))
    }))
    .ok()
    .flatten()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8] = b"From: a@example.com\r\nSubject: Hi\r\n there\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello body\r\n--b\r\nContent-Type: application/pdf; name=\"x.pdf\"\r\nContent-Disposition: attachment; filename=\"x.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n--b--\r\n";

    #[test]
    fn full_payload_numbers_parts_and_moves_attachments_out() {
        let payload = full_payload(7, RAW);
        assert_eq!(payload.part_id.as_deref(), Some(""));
        assert_eq!(payload.mime_type.as_deref(), Some("multipart/mixed"));
        let parts = payload.parts.unwrap();
        assert_eq!(parts[0].part_id.as_deref(), Some("0"));
        assert_eq!(
            parts[0].body.as_ref().unwrap().data.as_deref(),
            Some(&b"Hello body"[..])
        );
        let pdf = parts[1].body.as_ref().unwrap();
        assert_eq!(parts[1].filename.as_deref(), Some("x.pdf"));
        let id = pdf.attachment_id.clone().unwrap();
        assert_eq!(pdf.size, Some(8));
        let fetched = attachment(7, RAW, &id).unwrap();
        assert_eq!(fetched.data.as_deref(), Some(&b"%PDF-1.4"[..]));
        assert!(attachment(8, RAW, &id).is_none());
    }

    #[test]
    fn metadata_payload_filters_and_unfolds_headers() {
        let payload = metadata_payload(RAW, &["subject"]);
        let headers = payload.headers.unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].value.as_deref(), Some("Hi there"));
    }
}
