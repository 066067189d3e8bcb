//! Top-level header fields: subject, addresses, ids and date.
//!
//! Works on headers already parsed by mail-parser (RFC 2047 encoded words
//! decoded, address lists and groups split), so the raw and the Gmail-payload
//! paths share it.

use std::collections::HashSet;

use mail_parser::{Addr, Address, DateTime, Header, HeaderName, HeaderValue};

use super::text::{Problems, clean_line};
use crate::model::{AddressRole, MessageAddress, NormalizedMessage};

/// The most addresses kept for one message (all roles together). A message
/// with more is hostile or a mailing-list accident; the rest is dropped and
/// noted in `parse_error`.
pub(super) const MAX_ADDRESSES: usize = 2_000;

/// The most `References` ids kept. The first (thread root) and the last ones
/// (closest ancestors) are what threading needs.
pub(super) const MAX_REFERENCES: usize = 500;

/// Fills subject, addresses, ids and date of `out` from the top-level
/// headers; `raw` is the buffer their offsets point into.
///
/// For fields that may appear once (Subject, Message-ID, In-Reply-To,
/// References) the first occurrence wins, as in most mail clients; Date is
/// the first that parses; address fields are merged over all occurrences.
pub(super) fn extract(
    headers: &[Header<'_>],
    raw: &[u8],
    out: &mut NormalizedMessage,
    problems: &mut Problems,
) {
    out.subject = first(headers, &HeaderName::Subject)
        .and_then(|h| h.value.as_text())
        .and_then(clean_line);
    out.message_id =
        first(headers, &HeaderName::MessageId).and_then(|h| ids(h, raw).into_iter().next());
    out.in_reply_to =
        first(headers, &HeaderName::InReplyTo).and_then(|h| ids(h, raw).into_iter().next());
    out.references = first(headers, &HeaderName::References)
        .map(|h| cap_references(ids(h, raw)))
        .unwrap_or_default();
    out.date = headers
        .iter()
        .filter(|h| h.name == HeaderName::Date)
        .find_map(|h| h.value.as_datetime().and_then(utc_rfc3339));
    out.addresses = addresses(headers, problems);
}

fn first<'a, 'x>(headers: &'a [Header<'x>], name: &HeaderName<'_>) -> Option<&'a Header<'x>> {
    headers.iter().find(|h| &h.name == name)
}

/// The message ids of an id header. When mail-parser could not parse it (a
/// missing `>`, say) the raw value is split on whitespace and commas, so a
/// damaged Message-ID still threads.
fn ids(header: &Header<'_>, raw: &[u8]) -> Vec<String> {
    match &header.value {
        HeaderValue::Text(id) => clean_id(id).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|id| clean_id(id)).collect(),
        _ => {
            let (start, end) = (header.offset_start as usize, header.offset_end as usize);
            let value = if start <= end {
                raw.get(start..end).unwrap_or_default()
            } else {
                &[]
            };
            String::from_utf8_lossy(value)
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter_map(clean_id)
                .collect()
        }
    }
}

/// A message id without angle brackets or whitespace.
fn clean_id(id: &str) -> Option<String> {
    let id = clean_line(id)?;
    let trimmed = id.trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn cap_references(mut refs: Vec<String>) -> Vec<String> {
    if refs.len() > MAX_REFERENCES {
        // Keep the root and the most recent ancestors.
        refs.drain(1..refs.len() - (MAX_REFERENCES - 1));
    }
    refs
}

/// The date in UTC as RFC 3339 (`1969-02-14T03:02:00Z`), or `None` when the
/// parsed fields are out of range.
pub(super) fn utc_rfc3339(date: &DateTime) -> Option<String> {
    if !date.is_valid() {
        return None;
    }
    Some(DateTime::from_timestamp(date.to_timestamp()).to_rfc3339())
}

fn role_of(name: &HeaderName<'_>) -> Option<AddressRole> {
    Some(match name {
        HeaderName::From => AddressRole::From,
        HeaderName::Sender => AddressRole::Sender,
        HeaderName::ReplyTo => AddressRole::ReplyTo,
        HeaderName::To => AddressRole::To,
        HeaderName::Cc => AddressRole::Cc,
        HeaderName::Bcc => AddressRole::Bcc,
        _ => return None,
    })
}

/// Every address, in role order (from, sender, reply_to, to, cc, bcc) and
/// header order within a role, groups flattened, duplicates of the same
/// `(role, address)` dropped.
fn addresses(headers: &[Header<'_>], problems: &mut Problems) -> Vec<MessageAddress> {
    let mut out = Vec::new();
    let mut seen: HashSet<(AddressRole, String, Option<String>)> = HashSet::new();
    let mut dropped = 0usize;
    for &role in AddressRole::ALL {
        for header in headers.iter().filter(|h| role_of(&h.name) == Some(role)) {
            let HeaderValue::Address(address) = &header.value else {
                continue;
            };
            // mail-parser returns a whole header as groups once any group
            // appears; ungrouped members then sit in a nameless group.
            let members: Vec<(&Addr<'_>, bool)> = match address {
                Address::List(list) => list.iter().map(|a| (a, false)).collect(),
                Address::Group(groups) => groups
                    .iter()
                    .flat_map(|g| g.addresses.iter().map(move |a| (a, g.name.is_some())))
                    .collect(),
            };
            for (addr, in_named_group) in members {
                for entry in message_addresses(role, addr, in_named_group) {
                    // Past the cap nothing more is remembered, so the set
                    // stays bounded too; the count may include duplicates.
                    if out.len() >= MAX_ADDRESSES {
                        dropped += 1;
                        continue;
                    }
                    // Named entries without an address are keyed by their
                    // name so they stay distinct.
                    let key_name = entry
                        .address
                        .is_empty()
                        .then(|| entry.name.clone())
                        .flatten();
                    if seen.insert((role, entry.address.clone(), key_name)) {
                        out.push(entry);
                    }
                }
            }
        }
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} addresses beyond the first {MAX_ADDRESSES} dropped"
        ));
    }
    out
}

/// The entries one parsed address yields: normally one. When mail-parser
/// found no address but the "name" holds `@` (unbalanced quotes or angle
/// brackets swallowed the rest of the header), the tokens that look like
/// addresses are salvaged without a name. A bare name outside a group is
/// kept with an empty address; inside a named group it is a comment and is
/// dropped.
fn message_addresses(
    role: AddressRole,
    addr: &Addr<'_>,
    in_named_group: bool,
) -> Vec<MessageAddress> {
    let name = addr.name.as_deref().and_then(clean_line);
    let address = addr.address.as_deref().and_then(clean_line);
    match (address, name) {
        (Some(address), name) => vec![entry(role, name, &address)],
        (None, Some(name)) if name.contains('@') => name
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .map(|token| {
                token.trim_matches(|c: char| matches!(c, '<' | '>' | '"' | '\'' | '(' | ')'))
            })
            .filter(|token| token.len() > 2 && token.contains('@'))
            .map(|token| entry(role, None, token))
            .collect(),
        (None, Some(name)) if !in_named_group => vec![MessageAddress {
            role,
            name: Some(name),
            address: String::new(),
            domain: String::new(),
        }],
        _ => Vec::new(),
    }
}

fn entry(role: AddressRole, name: Option<String>, address: &str) -> MessageAddress {
    let address = address.to_lowercase();
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d.trim().to_owned())
        .unwrap_or_default();
    MessageAddress {
        role,
        name,
        address,
        domain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_keep_root_and_latest() {
        let refs: Vec<String> = (0..MAX_REFERENCES + 10).map(|i| i.to_string()).collect();
        let capped = cap_references(refs);
        assert_eq!(capped.len(), MAX_REFERENCES);
        assert_eq!(capped[0], "0");
        assert_eq!(capped[1], "11");
        assert_eq!(capped.last().map(String::as_str), Some("509"));
    }

    #[test]
    fn dates_are_converted_to_utc() {
        let date = DateTime::parse_rfc822("Thu, 13 Feb 1969 23:32 -0330").unwrap();
        assert_eq!(utc_rfc3339(&date).as_deref(), Some("1969-02-14T03:02:00Z"));
        let date = DateTime::parse_rfc822("Mon, 1 Jan 2024 00:30:00 +0100").unwrap();
        assert_eq!(utc_rfc3339(&date).as_deref(), Some("2023-12-31T23:30:00Z"));
    }

    #[test]
    fn ids_lose_their_brackets() {
        assert_eq!(clean_id(" <a@b> ").as_deref(), Some("a@b"));
        assert_eq!(clean_id("<>"), None);
    }
}
