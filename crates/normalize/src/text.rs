//! String hygiene shared by both normalizer paths: every string that leaves
//! `normalize` passes through one of these functions.
//!
//! PostgreSQL `text` cannot hold `\0`, and single-line fields (subject,
//! names, addresses, ids, file names) must not carry line breaks that a
//! later consumer could mistake for header boundaries.

/// The longest single-line field kept (subject, display name, file name, id),
/// in bytes. Longer values are cut on a character boundary.
pub(super) const MAX_FIELD_BYTES: usize = 8 * 1024;

/// Cleans a single-line field: drops NUL, turns every run of other control
/// characters (CR, LF, TAB, ...) into one space, trims, and caps the length.
/// Returns `None` when nothing printable is left.
pub(super) fn clean_line(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD_BYTES));
    let mut in_control_run = false;
    for c in s.chars() {
        if c == '\0' {
            continue;
        }
        if c.is_control() {
            if !in_control_run {
                out.push(' ');
                in_control_run = true;
            }
            continue;
        }
        in_control_run = false;
        if out.len() + c.len_utf8() > MAX_FIELD_BYTES {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.len() == out.len() {
        Some(out)
    } else {
        Some(trimmed.to_owned())
    }
}

/// Appends body text to `out`: NUL removed, CRLF folded to LF, and at most
/// `max_bytes` in total (cut on a character boundary).
///
/// Returns `true` when something had to be cut.
pub(super) fn push_body(out: &mut String, s: &str, max_bytes: usize) -> bool {
    for piece in s.split('\0') {
        let mut rest = piece;
        while let Some(pos) = rest.find("\r\n") {
            if push_capped(out, &rest[..pos], max_bytes) || push_capped(out, "\n", max_bytes) {
                return true;
            }
            rest = &rest[pos + 2..];
        }
        if push_capped(out, rest, max_bytes) {
            return true;
        }
    }
    false
}

/// Pushes `s` onto `out` without letting `out` grow past `max_bytes`;
/// returns `true` when `s` did not fit entirely.
fn push_capped(out: &mut String, s: &str, max_bytes: usize) -> bool {
    let room = max_bytes.saturating_sub(out.len());
    if s.len() <= room {
        out.push_str(s);
        false
    } else {
        out.push_str(&s[..s.floor_char_boundary(room)]);
        true
    }
}

/// Cuts `s` to at most `max_bytes` on a character boundary; returns the
/// (possibly shorter) prefix and whether anything was cut.
pub(super) fn prefix(s: &str, max_bytes: usize) -> (&str, bool) {
    if s.len() <= max_bytes {
        (s, false)
    } else {
        (&s[..s.floor_char_boundary(max_bytes)], true)
    }
}

/// A whitespace-collapsed prefix of `text` of at most `max_chars` characters,
/// for previews and log-free summaries.
///
/// Runs of whitespace and control characters become one space, NUL is
/// dropped, and the result is trimmed.
pub fn snippet(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut pending_space = false;
    for c in text.chars() {
        if c == '\0' {
            continue;
        }
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if count + needed > max_chars {
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
            count += 1;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Joins problem descriptions into the one-line `parse_error`, keeping the
/// first few so the column stays short.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<String>);

impl Problems {
    const SHOWN: usize = 3;

    pub(super) fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub(super) fn into_error(self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut line = self.0[..self.0.len().min(Self::SHOWN)].join("; ");
        if self.0.len() > Self::SHOWN {
            line.push_str(&format!("; and {} more", self.0.len() - Self::SHOWN));
        }
        clean_line(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_line_folds_control_runs_and_drops_nul() {
        assert_eq!(
            clean_line("caf\u{e9} \r\nBcc: x@evil\0").as_deref(),
            Some("caf\u{e9}  Bcc: x@evil")
        );
        assert_eq!(clean_line(" \0\t "), None);
        let long = "\u{e9}".repeat(MAX_FIELD_BYTES);
        let cut = clean_line(&long).unwrap();
        assert!(cut.len() <= MAX_FIELD_BYTES && cut.chars().all(|c| c == '\u{e9}'));
    }

    #[test]
    fn push_body_cuts_on_a_char_boundary_and_folds_crlf() {
        let mut out = String::new();
        assert!(!push_body(&mut out, "a\r\nb\0c", 100));
        assert_eq!(out, "a\nbc");
        let mut out = String::new();
        assert!(push_body(&mut out, "\u{e9}\u{e9}\u{e9}", 5));
        assert_eq!(out, "\u{e9}\u{e9}");
    }

    #[test]
    fn snippet_collapses_whitespace_and_counts_chars() {
        assert_eq!(
            snippet("  Hello,\r\n\t world \0 again ", 100),
            "Hello, world again"
        );
        assert_eq!(
            snippet("\u{e9}t\u{e9} \u{e9}t\u{e9}", 5),
            "\u{e9}t\u{e9} \u{e9}"
        );
        assert_eq!(snippet("abc def", 5), "abc d");
        assert_eq!(snippet("abc def", 4), "abc");
        assert_eq!(snippet("", 5), "");
    }

    #[test]
    fn problems_keep_the_first_few() {
        let mut p = Problems::default();
        for i in 0..5 {
            p.push(format!("p{i}"));
        }
        assert_eq!(p.into_error().as_deref(), Some("p0; p1; p2; and 2 more"));
    }
}
