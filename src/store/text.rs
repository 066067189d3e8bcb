//! How text is stored and searched, the same on both backends: NUL
//! stripping, JSON arrays of strings, and the words of a full-text search.
//!
//! Pure functions of their input. Nothing here runs SQL or knows which
//! backend is in use; the backends turn these words into their own query
//! syntax (FTS5 versus `plainto_tsquery`).

use crate::domain::NormalizedMessage;

/// PostgreSQL text cannot hold NUL; both backends store text without it.
pub(crate) fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_owned()
    }
}

pub(crate) fn clean_opt(s: Option<&str>) -> Option<String> {
    s.map(clean)
}

pub(crate) fn json_strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    serde_json::Value::Array(
        items
            .into_iter()
            .map(|s| serde_json::Value::String(clean(s.as_ref())))
            .collect(),
    )
    .to_string()
}

pub(crate) fn parse_json_strings(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// The words of a search, for backends that need them one by one.
pub(crate) fn search_words(query: &str) -> Vec<String> {
    query
        .split_whitespace()
        .map(clean)
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect()
}

/// `query` as an FTS5 expression that can never be a syntax error: each
/// word becomes a quoted string (quotes doubled), implicitly ANDed.
pub(crate) fn fts5_query(query: &str) -> Option<String> {
    let words = search_words(query);
    if words.is_empty() {
        return None;
    }
    Some(
        words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The address text indexed for full-text search: names, addresses, and the
/// local part and domain separately (PostgreSQL's parser keeps an address
/// as one token; FTS5 splits it).
pub(crate) fn fts_addresses(content: &NormalizedMessage) -> String {
    let mut out = String::new();
    for a in &content.addresses {
        if let Some(n) = &a.name {
            out.push_str(n);
            out.push(' ');
        }
        out.push_str(&a.address);
        out.push(' ');
        if let Some((local, _)) = a.address.rsplit_once('@') {
            out.push_str(local);
            out.push(' ');
        }
        out.push_str(&a.domain);
        out.push(' ');
    }
    clean(out.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_queries_quote_every_word_and_drop_punctuation_only_words() {
        assert_eq!(
            fts5_query("hello world").as_deref(),
            Some("\"hello\" \"world\"")
        );
        assert_eq!(
            fts5_query("say \"hi\"").as_deref(),
            Some("\"say\" \"\"\"hi\"\"\"")
        );
        assert_eq!(fts5_query("* ( ) \" -"), None);
        assert_eq!(fts5_query("   "), None);
    }

    #[test]
    fn nul_is_stripped_from_stored_text() {
        assert_eq!(clean("a\0b"), "ab");
        assert_eq!(json_strings(["x\0"]), "[\"x\"]");
    }
}
