//! Deterministic, lazy generation of realistic RFC 822 messages.
//!
//! A generated message is never stored: the mailbox keeps a compact descriptor and this module
//! rebuilds the exact same bytes from `(seed, mailbox index, message index)` on every request.
//! The output is plain 7-bit ASCII (non-ASCII text goes through quoted-printable, base64 and
//! RFC 2047 encoded words), with CRLF line endings.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use chrono::{DateTime, FixedOffset, Offset as _, Utc};

use super::util::hash;

/// Salts that keep the independent per-message decisions uncorrelated.
mod salt {
    pub(super) const LANG: u64 = 1;
    pub(super) const DIRECTION: u64 = 2;
    pub(super) const SUBJECT: u64 = 3;
    pub(super) const CONTACT: u64 = 4;
    pub(super) const BODY: u64 = 5;
    pub(super) const SHAPE: u64 = 6;
    pub(super) const MESSAGE_ID: u64 = 7;
    pub(super) const ATTACHMENT: u64 = 8;
    pub(super) const HEADERS: u64 = 9;
    pub(super) const ENCODING: u64 = 10;
}

/// Everything needed to render one generated message, copied out of the mailbox under its lock.
#[derive(Debug, Clone)]
pub(crate) struct MessageSpec {
    pub(crate) seed: u64,
    pub(crate) user_index: u32,
    pub(crate) user_email: String,
    pub(crate) domain: String,
    pub(crate) index: u32,
    pub(crate) internal_date_ms: i64,
    /// The thread's earlier messages this one replies to, root first, as `(index, internal date)`.
    pub(crate) ancestors: Vec<(u32, i64)>,
}

/// A rendered message: the RFC 822 bytes and Gmail's text snippet.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    pub(crate) raw: Vec<u8>,
    pub(crate) snippet: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    English,
    Latin1,
    Windows1252,
    Japanese,
}

impl Lang {
    fn of(seed: u64, user: u32, root: u32) -> Lang {
        match hash(&[seed, u64::from(user), u64::from(root), salt::LANG]) % 100 {
            0..=54 => Lang::English,
            55..=69 => Lang::Latin1,
            70..=84 => Lang::Windows1252,
            _ => Lang::Japanese,
        }
    }

    /// The MIME charset label and the encoder for body text.
    fn charset(self) -> (&'static str, &'static encoding_rs::Encoding) {
        match self {
            Lang::English => ("UTF-8", encoding_rs::UTF_8),
            // encoding_rs maps the ISO-8859-1 label to windows-1252, which agrees on every Latin-1
            // character the Latin-1 text bank uses.
            Lang::Latin1 => ("ISO-8859-1", encoding_rs::WINDOWS_1252),
            Lang::Windows1252 => ("windows-1252", encoding_rs::WINDOWS_1252),
            Lang::Japanese => ("Shift_JIS", encoding_rs::SHIFT_JIS),
        }
    }

    fn sentences(self) -> &'static [&'static str] {
        match self {
            Lang::English => ENGLISH,
            Lang::Latin1 => LATIN1,
            Lang::Windows1252 => WINDOWS1252,
            Lang::Japanese => JAPANESE,
        }
    }

    fn subjects(self) -> &'static [&'static str] {
        match self {
            Lang::English => SUBJECTS_EN,
            Lang::Latin1 => SUBJECTS_LATIN1,
            Lang::Windows1252 => SUBJECTS_1252,
            Lang::Japanese => SUBJECTS_JA,
        }
    }
}

const ENGLISH: &[&str] = &[
    "Please find the updated maintenance schedule for the north building below.",
    "The tenant in unit 4B reported a leaking radiator again this morning.",
    "Could you confirm the invoice total before Friday so we can close the month?",
    "We have received the signed lease agreement and will file it today.",
    "The elevator inspection is booked for next Tuesday between 9 and 11.",
    "Reminder: the quarterly fire alarm test happens on the first Monday.",
    "Attached is the statement for the last billing period, including late fees.",
    "The landscaping contractor asked whether they can start an hour earlier.",
    "Our records show two payments for the same reference; please advise.",
    "Thanks for the quick turnaround on the parking permit request.",
    "The boiler service report is attached; no defects were found this time.",
    "Please update the contact details for the emergency plumber on file.",
    "Move-in inspection photos are in the shared folder under the unit number.",
    "The key fob for the garage stopped working after the firmware update.",
    "Can we reschedule the walkthrough to Thursday afternoon instead?",
    "Rent for December was received in full, thank you.",
    "The roof repair quote came in higher than expected, around 12,400 USD.",
    "Merci beaucoup for the quick fix \u{2014} the heating works again \u{1F64F}.",
    "Noise complaints from the third floor have stopped since the meeting.",
    "Please sign the renewal by the 15th so the new rate applies from January.",
];

const LATIN1: &[&str] = &[
    "Sehr geehrte Damen und Herren, die Heizung im Erdgeschoß ist ausgefallen.",
    "Die Nebenkostenabrechnung für 2025 liegt bei; bitte prüfen Sie die Beträge.",
    "Grüße aus München, die Übergabe der Schlüssel erfolgt am Donnerstag.",
    "Le propriétaire a confirmé la réparation de la fenêtre côté cour.",
    "Très bien, merci pour votre réponse rapide et à bientôt.",
    "La señora Muñoz pagó el alquiler de diciembre en efectivo.",
    "El técnico vendrá el miércoles para revisar la calefacción del ático.",
    "Könnten Sie uns bitte die Zählerstände bis Freitag übermitteln?",
    "Nous avons reçu le dépôt de garantie, le reçu est en pièce jointe.",
    "Für Rückfragen stehe ich Ihnen gerne zur Verfügung.",
    "L'ascenseur sera hors service mardi matin pour l'entretien annuel.",
    "Por favor, confirme la fecha de la inspección del edificio.",
];

const WINDOWS1252: &[&str] = &[
    "The deposit of \u{20AC}1,250 was received \u{2014} thanks!",
    "He said \u{201C}the leak is fixed\u{201D} but it\u{2019}s dripping again.",
    "Our contractor\u{2019}s quote: \u{20AC}480 for the repairs \u{2013} see attached.",
    "We\u{2019}ll send the \u{201C}final\u{201D} statement once the audit is done\u{2026}",
    "The tenants\u{2019} association meets on Wednesday \u{2013} agenda below.",
    "Service charge for Q3 is \u{20AC}312.40 per unit, as agreed.",
    "Please don\u{2019}t park in bays 12\u{2013}14 during the resurfacing.",
    "I\u{2019}ve attached the signed form \u{2022} page two needs your initials.",
];

const JAPANESE: &[&str] = &[
    "お世話になっております。",
    "来週の点検日程についてご確認ください。",
    "請求書を添付いたしましたので、ご査収ください。",
    "エレベーターの修理は金曜日に完了する予定です。",
    "駐車場の利用規約が変更になりました。",
    "入居者様からの問い合わせについてご対応をお願いします。",
    "鍵の受け渡しは管理事務所にて行います。",
    "よろしくお願いいたします。",
];

const SUBJECTS_EN: &[&str] = &[
    "Maintenance schedule - north building",
    "Invoice overdue for unit 12",
    "Lease renewal for unit 4B",
    "Leaking radiator in 4B",
    "Parking permit request",
    "Quarterly statement",
    "Elevator inspection next week",
    "Roof repair quote",
    "Move-in inspection photos",
    "Caf\u{e9} space booking \u{2615}",
    "Noise complaint - third floor",
    "Garage key fob not working",
];

const SUBJECTS_LATIN1: &[&str] = &[
    "Nebenkostenabrechnung Wohnung 7",
    "Réparation de la fenêtre",
    "Schlüsselübergabe Donnerstag",
    "Inspección del edificio",
    "Dépôt de garantie reçu",
];

const SUBJECTS_1252: &[&str] = &[
    "\u{201C}Final\u{201D} service charge statement",
    "Deposit \u{20AC}1,250 received",
    "Resurfacing \u{2013} parking bays 12\u{2013}14",
    "Contractor\u{2019}s quote for repairs",
];

const SUBJECTS_JA: &[&str] = &[
    "点検のお知らせ",
    "請求書送付の件",
    "駐車場規約の変更について",
    "鍵の受け渡し",
];

/// Correspondents outside the domain: (display name, address).
const CONTACTS: &[(&str, &str)] = &[
    ("Maria Gonzalez", "maria.gonzalez@tenants.example.net"),
    ("José Álvarez", "jose.alvarez@correo.example.es"),
    ("Müller, Jürgen", "j.mueller@hausverwaltung.example.de"),
    ("Chloé Dubois", "chloe.dubois@exemple.example.fr"),
    ("山田 太郎", "yamada@example.co.jp"),
    ("Tom O'Brien", "tom.obrien@plumbing.example.com"),
    ("Priya Patel", "priya@acme-facilities.example.com"),
    ("Billing Notifications", "no-reply@payments.example.com"),
    ("Lars Østergård", "lars@nordic-elevators.example.dk"),
    ("Wei Zhang", "wei.zhang@roofing.example.com"),
    ("Sam Carter", "sam.carter@landscaping.example.org"),
    ("Ana Souza", "ana.souza@condominio.example.br"),
];

/// Whether this message was sent by the mailbox owner (label SENT) rather than received.
pub(crate) fn is_sent(seed: u64, user: u32, index: u32) -> bool {
    hash(&[seed, u64::from(user), u64::from(index), salt::DIRECTION]) % 100 < 15
}

/// The `Message-ID` header value (with angle brackets) of a generated message.
pub(crate) fn message_id(seed: u64, user: u32, index: u32, domain: &str) -> String {
    let tag = hash(&[seed, u64::from(user), u64::from(index), salt::MESSAGE_ID]);
    format!("<{tag:016x}.{user}.{index}@mail.{domain}>")
}

/// Recognises a generated `Message-ID` and returns its message index within mailbox `user`.
pub(crate) fn parse_message_id(seed: u64, user: u32, domain: &str, value: &str) -> Option<u32> {
    let inner = value.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, host) = inner.split_once('@')?;
    if host != format!("mail.{domain}") {
        return None;
    }
    let mut fields = local.split('.');
    let (_tag, owner, index) = (fields.next()?, fields.next()?, fields.next()?);
    let (owner, index): (u32, u32) = (owner.parse().ok()?, index.parse().ok()?);
    (owner == user && message_id(seed, user, index, domain) == format!("<{inner}>"))
        .then_some(index)
}

/// Renders one generated message.
pub(crate) fn render(spec: &MessageSpec) -> Rendered {
    let MessageSpec {
        seed,
        user_index: user,
        index,
        ..
    } = *spec;
    let h = |salt: u64, extra: u64| hash(&[seed, u64::from(user), u64::from(index), salt, extra]);
    let root = spec.ancestors.first().map_or(index, |&(root, _)| root);
    let lang = Lang::of(seed, user, root);
    let (charset, encoding) = lang.charset();
    let subjects = lang.subjects();
    let root_subject = subjects[(hash(&[seed, u64::from(user), u64::from(root), salt::SUBJECT])
        % subjects.len() as u64) as usize];
    let subject = if spec.ancestors.is_empty() {
        root_subject.to_owned()
    } else {
        format!("Re: {root_subject}")
    };
    let contact = CONTACTS[(hash(&[seed, u64::from(user), u64::from(root), salt::CONTACT])
        % CONTACTS.len() as u64) as usize];
    let own_name = display_name_for(&spec.user_email);
    let own: (&str, &str) = (own_name.as_str(), spec.user_email.as_str());
    let sent = is_sent(seed, user, index);
    let (from, to) = if sent { (own, contact) } else { (contact, own) };

    // Body text: a few paragraphs from the thread language's bank, plus a quote when replying.
    let sentences = lang.sentences();
    let paragraphs = 1 + h(salt::BODY, 0) % 4;
    let mut text = String::new();
    let greeting = if lang == Lang::Japanese {
        "各位"
    } else {
        "Hello,"
    };
    text.push_str(greeting);
    text.push_str("\n\n");
    for p in 0..paragraphs {
        let count = 2 + h(salt::BODY, 100 + p) % 4;
        let line: Vec<&str> = (0..count)
            .map(|s| {
                sentences[(h(salt::BODY, 1000 + p * 10 + s) % sentences.len() as u64) as usize]
            })
            .collect();
        let sep = if lang == Lang::Japanese { "" } else { " " };
        text.push_str(&line.join(sep));
        text.push_str("\n\n");
    }
    text.push_str(if lang == Lang::Japanese {
        "管理事務所"
    } else {
        "Best regards,\n"
    });
    if lang != Lang::Japanese {
        text.push_str(if sent { own.0 } else { contact.0 });
    }
    text.push('\n');
    let snippet = snippet_of(&text);
    if let Some(&(parent, parent_date)) = spec.ancestors.last() {
        let parent_sent = is_sent(seed, user, parent);
        let who = if parent_sent {
            spec.user_email.as_str()
        } else {
            contact.1
        };
        let quoted = sentences[(hash(&[seed, u64::from(user), u64::from(parent), salt::BODY, 1000])
            % sentences.len() as u64) as usize];
        let _ = write!(
            text,
            "\nOn {}, <{who}> wrote:\n> {quoted}\n> \n> {}\n",
            rfc2822_date(parent_date, 0),
            sentences[0]
        );
    }
    let html = html_of(&text);

    // Headers.
    let mut out = String::with_capacity(8 * 1024);
    let date_ms = spec.internal_date_ms - (h(salt::HEADERS, 0) % 90_000) as i64;
    let _ = write!(
        out,
        "Return-Path: <{}>\r\nReceived: from mail-sor-f{}.example.net (mail-sor-f{}.example.net. [209.85.220.{}])\r\n        by mx.google.com with SMTPS id emu{:x}\r\n        for <{}>\r\n        (Google Transport Security);\r\n        {}\r\n",
        from.1,
        h(salt::HEADERS, 1) % 90,
        h(salt::HEADERS, 1) % 90,
        h(salt::HEADERS, 2) % 250,
        h(salt::HEADERS, 3),
        to.1,
        rfc2822_date(spec.internal_date_ms, 0)
    );
    let _ = write!(
        out,
        "MIME-Version: 1.0\r\nDate: {}\r\n",
        rfc2822_date(date_ms, (h(salt::HEADERS, 4) % 5) as usize)
    );
    let _ = write!(out, "From: {}\r\n", mailbox_header(from.0, from.1, lang));
    if h(salt::HEADERS, 5) % 8 == 0 {
        // A long recipient list, folded over many lines.
        let mut recipients = vec![mailbox_header(to.0, to.1, lang)];
        for k in 0..(6 + h(salt::HEADERS, 6) % 8) {
            let (name, addr) =
                CONTACTS[(h(salt::HEADERS, 10 + k) % CONTACTS.len() as u64) as usize];
            recipients.push(mailbox_header(name, addr, lang));
        }
        let _ = write!(out, "To: {}\r\n", recipients.join(",\r\n "));
    } else {
        let _ = write!(out, "To: {}\r\n", mailbox_header(to.0, to.1, lang));
    }
    if h(salt::HEADERS, 7) % 5 == 0 {
        let (name, addr) = CONTACTS[(h(salt::HEADERS, 8) % CONTACTS.len() as u64) as usize];
        let _ = write!(out, "Cc: {}\r\n", mailbox_header(name, addr, lang));
    }
    let _ = write!(out, "Subject: {}\r\n", encode_header_text(&subject, lang));
    let _ = write!(
        out,
        "Message-ID: {}\r\n",
        message_id(seed, user, index, &spec.domain)
    );
    if let Some(&(parent, _)) = spec.ancestors.last() {
        let _ = write!(
            out,
            "In-Reply-To: {}\r\n",
            message_id(seed, user, parent, &spec.domain)
        );
        let refs: Vec<String> = spec
            .ancestors
            .iter()
            .map(|&(a, _)| message_id(seed, user, a, &spec.domain))
            .collect();
        let _ = write!(out, "References: {}\r\n", refs.join("\r\n "));
    }
    let _ = write!(
        out,
        "X-Mailer: Emulated Mail Client 4.{}\r\nX-Emulator-Trace: {:016x}{:016x}{:016x}\r\n        {:016x}{:016x}\r\n",
        h(salt::HEADERS, 9) % 20,
        h(salt::HEADERS, 30),
        h(salt::HEADERS, 31),
        h(salt::HEADERS, 32),
        h(salt::HEADERS, 33),
        h(salt::HEADERS, 34)
    );

    // Body structure.
    let boundary = |n: u64| {
        format!(
            "000000000000{:012x}{n}",
            h(salt::SHAPE, 100 + n) & 0xffff_ffff_ffff
        )
    };
    let use_base64 = h(salt::ENCODING, 0) % 10 < 3;
    let plain = text_part("plain", charset, encoding, &text, use_base64);
    let shape = h(salt::SHAPE, 0) % 100;
    if shape < 25 {
        out.push_str(&plain);
    } else {
        let html_part = text_part("html", charset, encoding, &html, false);
        let alternative = multipart("alternative", &boundary(1), &[plain, html_part]);
        if shape < 60 {
            out.push_str(&alternative);
        } else if shape < 85 {
            let mut parts = vec![alternative];
            for k in 0..(1 + h(salt::ATTACHMENT, 0) % 2) {
                parts.push(attachment(&h, k, false));
            }
            out.push_str(&multipart("mixed", &boundary(2), &parts));
        } else {
            let cid = format!("img{:x}@emulator", h(salt::ATTACHMENT, 50));
            let html_with_image = html.replace(
                "</body>",
                &format!("<img src=\"cid:{cid}\" alt=\"logo\"></body>"),
            );
            let html_part = text_part("html", charset, encoding, &html_with_image, false);
            let inner = multipart(
                "alternative",
                &boundary(1),
                &[
                    text_part("plain", charset, encoding, &text, use_base64),
                    html_part,
                ],
            );
            let mut image = attachment(&h, 9, true);
            image = image.replacen("\r\n\r\n", &format!("\r\nContent-ID: <{cid}>\r\n\r\n"), 1);
            let related = multipart("related", &boundary(3), &[inner, image]);
            let mut parts = vec![related];
            parts.push(attachment(&h, 0, false));
            out.push_str(&multipart("mixed", &boundary(2), &parts));
        }
    }
    Rendered {
        raw: out.into_bytes(),
        snippet,
    }
}

fn display_name_for(email: &str) -> String {
    let local = email.split('@').next().unwrap_or(email);
    let mut name = String::new();
    for (i, word) in local.split(['.', '-', '_']).enumerate() {
        if i > 0 {
            name.push(' ');
        }
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

/// Gmail-style snippet: whitespace collapsed, about 100 characters.
pub(crate) fn snippet_of(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(100).collect()
}

fn html_of(text: &str) -> String {
    let mut html = String::from(
        "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html\"></head><body>",
    );
    for paragraph in text.split("\n\n") {
        html.push_str("<p>");
        for (i, line) in paragraph.lines().enumerate() {
            if i > 0 {
                html.push_str("<br>");
            }
            for c in line.chars() {
                match c {
                    '&' => html.push_str("&amp;"),
                    '<' => html.push_str("&lt;"),
                    '>' => html.push_str("&gt;"),
                    '"' => html.push_str("&quot;"),
                    _ => html.push(c),
                }
            }
        }
        html.push_str("</p>\n");
    }
    html.push_str("</body></html>\n");
    html
}

fn rfc2822_date(ms: i64, zone: usize) -> String {
    const ZONES: [i32; 5] = [0, -8 * 3600, 3600, 9 * 3600, -5 * 3600];
    let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    let offset = FixedOffset::east_opt(ZONES[zone % ZONES.len()]).unwrap_or_else(|| Utc.fix());
    utc.with_timezone(&offset)
        .format("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

/// `Name <addr>` with the name quoted or RFC 2047-encoded as needed.
fn mailbox_header(name: &str, addr: &str, lang: Lang) -> String {
    if name.is_ascii() {
        if name.contains([',', '\'', '.']) {
            format!("\"{name}\" <{addr}>")
        } else {
            format!("{name} <{addr}>")
        }
    } else {
        format!("{} <{addr}>", encode_header_text(name, lang))
    }
}

/// RFC 2047 encoded words: Q in the message's single-byte charset where it fits, else B in
/// Shift_JIS or UTF-8. Long text becomes several words on folded lines.
fn encode_header_text(text: &str, lang: Lang) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let (label, encoding, q) = match lang {
        Lang::Latin1 | Lang::Windows1252 => {
            let (label, encoding) = lang.charset();
            let (_, _, errors) = encoding.encode(text);
            if errors {
                ("UTF-8", encoding_rs::UTF_8, false)
            } else {
                (label, encoding, true)
            }
        }
        Lang::Japanese => {
            let (_, _, errors) = encoding_rs::SHIFT_JIS.encode(text);
            if errors {
                ("UTF-8", encoding_rs::UTF_8, false)
            } else {
                ("Shift_JIS", encoding_rs::SHIFT_JIS, false)
            }
        }
        Lang::English => ("UTF-8", encoding_rs::UTF_8, false),
    };
    let mut words = Vec::new();
    let mut chunk = String::new();
    let flush = |chunk: &str, words: &mut Vec<String>| {
        if chunk.is_empty() {
            return;
        }
        let (bytes, _, _) = encoding.encode(chunk);
        let word = if q {
            let mut encoded = String::new();
            for &b in bytes.iter() {
                match b {
                    b' ' => encoded.push('_'),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'!' | b'*' | b'+' | b'-' | b'/' => {
                        encoded.push(b as char)
                    }
                    _ => {
                        let _ = write!(encoded, "={b:02X}");
                    }
                }
            }
            format!("=?{label}?Q?{encoded}?=")
        } else {
            format!("=?{label}?B?{}?=", BASE64_STANDARD.encode(&bytes))
        };
        words.push(word);
    };
    for c in text.chars() {
        chunk.push(c);
        if encoding.encode(&chunk).0.len() >= 30 {
            flush(&chunk, &mut words);
            chunk.clear();
        }
    }
    flush(&chunk, &mut words);
    words.join("\r\n ")
}

/// A complete text part (headers and encoded body) in the given charset.
fn text_part(
    subtype: &str,
    charset: &str,
    encoding: &'static encoding_rs::Encoding,
    text: &str,
    base64: bool,
) -> String {
    let (bytes, _, _) = encoding.encode(text);
    let mut out = format!("Content-Type: text/{subtype}; charset=\"{charset}\"\r\n");
    if bytes.is_ascii() {
        out.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        out.push_str(&text.replace('\n', "\r\n"));
    } else if base64 {
        out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        out.push_str(&wrapped_base64(&bytes));
    } else {
        out.push_str("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        out.push_str(&quoted_printable(&bytes));
    }
    out
}

/// A non-text part: a PDF or CSV attachment, or an inline PNG image.
fn attachment(h: &dyn Fn(u64, u64) -> u64, k: u64, inline_image: bool) -> String {
    let pick = h(salt::ATTACHMENT, 10 + k);
    let len = 1200 + (h(salt::ATTACHMENT, 20 + k) % 4800) as usize;
    let mut data = Vec::with_capacity(len + 32);
    let (mime, filename) = if inline_image {
        data.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        ("image/png", format!("logo-{}.png", pick % 100))
    } else {
        match pick % 4 {
            0 => {
                data.extend_from_slice(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n");
                ("application/pdf", format!("invoice-{}.pdf", pick % 10_000))
            }
            1 => {
                data.extend_from_slice(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n");
                ("application/pdf", "Übergabeprotokoll März.pdf".to_owned())
            }
            2 => ("text/csv", format!("statement-{}.csv", pick % 1000)),
            _ => ("image/jpeg", format!("IMG_{:04}.jpg", pick % 10_000)),
        }
    };
    if mime == "text/csv" {
        data.extend_from_slice(b"date,unit,amount\r\n");
        let mut row = 0u64;
        while data.len() < len / 3 {
            let _ = write!(
                WriteBytes(&mut data),
                "2026-{:02}-{:02},{},{}.{:02}\r\n",
                1 + (h(salt::ATTACHMENT, 1000 + row) % 12),
                1 + (h(salt::ATTACHMENT, 2000 + row) % 28),
                1 + (h(salt::ATTACHMENT, 3000 + row) % 40),
                h(salt::ATTACHMENT, 4000 + row) % 3000,
                h(salt::ATTACHMENT, 5000 + row) % 100
            );
            row += 1;
        }
    } else {
        let mut word = 0u64;
        while data.len() < len {
            data.extend_from_slice(&h(salt::ATTACHMENT, 10_000 + word).to_le_bytes());
            word += 1;
        }
    }
    let disposition = if inline_image { "inline" } else { "attachment" };
    let name_param = if filename.is_ascii() {
        format!("name=\"{filename}\"")
    } else {
        format!("name=\"{}\"", encode_header_text(&filename, Lang::English))
    };
    let file_param = if filename.is_ascii() {
        format!("filename=\"{filename}\"")
    } else {
        let encoded: String = url::form_urlencoded::byte_serialize(filename.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        format!("filename*=UTF-8''{encoded}")
    };
    format!(
        "Content-Type: {mime}; {name_param}\r\nContent-Disposition: {disposition};\r\n {file_param}\r\nContent-Transfer-Encoding: base64\r\nX-Attachment-Id: f_{:x}\r\n\r\n{}",
        pick & 0xffff_ffff,
        wrapped_base64(&data)
    )
}

struct WriteBytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for WriteBytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn multipart(subtype: &str, boundary: &str, parts: &[String]) -> String {
    let mut out = format!("Content-Type: multipart/{subtype}; boundary=\"{boundary}\"\r\n\r\n");
    for part in parts {
        let _ = write!(out, "--{boundary}\r\n{part}\r\n");
    }
    let _ = write!(out, "--{boundary}--\r\n");
    out
}

fn wrapped_base64(bytes: &[u8]) -> String {
    let encoded = BASE64_STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// Quoted-printable (RFC 2045): hard line breaks kept as CRLF, soft breaks before 76 columns.
pub(crate) fn quoted_printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3 / 2);
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut column = 0;
        for (j, &b) in line.iter().enumerate() {
            let last = j + 1 == line.len();
            let literal = match b {
                b'=' => false,
                b' ' | b'\t' => !last,
                33..=126 => true,
                _ => false,
            };
            let width = if literal { 1 } else { 3 };
            if column + width > 75 {
                out.push_str("=\r\n");
                column = 0;
            }
            if literal {
                out.push(b as char);
            } else {
                let _ = write!(out, "={b:02X}");
            }
            column += width;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(index: u32, ancestors: Vec<(u32, i64)>) -> MessageSpec {
        MessageSpec {
            seed: 1,
            user_index: 2,
            user_email: "support@example.com".into(),
            domain: "example.com".into(),
            index,
            internal_date_ms: 1_780_000_000_000,
            ancestors,
        }
    }

    #[test]
    fn rendering_is_deterministic_and_ascii_with_crlf() {
        for index in 0..200 {
            let a = render(&spec(index, vec![]));
            let b = render(&spec(index, vec![]));
            assert_eq!(a.raw, b.raw);
            assert!(a.raw.is_ascii(), "message {index} is not 7-bit");
            assert!(!a.snippet.is_empty());
            let text = String::from_utf8(a.raw).unwrap();
            assert!(
                !text.replace("\r\n", "").contains('\n'),
                "bare LF in message {index}"
            );
        }
    }

    #[test]
    fn replies_carry_in_reply_to_and_references() {
        let reply = String::from_utf8(
            render(&spec(
                5,
                vec![(1, 1_770_000_000_000), (3, 1_775_000_000_000)],
            ))
            .raw,
        )
        .unwrap();
        assert!(reply.contains(&format!(
            "In-Reply-To: {}",
            message_id(1, 2, 3, "example.com")
        )));
        assert!(reply.contains(&format!(
            "References: {}\r\n {}",
            message_id(1, 2, 1, "example.com"),
            message_id(1, 2, 3, "example.com")
        )));
        assert!(reply.contains("Subject: Re: ") || reply.contains("Subject: =?"));
    }

    #[test]
    fn generated_message_ids_parse_back() {
        let id = message_id(9, 3, 42, "example.com");
        assert_eq!(parse_message_id(9, 3, "example.com", &id), Some(42));
        assert_eq!(parse_message_id(9, 4, "example.com", &id), None);
        assert_eq!(
            parse_message_id(9, 3, "example.com", "<other@example.com>"),
            None
        );
    }

    #[test]
    fn quoted_printable_escapes_and_soft_wraps() {
        let qp = quoted_printable("a=b \u{e9}\n".repeat(20).as_bytes());
        assert!(qp.contains("a=3Db =C3=A9"));
        assert!(qp.lines().all(|l| l.len() <= 76));
    }

    #[test]
    fn the_corpus_covers_charsets_encodings_and_attachments() {
        let all: String = (0..400)
            .map(|i| String::from_utf8(render(&spec(i, vec![])).raw).unwrap())
            .collect();
        for needle in [
            "charset=\"ISO-8859-1\"",
            "charset=\"Shift_JIS\"",
            "charset=\"windows-1252\"",
            "quoted-printable",
            "Content-Transfer-Encoding: base64",
            "multipart/alternative",
            "multipart/related",
            "Content-Disposition: attachment",
            "Content-Disposition: inline",
            "=?UTF-8?B?",
            "filename*=UTF-8''",
        ] {
            assert!(
                all.contains(needle),
                "no generated message contains {needle}"
            );
        }
    }
}
