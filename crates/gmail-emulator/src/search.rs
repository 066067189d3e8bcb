//! Gmail's `q` search syntax, parsed into an expression and evaluated over a mailbox:
//! implicit AND, `OR` and `{…}`, `-` negation, parentheses, quoted phrases, `key:value` and
//! `key:(…)` operators, and free text.
//!
//! It never fails: a query Gmail would accept is never an error here. An operator the emulator
//! cannot evaluate restricts nothing, and stray or missing brackets are tolerated. It reads the
//! state it is handed and must not change it; terms on content (addresses, subject, text,
//! attachments, size) render the message, so only they cost more than a label test.

use std::collections::HashSet;

use chrono::NaiveDate;

use super::generate;
use super::model::{
    IMPORTANT, INBOX, LabelMask, Mailbox, Msg, SENT, SPAM, STARRED, SYSTEM_LABELS, Source,
    SourceContext, TRASH, UNREAD,
};
use super::payload::{self, Searchable};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The header a `key:` term looks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    From,
    To,
    Cc,
    Bcc,
    Subject,
    MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// An operator the emulator cannot evaluate, or an empty group: it restricts nothing.
    Always,
    /// Something no emulated message has (chats, an unknown label).
    Never,
    /// `in:anywhere`: restricts nothing but lets spam and trash in.
    Anywhere,
    Label(LabelMask),
    /// Any user label (`has:userlabels`).
    UserLabels,
    AfterMs(i64),
    BeforeMs(i64),
    Header(Field, String),
    Text(String),
    HasAttachment,
    Filename(String),
    Larger(usize),
    Smaller(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    Term(Term),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    OpenBrace,
    CloseBrace,
    Or,
    Not,
    Word { key: Option<String>, value: String },
    Group { key: String, inner: String },
}

fn is_break(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '{' | '}' | '"')
}

fn tokens(q: &str) -> Vec<Tok> {
    let c: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        match ch {
            _ if ch.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '{' => {
                out.push(Tok::OpenBrace);
                i += 1;
            }
            '}' => {
                out.push(Tok::CloseBrace);
                i += 1;
            }
            '-' | '!' => {
                if c.get(i + 1).is_some_and(|n| !n.is_whitespace()) {
                    out.push(Tok::Not);
                }
                i += 1;
            }
            '"' => {
                let end = c[i + 1..].iter().position(|&x| x == '"').map(|p| i + 1 + p);
                let stop = end.unwrap_or(c.len());
                let value: String = c[i + 1..stop].iter().collect();
                if !value.trim().is_empty() {
                    out.push(Tok::Word { key: None, value });
                }
                i = end.map_or(c.len(), |e| e + 1);
            }
            _ => {
                let start = i;
                while i < c.len() && !is_break(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                if let Some(key) = word.strip_suffix(':').filter(|k| !k.is_empty()) {
                    match c.get(i) {
                        Some('"') => {
                            let end = c[i + 1..].iter().position(|&x| x == '"').map(|p| i + 1 + p);
                            let stop = end.unwrap_or(c.len());
                            out.push(Tok::Word {
                                key: Some(key.to_owned()),
                                value: c[i + 1..stop].iter().collect(),
                            });
                            i = end.map_or(c.len(), |e| e + 1);
                            continue;
                        }
                        Some('(') => {
                            let mut depth = 0;
                            let mut end = c.len();
                            for (j, &x) in c.iter().enumerate().skip(i) {
                                depth += match x {
                                    '(' => 1,
                                    ')' => -1,
                                    _ => 0,
                                };
                                if depth == 0 {
                                    end = j;
                                    break;
                                }
                            }
                            out.push(Tok::Group {
                                key: key.to_owned(),
                                inner: c[(i + 1).min(end)..end].iter().collect(),
                            });
                            i = (end + 1).min(c.len());
                            continue;
                        }
                        _ => {}
                    }
                }
                match word.as_str() {
                    "OR" | "|" => out.push(Tok::Or),
                    "AND" => {}
                    _ => match word.split_once(':') {
                        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                            out.push(Tok::Word {
                                key: Some(key.to_owned()),
                                value: value.to_owned(),
                            });
                        }
                        _ => out.push(Tok::Word {
                            key: None,
                            value: word,
                        }),
                    },
                }
            }
        }
    }
    out
}

/// What a term needs to know about the mailbox and the time.
struct Context<'a> {
    mailbox: &'a Mailbox,
    now_ms: i64,
}

struct Parser<'a> {
    toks: Vec<Tok>,
    at: usize,
    cx: &'a Context<'a>,
}

fn all(mut items: Vec<Expr>) -> Expr {
    if items.len() == 1 {
        items.remove(0)
    } else {
        Expr::All(items)
    }
}

fn any(mut items: Vec<Expr>) -> Expr {
    match items.len() {
        0 => Expr::Term(Term::Always),
        1 => items.remove(0),
        _ => Expr::Any(items),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    /// The whole query; a stray `)` or `}` is skipped.
    fn query(&mut self) -> Expr {
        let mut parts = vec![self.or()];
        while self.at < self.toks.len() {
            self.at += 1;
            parts.push(self.or());
        }
        all(parts)
    }

    fn or(&mut self) -> Expr {
        let mut alternatives = vec![self.and()];
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            alternatives.push(self.and());
        }
        any(alternatives)
    }

    fn and(&mut self) -> Expr {
        let mut items = Vec::new();
        while let Some(tok) = self.peek() {
            if matches!(tok, Tok::Close | Tok::CloseBrace | Tok::Or) {
                break;
            }
            items.push(self.unary());
        }
        all(items)
    }

    fn unary(&mut self) -> Expr {
        let Some(tok) = self.toks.get(self.at).cloned() else {
            return Expr::Term(Term::Always);
        };
        self.at += 1;
        match tok {
            Tok::Not => {
                if self.peek().is_none() {
                    return Expr::Term(Term::Always);
                }
                Expr::Not(Box::new(self.unary()))
            }
            Tok::Open => {
                let inner = self.or();
                if self.peek() == Some(&Tok::Close) {
                    self.at += 1;
                }
                inner
            }
            Tok::OpenBrace => {
                let mut alternatives = Vec::new();
                while let Some(next) = self.peek() {
                    match next {
                        Tok::CloseBrace => {
                            self.at += 1;
                            break;
                        }
                        Tok::Or | Tok::Close => self.at += 1,
                        _ => alternatives.push(self.unary()),
                    }
                }
                any(alternatives)
            }
            Tok::Close | Tok::CloseBrace | Tok::Or => Expr::Term(Term::Always),
            Tok::Word { key, value } => Expr::Term(term(self.cx, key.as_deref(), &value)),
            Tok::Group { key, inner } => {
                // `subject:(a b)`: every bare word inside takes the key.
                let toks = tokens(&inner)
                    .into_iter()
                    .map(|t| match t {
                        Tok::Word { key: None, value } => Tok::Word {
                            key: Some(key.clone()),
                            value,
                        },
                        other => other,
                    })
                    .collect();
                Parser {
                    toks,
                    at: 0,
                    cx: self.cx,
                }
                .query()
            }
        }
    }
}

/// A `q` date: `YYYY/MM/DD`, `YYYY-MM-DD`, `MM/DD/YYYY` (UTC midnight) or epoch seconds.
pub(crate) fn query_date_ms(value: &str) -> Option<i64> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<i64>().ok().map(|s| s * 1000);
    }
    ["%Y/%m/%d", "%Y-%m-%d", "%m/%d/%Y", "%Y/%-m/%-d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(value, f).ok())
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// `3d`, `2m`, `1y` (months of 30 days, years of 365) in milliseconds.
fn relative_ms(value: &str) -> Option<i64> {
    let last = value.chars().last()?;
    let n: i64 = value[..value.len() - last.len_utf8()].parse().ok()?;
    let days = match last.to_ascii_lowercase() {
        'd' => 1,
        'm' => 30,
        'y' => 365,
        _ => return None,
    };
    Some(n * days * DAY_MS)
}

/// `1000`, `10K`, `2M` (Gmail's sizes, in bytes).
fn size_bytes(value: &str) -> Option<usize> {
    let lower = value.to_ascii_lowercase();
    let (digits, factor) = match lower.strip_suffix(['k', 'm', 'g']) {
        Some(d) if lower.ends_with('k') => (d, 1 << 10),
        Some(d) if lower.ends_with('m') => (d, 1 << 20),
        Some(d) => (d, 1 << 30),
        None => (lower.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .map(|n| n.saturating_mul(factor))
}

fn label_term(mailbox: &Mailbox, name: &str) -> Term {
    mailbox
        .label_bit_by_name(name)
        .or_else(|| mailbox.label_bit(&name.to_ascii_uppercase()))
        .map_or(Term::Never, Term::Label)
}

fn term(cx: &Context<'_>, key: Option<&str>, value: &str) -> Term {
    let Some(key) = key else {
        return Term::Text(value.to_lowercase());
    };
    let lower = value.to_lowercase();
    let either = |parsed: Option<Term>| parsed.unwrap_or(Term::Always);
    match key.to_ascii_lowercase().as_str() {
        "from" => Term::Header(Field::From, lower),
        "to" | "deliveredto" => Term::Header(Field::To, lower),
        "cc" => Term::Header(Field::Cc, lower),
        "bcc" => Term::Header(Field::Bcc, lower),
        "subject" => Term::Header(Field::Subject, lower),
        "rfc822msgid" => Term::Header(Field::MessageId, lower.trim_matches(['<', '>']).to_owned()),
        "after" | "newer" => either(query_date_ms(value).map(Term::AfterMs)),
        "before" | "older" => either(query_date_ms(value).map(Term::BeforeMs)),
        "newer_than" => either(relative_ms(value).map(|d| Term::AfterMs(cx.now_ms - d))),
        "older_than" => either(relative_ms(value).map(|d| Term::BeforeMs(cx.now_ms - d))),
        "larger" | "size" => either(size_bytes(value).map(Term::Larger)),
        "smaller" => either(size_bytes(value).map(Term::Smaller)),
        "filename" => Term::Filename(lower),
        "has" => match lower.as_str() {
            "attachment" => Term::HasAttachment,
            "userlabels" => Term::UserLabels,
            _ => Term::Always,
        },
        "in" => match lower.as_str() {
            "anywhere" => Term::Anywhere,
            "inbox" => Term::Label(INBOX),
            "sent" => Term::Label(SENT),
            "spam" => Term::Label(SPAM),
            "trash" => Term::Label(TRASH),
            "starred" => Term::Label(STARRED),
            "important" => Term::Label(IMPORTANT),
            "chats" | "chat" => Term::Never,
            other => label_term(cx.mailbox, other),
        },
        "label" => label_term(cx.mailbox, value),
        "category" => {
            let wanted = match lower.as_str() {
                "primary" => "CATEGORY_PERSONAL".to_owned(),
                other => format!("CATEGORY_{}", other.to_ascii_uppercase()),
            };
            cx.mailbox
                .label_bit(&wanted)
                .map_or(Term::Never, Term::Label)
        }
        "is" => match lower.as_str() {
            "unread" => Term::Label(UNREAD),
            "starred" => Term::Label(STARRED),
            "important" => Term::Label(IMPORTANT),
            "chat" | "muted" | "snoozed" => Term::Never,
            // `is:read` became `-is:unread` before parsing.
            _ => Term::Always,
        },
        // Gmail reads an unknown operator as words to find.
        _ => Term::Text(format!("{}:{lower}", key.to_lowercase())),
    }
}

/// A parsed `q`.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    expr: Expr,
}

impl Query {
    pub(crate) fn parse(q: &str, mailbox: &Mailbox, now_ms: i64) -> Query {
        let cx = Context { mailbox, now_ms };
        let toks = tokens(q)
            .into_iter()
            .flat_map(|t| match t {
                Tok::Word {
                    key: Some(key),
                    value,
                } if key.eq_ignore_ascii_case("is") && value.eq_ignore_ascii_case("read") => {
                    vec![
                        Tok::Not,
                        Tok::Word {
                            key: Some("is".to_owned()),
                            value: "unread".to_owned(),
                        },
                    ]
                }
                other => vec![other],
            })
            .collect();
        let expr = Parser {
            toks,
            at: 0,
            cx: &cx,
        }
        .query();
        Query { expr }
    }

    /// Whether the query asks for spam or trash (a positive `in:spam`, `in:trash`, `label:`
    /// of either, or `in:anywhere`), which Gmail otherwise leaves out.
    pub(crate) fn includes_spam_trash(&self) -> bool {
        fn walk(expr: &Expr, negated: bool) -> bool {
            match expr {
                Expr::All(items) | Expr::Any(items) => items.iter().any(|e| walk(e, negated)),
                Expr::Not(inner) => walk(inner, !negated),
                Expr::Term(Term::Anywhere) => !negated,
                Expr::Term(Term::Label(bit)) => !negated && bit & (SPAM | TRASH) != 0,
                Expr::Term(_) => false,
            }
        }
        walk(&self.expr, false)
    }

    /// The IDs of the live messages the query matches (spam and trash included; the list
    /// filter decides about those).
    pub(crate) fn matching<'a>(
        &self,
        mailbox: &'a Mailbox,
        cx: &'a SourceContext<'a>,
    ) -> HashSet<u64> {
        mailbox
            .msgs
            .iter()
            .filter(|m| !m.deleted)
            .filter(|m| {
                self.expr.eval(
                    m,
                    &mut Lazy {
                        mailbox,
                        msg: m,
                        cx,
                        got: None,
                    },
                )
            })
            .map(|m| m.id)
            .collect()
    }
}

/// Whether `words` occurs in `text` on word boundaries, as Gmail matches words and phrases
/// (both lower case already).
fn contains_words(text: &str, words: &str) -> bool {
    let words = words.trim();
    if words.is_empty() {
        return true;
    }
    let word_char = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(words).any(|(at, found)| {
        !word_char(text[..at].chars().next_back())
            && !word_char(text[at + found.len()..].chars().next())
    })
}

/// A message's searchable view, rendered on first use only.
struct Lazy<'a> {
    mailbox: &'a Mailbox,
    msg: &'a Msg,
    cx: &'a SourceContext<'a>,
    got: Option<Searchable>,
}

impl Lazy<'_> {
    fn get(&mut self) -> &Searchable {
        self.got
            .get_or_insert_with(|| searchable_of(self.mailbox.source(self.msg, self.cx)))
    }
}

fn searchable_of(source: Source) -> Searchable {
    match source {
        Source::Generated(spec) => payload::searchable(&generate::render(&spec).raw),
        Source::Inserted(raw) => payload::searchable(&raw),
    }
}

impl Expr {
    fn eval(&self, m: &Msg, content: &mut Lazy<'_>) -> bool {
        match self {
            Expr::All(items) => items.iter().all(|e| e.eval(m, content)),
            Expr::Any(items) => items.iter().any(|e| e.eval(m, content)),
            Expr::Not(inner) => !inner.eval(m, content),
            Expr::Term(term) => match term {
                Term::Always | Term::Anywhere => true,
                Term::Never => false,
                Term::Label(bit) => m.labels & bit != 0,
                Term::UserLabels => m.labels >> SYSTEM_LABELS.len() != 0,
                Term::AfterMs(ms) => m.internal_date >= *ms,
                Term::BeforeMs(ms) => m.internal_date < *ms,
                Term::Header(field, wanted) => {
                    let c = content.get();
                    let text = match field {
                        Field::From => &c.from,
                        Field::To => &c.to,
                        Field::Cc => &c.cc,
                        Field::Bcc => &c.bcc,
                        Field::Subject => &c.subject,
                        Field::MessageId => &c.message_id,
                    };
                    if *field == Field::Subject {
                        contains_words(text, wanted)
                    } else {
                        text.contains(wanted.as_str())
                    }
                }
                Term::Text(wanted) => contains_words(&content.get().text, wanted),
                Term::HasAttachment => !content.get().attachments.is_empty(),
                Term::Filename(wanted) => content
                    .get()
                    .attachments
                    .iter()
                    .any(|name| name.contains(wanted.as_str())),
                Term::Larger(bytes) => content.get().size > *bytes,
                Term::Smaller(bytes) => content.get().size < *bytes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(q: &str) -> Expr {
        let mailbox = Mailbox::generate(1, 0, 3);
        Query::parse(q, &mailbox, 1_800_000_000_000).expr
    }

    fn text(word: &str) -> Expr {
        Expr::Term(Term::Text(word.to_owned()))
    }

    #[test]
    fn query_dates_accept_gmail_forms() {
        assert_eq!(query_date_ms("2026/01/02"), Some(1_767_312_000_000));
        assert_eq!(query_date_ms("2026-01-02"), Some(1_767_312_000_000));
        assert_eq!(query_date_ms("1767312000"), Some(1_767_312_000_000));
        assert_eq!(query_date_ms("yesterday"), None);
    }

    #[test]
    fn the_grammar_nests_or_negation_groups_and_phrases() {
        assert_eq!(parsed("a b"), Expr::All(vec![text("a"), text("b")]));
        assert_eq!(parsed("a OR b"), Expr::Any(vec![text("a"), text("b")]));
        assert_eq!(parsed("{a b}"), Expr::Any(vec![text("a"), text("b")]));
        assert_eq!(
            parsed("-(a OR b) \"two words\""),
            Expr::All(vec![
                Expr::Not(Box::new(Expr::Any(vec![text("a"), text("b")]))),
                text("two words"),
            ])
        );
        assert_eq!(
            parsed("subject:(big deal)"),
            Expr::All(vec![
                Expr::Term(Term::Header(Field::Subject, "big".to_owned())),
                Expr::Term(Term::Header(Field::Subject, "deal".to_owned())),
            ])
        );
        assert_eq!(
            parsed("from:\"Ann Lee\""),
            Expr::Term(Term::Header(Field::From, "ann lee".to_owned()))
        );
        assert_eq!(
            parsed("-in:chats"),
            Expr::Not(Box::new(Expr::Term(Term::Never)))
        );
        assert_eq!(
            parsed("is:read"),
            Expr::Not(Box::new(Expr::Term(Term::Label(UNREAD))))
        );
        assert_eq!(parsed("larger:10K"), Expr::Term(Term::Larger(10 * 1024)));
        assert_eq!(
            parsed("newer_than:2d"),
            Expr::Term(Term::AfterMs(1_800_000_000_000 - 2 * DAY_MS))
        );
    }

    #[test]
    fn words_match_on_their_boundaries() {
        assert!(contains_words("lunch at noon?", "noon"));
        assert!(contains_words("the quarterly report", "quarterly report"));
        assert!(!contains_words("afternoon", "noon"));
        assert!(!contains_words("noonish", "noon"));
    }

    #[test]
    fn malformed_queries_still_parse() {
        for q in [
            "(",
            ")",
            "((a",
            "a))",
            "{",
            "}",
            "-",
            "\"",
            "\"open",
            "OR",
            "a OR",
            "OR b",
            "from:",
            ":x",
            "subject:(",
            "after:garbage",
            "larger:lots",
            "newer_than:soon",
            "-(-(-a))",
            "a:b:c",
            "is:",
            "{a OR (b}",
            "label:\"no such\"",
        ] {
            let _ = parsed(q);
        }
    }
}
