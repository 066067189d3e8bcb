//! Unit tests: limits, part ids, the payload path, adversarial inputs and
//! property tests. The golden corpus lives in `tests/it/normalize.rs`.

use std::fmt::Write as _;

use base64::Engine as _;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;
use crate::model::{AddressRole, MessageAddress};

fn limits() -> NormalizeLimits {
    NormalizeLimits::default()
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn base64_lines(data: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

/// Every string in the result is free of NUL, and single-line fields of
/// control characters.
fn assert_clean(m: &NormalizedMessage) {
    let single_line = m
        .subject
        .iter()
        .chain(&m.message_id)
        .chain(&m.in_reply_to)
        .chain(&m.references)
        .chain(&m.date)
        .chain(&m.parse_error)
        .chain(
            m.addresses
                .iter()
                .flat_map(|a| a.name.iter().chain([&a.address, &a.domain])),
        )
        .chain(m.attachments.iter().flat_map(|a| {
            a.filename
                .iter()
                .chain(&a.content_id)
                .chain([&a.part_id, &a.mime_type, &a.sha256])
        }));
    for s in single_line {
        assert!(
            !s.chars().any(char::is_control),
            "control character in {s:?}"
        );
    }
    for body in m.body_text.iter().chain(&m.body_html) {
        assert!(!body.contains('\0'), "NUL in a body");
    }
}

// ---------------------------------------------------------------- limits

#[test]
fn bodies_over_the_limit_are_cut_on_a_char_boundary() {
    // Arrange: a body of 3-byte characters, cut at a byte limit that falls
    // inside one.
    let body = "\u{20ac}".repeat(1000);
    let raw = format!(
        "From: a@example.com\r\nSubject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    );
    let limits = NormalizeLimits {
        max_message_bytes: 1_000_000,
        max_body_bytes: 100,
    };

    // Act
    let m = normalize(raw.as_bytes(), &limits);

    // Assert
    let text = m.body_text.expect("body kept");
    assert_eq!(text.len(), 99);
    assert!(text.chars().all(|c| c == '\u{20ac}'));
    assert!(m.truncated);
    assert_eq!(m.parse_error, None);
}

#[test]
fn oversized_messages_keep_headers_and_attachment_metadata() {
    let payload = vec![7u8; 30_000];
    let raw = format!(
        "From: Big <big@example.com>\r\nTo: x@example.com\r\nSubject: oversized\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/html\r\n\r\n<p>{}</p>\r\n\
         --b\r\nContent-Type: application/octet-stream; name=blob.bin\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}--b--\r\n",
        "word ".repeat(2000),
        base64_lines(&payload)
    );
    let limits = NormalizeLimits {
        max_message_bytes: 10_000,
        max_body_bytes: 500,
    };

    let m = normalize(raw.as_bytes(), &limits);

    assert!(m.truncated);
    assert_eq!(m.subject.as_deref(), Some("oversized"));
    assert_eq!(m.addresses.len(), 2);
    assert!(m.body_html.as_ref().is_some_and(|h| h.len() <= 500));
    assert!(
        m.body_text
            .as_ref()
            .is_some_and(|t| t.len() <= 500 && t.starts_with("word word"))
    );
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].size_bytes, 30_000);
    assert_eq!(m.attachments[0].sha256, sha_hex(&payload));
}

#[test]
fn a_message_within_limits_is_not_truncated() {
    let m = normalize(b"Subject: small\r\n\r\nhello\r\n", &limits());
    assert!(!m.truncated);
    assert_eq!(m.body_text.as_deref(), Some("hello\n"));
}

#[test]
fn inputs_too_large_to_parse_keep_only_headers() {
    let raw = b"From: a@example.com\r\nSubject: huge\r\n\r\nbody that is never read\r\n";
    let m = mime::normalize_with_parse_cap(raw, &limits(), 10);
    assert_eq!(m.subject.as_deref(), Some("huge"));
    assert_eq!(m.body_text, None);
    assert!(m.truncated);
    assert!(
        m.parse_error
            .as_deref()
            .is_some_and(|e| e.contains("too large to parse"))
    );
}

// ---------------------------------------------------------------- part ids

#[test]
fn part_ids_follow_gmails_convention() {
    // Arrange: mixed[ alternative[text, related[html, img]], pdf, mixed[zip, message] ]
    let raw = "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n\
        --top\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n\
        --alt\r\nContent-Type: text/plain\r\n\r\nplain\r\n\
        --alt\r\nContent-Type: multipart/related; boundary=rel\r\n\r\n\
        --rel\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n\
        --rel\r\nContent-Type: image/gif\r\nContent-ID: <img1>\r\nContent-Transfer-Encoding: base64\r\n\r\nR0lGODlh\r\n\
        --rel--\r\n--alt--\r\n\
        --top\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\n%PDF\r\n\
        --top\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n\
        --inner\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=z.zip\r\n\r\nPK\r\n\
        --inner\r\nContent-Type: message/rfc822\r\n\r\nSubject: nested\r\n\r\nnested body\r\n\
        --inner--\r\n--top--\r\n";

    // Act
    let m = normalize(raw.as_bytes(), &limits());

    // Assert
    let ids: Vec<(&str, &str)> = m
        .attachments
        .iter()
        .map(|a| (a.part_id.as_str(), a.mime_type.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("0.1.1", "image/gif"),
            ("1", "application/pdf"),
            ("2.0", "application/zip"),
            ("2.1", "message/rfc822"),
        ]
    );
    let gif = &m.attachments[0];
    assert!(gif.inline);
    assert_eq!(gif.content_id.as_deref(), Some("img1"));
    assert_eq!(gif.sha256, sha_hex(b"GIF89a"));
    assert_eq!(
        m.attachments[3].sha256,
        sha_hex(b"Subject: nested\r\n\r\nnested body")
    );
    assert_eq!(m.body_text.as_deref(), Some("plain"));
    assert_eq!(m.body_html.as_deref(), Some("<p>html</p>"));
    assert_eq!(m.parse_error, None);
}

#[test]
fn a_single_part_attachment_is_the_empty_part_id() {
    let raw = b"From: a@example.com\r\nContent-Type: application/pdf\r\n\
        Content-Disposition: attachment; filename=only.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n";
    let m = normalize(raw, &limits());
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].part_id, "");
    assert_eq!(m.attachments[0].filename.as_deref(), Some("only.pdf"));
    assert_eq!(m.attachments[0].size_bytes, 4);
}

// ---------------------------------------------------------------- payload

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn gmail_full_payload() -> PayloadPart {
    let latin1_text: Vec<u8> = b"Gr\xfc\xdfe aus M\xfcnchen\r\n".to_vec();
    PayloadPart {
        part_id: String::new(),
        mime_type: "multipart/mixed".into(),
        filename: Some(String::new()),
        headers: vec![
            header("From", "=?utf-8?q?J=C3=BCrgen?= <Juergen@Example.DE>"),
            header("To", "a@example.com, Team: b@example.com, c@example.com;"),
            header("Subject", "Quarterly\r\nBcc: injected@example.com"),
            header("Date", "Mon, 3 Jun 2024 09:00:00 +0200"),
            header("Message-ID", "<payload-1@example.de>"),
            header("References", "<r1@x> <r2@x>"),
            header("X-Ignored", "whatever"),
            header("Content-Type", "multipart/mixed; boundary=\"x\""),
        ],
        body: None,
        body_size: 0,
        attachment_id: None,
        parts: vec![
            PayloadPart {
                part_id: "0".into(),
                mime_type: "multipart/alternative".into(),
                headers: vec![header(
                    "Content-Type",
                    "multipart/alternative; boundary=\"y\"",
                )],
                parts: vec![
                    PayloadPart {
                        part_id: "0.0".into(),
                        mime_type: "text/plain".into(),
                        headers: vec![header("Content-Type", "text/plain; charset=ISO-8859-1")],
                        body_size: latin1_text.len() as i64,
                        body: Some(latin1_text),
                        ..PayloadPart::default()
                    },
                    PayloadPart {
                        part_id: "0.1".into(),
                        mime_type: "text/html".into(),
                        headers: vec![header("Content-Type", "text/html; charset=UTF-8")],
                        body: Some(b"<p>Gr\xc3\xbc\xc3\x9fe</p>".to_vec()),
                        body_size: 14,
                        ..PayloadPart::default()
                    },
                ],
                ..PayloadPart::default()
            },
            PayloadPart {
                part_id: "1".into(),
                mime_type: "image/png".into(),
                filename: Some("chart.png".into()),
                headers: vec![
                    header("Content-Type", "image/png; name=\"chart.png\""),
                    header("Content-Disposition", "inline; filename=\"chart.png\""),
                    header("Content-ID", "<chart@example.de>"),
                ],
                body: None,
                body_size: 123_456,
                attachment_id: Some("ANGjdJ8".into()),
                parts: Vec::new(),
            },
            PayloadPart {
                part_id: "2".into(),
                mime_type: "text/csv".into(),
                filename: Some("q.csv".into()),
                headers: vec![header("Content-Disposition", "attachment; filename=q.csv")],
                body: Some(b"a,b\n".to_vec()),
                body_size: 4,
                ..PayloadPart::default()
            },
            PayloadPart {
                part_id: "3".into(),
                mime_type: "message/rfc822".into(),
                filename: Some(String::new()),
                headers: vec![header("Content-Type", "message/rfc822")],
                body: None,
                body_size: 2_000,
                attachment_id: Some("ANGjdJ9".into()),
                parts: vec![PayloadPart {
                    part_id: "3.0".into(),
                    mime_type: "text/plain".into(),
                    body: Some(b"inner text that is not ours".to_vec()),
                    body_size: 27,
                    ..PayloadPart::default()
                }],
            },
        ],
    }
}

#[test]
fn payload_trees_normalize_like_raw_messages() {
    let m = normalize_payload(&gmail_full_payload(), &limits());

    assert_eq!(
        m.subject.as_deref(),
        Some("Quarterly Bcc: injected@example.com")
    );
    assert_eq!(m.message_id.as_deref(), Some("payload-1@example.de"));
    assert_eq!(m.references, ["r1@x", "r2@x"]);
    assert_eq!(m.date.as_deref(), Some("2024-06-03T07:00:00Z"));
    assert_eq!(
        m.addresses[0],
        MessageAddress {
            role: AddressRole::From,
            name: Some("J\u{fc}rgen".into()),
            address: "juergen@example.de".into(),
            domain: "example.de".into(),
        }
    );
    let to: Vec<&str> = m
        .addresses
        .iter()
        .filter(|a| a.role == AddressRole::To)
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(to, ["a@example.com", "b@example.com", "c@example.com"]);
    assert!(
        m.addresses.iter().all(|a| a.role != AddressRole::Bcc),
        "header injected"
    );
    assert_eq!(
        m.body_text.as_deref(),
        Some("Gr\u{fc}\u{df}e aus M\u{fc}nchen\n")
    );
    assert_eq!(m.body_html.as_deref(), Some("<p>Gr\u{fc}\u{df}e</p>"));

    let parts: Vec<(&str, &str, i64, bool)> = m
        .attachments
        .iter()
        .map(|a| {
            (
                a.part_id.as_str(),
                a.mime_type.as_str(),
                a.size_bytes,
                a.inline,
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("1", "image/png", 123_456, true),
            ("2", "text/csv", 4, false),
            ("3", "message/rfc822", 2_000, false),
        ]
    );
    assert_eq!(
        m.attachments[0].sha256, "",
        "out-of-line content cannot be hashed"
    );
    assert_eq!(
        m.attachments[0].content_id.as_deref(),
        Some("chart@example.de")
    );
    assert_eq!(m.attachments[1].sha256, sha_hex(b"a,b\n"));
    assert_eq!(m.attachments[2].filename, None);
    assert!(!m.truncated);
    assert_eq!(m.parse_error, None);
    assert_clean(&m);
}

#[test]
fn metadata_payloads_yield_headers_only() {
    let part = PayloadPart {
        mime_type: "multipart/alternative".into(),
        headers: vec![
            header("Subject", "just headers"),
            header("From", "x@example.com"),
        ],
        ..PayloadPart::default()
    };
    let m = normalize_payload(&part, &limits());
    assert_eq!(m.subject.as_deref(), Some("just headers"));
    assert_eq!(m.addresses.len(), 1);
    assert_eq!((m.body_text, m.body_html), (None, None));
    assert!(m.attachments.is_empty());
}

#[test]
fn payload_html_only_bodies_get_derived_text_and_out_of_line_bodies_mark_truncation() {
    let part = PayloadPart {
        mime_type: "multipart/alternative".into(),
        parts: vec![
            PayloadPart {
                part_id: "0".into(),
                mime_type: "text/html".into(),
                body: Some(b"<p>Hello <b>there</b></p>".to_vec()),
                body_size: 25,
                ..PayloadPart::default()
            },
            PayloadPart {
                part_id: "1".into(),
                mime_type: "text/plain".into(),
                body: None,
                body_size: 9_000_000,
                attachment_id: Some("big".into()),
                ..PayloadPart::default()
            },
        ],
        ..PayloadPart::default()
    };
    let m = normalize_payload(&part, &limits());
    assert_eq!(m.body_text.as_deref(), Some("Hello there\n"));
    assert!(m.truncated);
    assert!(m.attachments.is_empty());
}

#[test]
fn deep_payload_trees_are_walked_without_recursion() {
    let mut part = PayloadPart {
        mime_type: "text/plain".into(),
        body: Some(b"deep".to_vec()),
        ..PayloadPart::default()
    };
    for _ in 0..10_000 {
        part = PayloadPart {
            mime_type: "multipart/mixed".into(),
            parts: vec![part],
            ..PayloadPart::default()
        };
    }
    let m = normalize_payload(&part, &limits());
    assert!(
        m.parse_error
            .as_deref()
            .is_some_and(|e| e.contains("deeper than"))
    );
    // Dropping this tree is the caller's business; dismantle it iteratively
    // so the test itself does not overflow.
    let mut stack = vec![part];
    while let Some(mut p) = stack.pop() {
        stack.append(&mut p.parts);
    }
}

// ---------------------------------------------------------------- totality

#[test]
fn a_panic_becomes_a_parse_error_with_the_fallback_result() {
    let m = guarded(
        || panic!("boom\nsecond line"),
        || NormalizedMessage {
            subject: Some("salvaged".into()),
            ..NormalizedMessage::default()
        },
    );
    assert_eq!(m.subject.as_deref(), Some("salvaged"));
    assert_eq!(
        m.parse_error.as_deref(),
        Some("parser panicked: boom second line")
    );
}

#[test]
fn a_thousand_nested_multiparts_complete_with_bounded_output() {
    let mut raw = String::from("From: deep@example.com\r\nSubject: deep\r\n");
    for i in 0..1_000 {
        write!(
            raw,
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        )
        .unwrap();
    }
    raw.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for i in (0..1_000).rev() {
        write!(raw, "--b{i}--\r\n").unwrap();
    }

    let m = normalize(raw.as_bytes(), &limits());

    assert_eq!(m.subject.as_deref(), Some("deep"));
    assert_eq!(m.body_text.as_deref(), Some("innermost"));
    assert!(
        m.parse_error
            .as_deref()
            .is_some_and(|e| e.contains("deeper than 64 levels"))
    );
    assert!(serde_json::to_string(&m).unwrap().len() < 2_000);
}

#[test]
fn deeply_nested_forwarded_messages_do_not_overflow_the_stack() {
    // Arrange: 50,000 identity-encoded message/rfc822 levels. A 2 MiB stack
    // (the test thread's, and tokio's) overflows at about 30,000 levels when
    // mail-parser's `Message` is dropped recursively.
    let level = "Subject: x\r\nContent-Type: message/rfc822\r\n\r\n";
    let raw = format!(
        "From: a@example.com\r\nSubject: outer\r\nContent-Type: message/rfc822\r\n\r\n{}Subject: core\r\n\r\ncore\r\n",
        level.repeat(50_000)
    );

    // Act
    let m = normalize(raw.as_bytes(), &limits());

    // Assert: the whole chain is one attachment, the top-level part.
    assert_eq!(m.subject.as_deref(), Some("outer"));
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].part_id, "");
    assert_eq!(m.attachments[0].mime_type, "message/rfc822");
}

#[test]
fn nested_messages_inside_an_encoded_part_are_not_parsed_recursively() {
    // Arrange: 5,000 message/rfc822 levels inside one base64 part;
    // mail-parser's own decoding would recurse per level and overflow.
    let level = "Subject: x\r\nContent-Type: message/rfc822\r\n\r\n";
    let inner = format!("{}Subject: inner\r\n\r\nhello\r\n", level.repeat(5_000));
    let raw = format!(
        "From: a@example.com\r\nSubject: outer\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n\
         --m\r\nContent-Type: text/plain\r\n\r\nsee below\r\n\
         --m\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--m--\r\n",
        base64_lines(inner.as_bytes())
    );

    // Act
    let m = normalize(raw.as_bytes(), &limits());

    // Assert
    assert_eq!(m.body_text.as_deref(), Some("see below"));
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].part_id, "1");
    assert_eq!(m.attachments[0].sha256, sha_hex(inner.as_bytes()));
    assert_eq!(m.parse_error, None);
}

#[test]
fn ten_thousand_headers_complete_with_bounded_output() {
    let mut raw = String::from("Subject: many headers\r\n");
    for i in 0..10_000 {
        match i % 3 {
            0 => write!(raw, "To: user{i}@example.com\r\n").unwrap(),
            1 => write!(raw, "X-Filler-{i}: value {i}\r\n").unwrap(),
            _ => write!(
                raw,
                "Received: from host{i} by mx{i}; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            )
            .unwrap(),
        }
    }
    raw.push_str("\r\nbody\r\n");

    let m = normalize(raw.as_bytes(), &limits());

    assert_eq!(m.subject.as_deref(), Some("many headers"));
    assert_eq!(m.addresses.len(), 2_000);
    assert!(
        m.parse_error
            .as_deref()
            .is_some_and(|e| e.contains("addresses beyond the first 2000"))
    );
    assert_eq!(m.body_text.as_deref(), Some("body\n"));
}

#[test]
fn a_forty_megabyte_attachment_is_hashed_without_keeping_its_content() {
    // Arrange: 40 MB decoded, about 54 MB encoded, over max_message_bytes.
    let content: Vec<u8> = (0..40_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected_sha = sha_hex(&content);
    let mut raw = String::from(
        "From: big@example.com\r\nSubject: big attachment\r\n\
         Content-Type: multipart/mixed; boundary=big\r\n\r\n\
         --big\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n\
         --big\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
    );
    raw.push_str(&base64_lines(&content));
    drop(content);
    raw.push_str("--big--\r\n");
    let limits = NormalizeLimits {
        max_message_bytes: 50_000_000,
        max_body_bytes: 4 * 1024 * 1024,
    };

    // Act
    let m = normalize(raw.as_bytes(), &limits);

    // Assert
    assert!(m.truncated, "over max_message_bytes");
    assert_eq!(m.body_text.as_deref(), Some("see attachment"));
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].size_bytes, 40_000_000);
    assert_eq!(m.attachments[0].sha256, expected_sha);
    assert_eq!(m.attachments[0].filename.as_deref(), Some("data.bin"));
    assert!(serde_json::to_string(&m).unwrap().len() < 2_000);
    assert_eq!(m.parse_error, None);
}

#[test]
fn snippets_collapse_whitespace() {
    assert_eq!(snippet("Hello,\r\n\r\n   world!", 100), "Hello, world!");
}

// ---------------------------------------------------------------- properties

fn fixture_corpus() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eml");
    let mut corpus = Vec::new();
    for folder in ["rfc", "gmail", "malformed"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder)) else {
            continue;
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        corpus.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    corpus
}

/// Byte sequences that steer a mutation toward parser edge cases.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n\n",
    b"--",
    b"\0",
    b"=?utf-8?q?=0D=0A?=",
    b"=?x?b?////?=",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"charset=\"x-bogus\"",
    b"\"",
    b"<",
    b"=",
    b"\xff\xfe",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Flip(i, b) => {
                if let Some(x) = bytes.get_mut(i % len) {
                    *x ^= b;
                }
            }
            Mutation::Insert(i, t) => {
                let at = (i % len).min(bytes.len());
                bytes.splice(at..at, TOKENS[t].iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = (i % len).min(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_yield_clean_text(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let m = normalize(&raw, &limits());
        assert_clean(&m);
    }

    #[test]
    fn mutated_fixtures_never_panic_and_yield_clean_text(
        pick in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let corpus = fixture_corpus();
        prop_assume!(!corpus.is_empty());
        let raw = apply(corpus[pick % corpus.len()].clone(), &mutations);
        let m = normalize(&raw, &NormalizeLimits { max_message_bytes: 2_000, max_body_bytes: 300 });
        assert_clean(&m);
        prop_assert!(m.body_text.as_ref().is_none_or(|t| t.len() <= 300));
        prop_assert!(m.body_html.as_ref().is_none_or(|t| t.len() <= 300));
    }
}

#[test]
fn mail_parser_debug_assertions_become_parse_errors() {
    // Arrange: a fuzzer find (a forwarded message with a mangled
    // Content-Disposition) that reaches a `debug_assert!(false, ..)` in
    // mail-parser 0.11. Release builds skip the assertion and recover;
    // debug builds panic there, which `normalize` must absorb.
    let raw = include_bytes!(
        "../../../tests/fixtures/eml/regressions/mail-parser-debug-assert-multipart.eml"
    );

    // Act
    let m = normalize(raw, &limits());

    // Assert
    assert_eq!(m.subject.as_deref(), Some("Fwd: Lunch?"));
    assert_eq!(m.message_id.as_deref(), Some("fwd-1@example.com"));
    if cfg!(debug_assertions) {
        assert_eq!(
            m.parse_error.as_deref(),
            Some("parser panicked: Invalid part ID, could not find multipart.")
        );
    }
    assert_clean(&m);
}
