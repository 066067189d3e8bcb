//! Throughput of `gmail_normalize::normalize` (`crates/normalize`) over the golden corpus and a
//! generated typical 10 KB multipart message.
//!
//!     cargo bench --bench normalize
//!
//! No harness: each input is normalized repeatedly for about half a second
//! and the rate is reported in MB/s of raw input. `BENCH_NORMALIZE_FIXED=1`
//! runs each input exactly 10 times instead, for instruction counts:
//!
//!     BENCH_NORMALIZE_FIXED=1 valgrind --tool=callgrind target/release/deps/normalize-*

#![allow(clippy::print_stdout, reason = "a benchmark's output is its report")]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use gmail_normalize::{NormalizeLimits, normalize};

/// A typical 10 KB message: headers of a real Gmail delivery, a
/// multipart/alternative body in quoted-printable, and a small base64 PDF.
fn typical_message() -> Vec<u8> {
    let mut received = String::new();
    for hop in 0..6 {
        received.push_str(&format!(
            "Received: from mx{hop}.example.net (mx{hop}.example.net. [192.0.2.{hop}])\r\n        \
             by mx.google.com with ESMTPS id abc{hop}\r\n        for <user@example.com>; \
             Mon, 27 May 2024 16:20:3{hop} -0700 (PDT)\r\n"
        ));
    }
    let paragraph = "Thanks for the update =E2=80=94 the numbers look right to me. Let's go =\r\n\
                     over the remaining items on Thursday.\r\n\r\n";
    let html = "<div dir=3D\"ltr\"><p>Thanks for the update =E2=80=94 the numbers look =\r\n\
                right to me.</p><p>Let's go over the remaining items on Thursday.</p></div>=\r\n";
    let pdf_b64 =
        "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2cvUGFnZXMgMiAwIFI+PgplbmRv\r\n";
    let raw = format!(
        "Delivered-To: user@example.com\r\n{received}\
         DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=s1; h=from:to:subject:date;\r\n \
         bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA==\r\n\
         From: =?UTF-8?Q?L=C3=A9a_Martin?= <lea@example.net>\r\n\
         To: User <user@example.com>, team@example.com\r\nCc: Boss <boss@example.com>\r\n\
         Subject: Re: Q2 numbers\r\nDate: Mon, 27 May 2024 16:20:31 -0700\r\n\
         Message-ID: <CAC2+abc=DEF@mail.example.net>\r\nIn-Reply-To: <CAB1=xyz@mail.example.com>\r\n\
         References: <CAA0=root@mail.example.com> <CAB1=xyz@mail.example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mixed\"\r\n\r\n\
         --mixed\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
         --alt\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\
         --alt\r\nContent-Type: text/html; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\
         --alt--\r\n\r\n\
         --mixed\r\nContent-Type: application/pdf; name=\"q2.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"q2.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
         --mixed--\r\n",
        paragraph.repeat(25),
        html.repeat(20),
        pdf_b64.repeat(20),
    );
    raw.into_bytes()
}

/// `BENCH_NORMALIZE_FIXED=1`: exactly 10 runs of each input, whatever the
/// time, so that instruction counts (callgrind) compare across builds.
fn fixed() -> bool {
    std::env::var_os("BENCH_NORMALIZE_FIXED").is_some()
}

fn rate(raw: &[u8], limits: &NormalizeLimits) -> (f64, u64) {
    let budget = Duration::from_millis(if fixed() { 0 } else { 500 });
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget || runs < 10 {
        black_box(normalize(black_box(raw), limits));
        runs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (raw.len() as f64 * runs as f64 / secs / 1e6, runs)
}

fn main() {
    let limits = NormalizeLimits::default();

    let typical = typical_message();
    let (mbps, runs) = rate(&typical, &limits);
    println!(
        "typical multipart ({} bytes): {mbps:.1} MB/s, {:.1} µs/message ({runs} runs)",
        typical.len(),
        typical.len() as f64 / mbps
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml");
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for folder in ["rfc", "gmail", "malformed"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(folder))
            .expect("fixture folder")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        corpus.extend(paths.iter().map(|p| std::fs::read(p).expect("fixture")));
    }
    let total: usize = corpus.iter().map(Vec::len).sum();
    let budget = Duration::from_millis(if fixed() { 0 } else { 1_000 });
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < budget || rounds < 10 {
        for raw in &corpus {
            black_box(normalize(black_box(raw), &limits));
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "golden corpus ({} messages, {total} bytes): {:.1} MB/s, {:.1} µs/message ({rounds} rounds)",
        corpus.len(),
        total as f64 * rounds as f64 / secs / 1e6,
        secs * 1e6 / (rounds as f64 * corpus.len() as f64)
    );
}
