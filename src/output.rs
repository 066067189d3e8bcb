//! The only place that prints to stdout (and the one-line error to stderr).
//!
//! Tables are plain aligned text for people; `--format json` is a stable
//! shape for scripts (one JSON document on stdout).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub fn json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output as JSON: {e}"),
    }
}

/// One line of human-readable output.
pub fn line(text: impl AsRef<str>) {
    println!("{}", text.as_ref());
}

/// Progress on stderr (so stdout stays clean for scripts), overwriting the line.
pub fn progress(text: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{}\x1b[K", text.as_ref());
    let _ = err.flush();
}

pub fn progress_done() {
    eprintln!();
}

/// The one-line error of a failed command.
pub fn error(text: impl AsRef<str>) {
    eprintln!("error: {}", text.as_ref());
}

/// A non-fatal notice on stderr.
pub fn notice(text: impl AsRef<str>) {
    eprintln!("{}", text.as_ref());
}

pub fn is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
