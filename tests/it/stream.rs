//! Incremental passes that stream a backlog in chunks, and batches bounded
//! by bytes (issue 14 points 3 and 4): a backlog over many history pages and
//! several chunks converges, with adds, deletes and relabels across chunk
//! boundaries and under a label scope; a pass stopped or killed between
//! chunks resumes from the last committed chunk without refetching or
//! losing anything; large messages with `store_raw` sync with bounded
//! memory; and a message the database refuses becomes a placeholder while
//! the rest of the mailbox completes — on SQLite and PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use gmail_ingest::domain::{ChangeKind, MailboxAddress};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::chaos_helpers::WorldCli as Cli;
use crate::helpers::{Backend, World, both_backends, small, world_with};

const GET: &str = "gmail.users.messages.get";
const HISTORY: &str = "gmail.users.history.list";

/// Inserts `count` copies of a small message with `labels` in one control
/// call; returns their IDs in history order.
async fn insert_copies(w: &World, m: &MailboxAddress, labels: &[&str], count: u32) -> Vec<String> {
    use base64::Engine;
    let raw = format!(
        "From: Bulk <bulk@outside.example>\r\nTo: {m}\r\nSubject: Backlog\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nOne of many.\r\n"
    );
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let v = w
        .control(
            reqwest::Method::POST,
            &format!("users/{m}/messages"),
            Some(json!({"raw": enc, "label_ids": labels, "count": count})),
        )
        .await;
    let ids: Vec<String> = v["ids"]
        .as_array()
        .expect("ids of the copies")
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), count as usize);
    ids
}

/// The emulator's current historyId for `m`.
async fn mailbox_history_id(w: &World, m: &MailboxAddress) -> i64 {
    let state = w.control(reqwest::Method::GET, "state", None).await;
    state["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"].as_str() == Some(m.as_str()))
        .and_then(|u| {
            u["history_id"]
                .as_u64()
                .or_else(|| u["history_id"].as_str().and_then(|h| h.parse().ok()))
        })
        .expect("the user's history id") as i64
}

async fn stored_history_id(w: &World, m: &MailboxAddress) -> i64 {
    w.ctx
        .store
        .sync_state(m)
        .await
        .unwrap()
        .and_then(|s| s.history_id)
        .map_or(0, |h| h.as_i64())
}

/// No message has two `added` change rows, and every live row has one.
async fn assert_added_once(w: &World, m: &MailboxAddress) {
    let mut added: HashMap<String, usize> = HashMap::new();
    for c in w.ctx.store.message_changes(m).await.unwrap() {
        if c.change == ChangeKind::Added {
            *added.entry(c.gmail_id.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<&String> = added
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "{m}: added twice: {twice:?}");
    for (id, _, _) in w.db(m).await {
        assert!(added.contains_key(&id), "{m}: live row {id} never added");
    }
}

async fn first_mailbox(w: &World) -> MailboxAddress {
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    m
}

both_backends!(
    a_backlog_over_many_history_pages_streams_in_chunks_with_adds_deletes_and_relabels_across_them,
    |b: Backend| async move {
        // Arrange: every 500-record history page is a chunk of its own.
        let Some(w) = world_with(b, small(2, 30), |s| {
            s.sync.batch_size = 40;
            s.sync.history_chunk_messages = 150;
        })
        .await
        else {
            return;
        };
        let m = first_mailbox(&w).await;
        assert!(w.sync(Some(&m)).await[0].outcome.is_ok());
        let start = stored_history_id(&w, &m).await;
        let gets_before = w.requests_by_user(&m, GET).await;
        let runs_before = w.ctx.store.sync_runs(&m).await.unwrap().len();

        let early = insert_copies(&w, &m, &["INBOX", "UNREAD"], 700).await;
        for id in &early[..30] {
            w.relabel(&m, id, &["STARRED"], &["UNREAD"]).await;
        }
        let late = insert_copies(&w, &m, &["INBOX"], 700).await;
        // Deleted pages after their add (some of them relabeled in between).
        for id in &early[10..40] {
            w.delete_message(&m, id).await;
        }
        // Relabeled chunks after their add and after an earlier relabel.
        for id in &early[..10] {
            w.relabel(&m, id, &["Label_1"], &["STARRED"]).await;
        }
        for id in &late[..5] {
            w.relabel(&m, id, &["STARRED"], &[]).await;
        }
        // Added and deleted within the window.
        let gone = w.insert_message(&m, "Short-lived", &["INBOX"]).await;
        w.delete_message(&m, &gone).await;
        // A message stored by the full sync, deleted in the backlog.
        let old = w.db(&m).await[0].0.clone();
        w.delete_message(&m, &old).await;

        // Act.
        let reports = w.sync(Some(&m)).await;

        // Assert.
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
        assert_added_once(&w, &m).await;
        assert_eq!(
            stored_history_id(&w, &m).await,
            mailbox_history_id(&w, &m).await
        );
        let gets = w.requests_by_user(&m, GET).await - gets_before;
        assert!(gets <= 1401, "{gets} gets for 1,401 adds");
        // The deletes were committed with their chunk's position, before the end.
        let final_position = stored_history_id(&w, &m).await;
        let positions: Vec<i64> = w
            .ctx
            .store
            .message_changes(&m)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.change == ChangeKind::Deleted)
            .filter_map(|c| c.history_id.map(|h| h.as_i64()))
            .collect();
        assert!(!positions.is_empty());
        assert!(
            positions.iter().all(|p| *p > start && *p <= final_position),
            "{positions:?}"
        );
        let runs = w.ctx.store.sync_runs(&m).await.unwrap();
        assert_eq!(
            runs.len(),
            runs_before + 1,
            "one run row for the pass, written with its last chunk"
        );
    }
);

/// Starts a one-off sync of `m` in a task; returns its handle and token.
fn spawn_sync(
    w: &World,
    m: &MailboxAddress,
) -> (
    tokio::task::JoinHandle<Vec<gmail_ingest::sync::engine::SyncReport>>,
    CancellationToken,
) {
    let ctx = w.ctx.clone();
    let m = m.clone();
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move {
        gmail_ingest::app::sync_with(&ctx, Some(m), false, false, &t)
            .await
            .expect("sync runs")
    });
    (handle, token)
}

/// Waits until the stored history position moved past `from`.
async fn wait_for_a_chunk(w: &World, m: &MailboxAddress, from: i64) -> i64 {
    for _ in 0..3000 {
        let h = stored_history_id(w, m).await;
        if h > from {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no chunk was committed");
}

both_backends!(
    a_pass_stopped_or_killed_between_chunks_resumes_from_the_last_chunk_without_refetching,
    |b: Backend| async move {
        // Arrange: 2,500 adds over five history pages (five chunks), with
        // relabels and deletes after their adds; slow gets so the pass is
        // caught in the middle.
        let Some(w) = world_with(b, small(2, 20), |s| {
            s.sync.batch_size = 25;
            s.sync.history_chunk_messages = 100;
            s.sync.lease_duration = Duration::from_secs(2);
        })
        .await
        else {
            return;
        };
        let m = first_mailbox(&w).await;
        assert!(w.sync(Some(&m)).await[0].outcome.is_ok());
        let start = stored_history_id(&w, &m).await;
        let gets_before = w.requests_by_user(&m, GET).await;
        let ids = insert_copies(&w, &m, &["INBOX"], 2500).await;
        for id in &ids[..20] {
            w.relabel(&m, id, &["STARRED"], &["INBOX"]).await;
        }
        for id in &ids[1200..1220] {
            w.delete_message(&m, id).await;
        }
        let end = mailbox_history_id(&w, &m).await;
        w.faults(json!({"latency_ms": [2, 4]})).await;

        // Act 1: shutdown between chunks (the token fires as a SIGTERM would).
        let (handle, token) = spawn_sync(&w, &m);
        let first = wait_for_a_chunk(&w, &m, start).await;
        token.cancel();
        let reports = handle.await.unwrap();
        assert!(
            !reports[0].outcome.is_ok(),
            "the pass ended by itself: {:?}",
            reports[0].outcome
        );
        let stopped_at = stored_history_id(&w, &m).await;
        assert!(
            first > start && stopped_at < end,
            "{start} < {first} <= {stopped_at} < {end}"
        );

        // Act 2: killed mid-way through a later chunk (the task dropped as a
        // crash would; its lease expires).
        let (handle, _token) = spawn_sync(&w, &m);
        let killed_after = wait_for_a_chunk(&w, &m, stopped_at).await;
        handle.abort();
        let _ = handle.await;
        assert!(killed_after < end, "killed after the last chunk");
        tokio::time::sleep(w.settings.sync.lease_duration + Duration::from_millis(300)).await;
        w.faults(json!({"latency_ms": [0, 0]})).await;
        let history_before = w.requests_by_user(&m, HISTORY).await;

        // Act 3: the pass that finishes the job.
        let reports = w.sync(Some(&m)).await;

        // Assert: the same rows as one uninterrupted pass, each fetched about once.
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
        assert_added_once(&w, &m).await;
        assert_eq!(stored_history_id(&w, &m).await, end);
        let gets = w.requests_by_user(&m, GET).await - gets_before;
        // What was in flight when each pass stopped may be fetched twice, no more.
        let slack =
            2 * (w.settings.sync.batch_size + w.settings.sync.per_mailbox_concurrency) as u64;
        assert!(gets <= 2500 + slack, "{gets} gets for 2,500 adds");
        // The last pass read history from the last committed chunk, not from the start.
        let pages = w.requests_by_user(&m, HISTORY).await - history_before;
        assert!(pages < 5, "{pages} history pages read after the restart");
    }
);

both_backends!(
    a_scoped_subscription_enters_leaves_and_reenters_its_scope_across_chunks,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(3, 40), |s| {
            s.sync.batch_size = 30;
            s.sync.history_chunk_messages = 100;
        })
        .await
        else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        let cli = Cli::new(&w, "");
        cli.ok(&[
            "subscriptions",
            "add",
            m.as_str(),
            "--labels",
            "STARRED",
            "--by",
            "ops-a",
        ]);
        cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-b"]);
        assert!(w.sync(Some(&m)).await[0].outcome.is_ok());

        let outside = insert_copies(&w, &m, &["INBOX"], 600).await;
        let inside = insert_copies(&w, &m, &["INBOX", "STARRED"], 600).await;
        // Enters the scope two chunks after its add.
        for id in &outside[..10] {
            w.relabel(&m, id, &["STARRED"], &[]).await;
        }
        // Leaves after being fetched in an earlier chunk; half come back.
        for id in &inside[..10] {
            w.relabel(&m, id, &[], &["STARRED"]).await;
        }
        for id in &inside[..5] {
            w.relabel(&m, id, &["STARRED"], &[]).await;
        }
        for id in &inside[20..30] {
            w.delete_message(&m, id).await;
        }
        let after_add = insert_copies(&w, &m, &["INBOX"], 400).await;
        // An in-scope message leaves in the last chunk, long after its add.
        w.relabel(&m, &inside[100], &[], &["STARRED"]).await;
        w.relabel(&m, &after_add[0], &["STARRED"], &[]).await;

        let reports = w.sync(Some(&m)).await;

        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        let want: Vec<(String, String, Vec<String>)> = w
            .truth(&m)
            .await
            .into_iter()
            .filter(|(_, _, l)| l.iter().any(|x| x == "STARRED"))
            .collect();
        assert_eq!(w.db(&m).await, want, "live rows are exactly the scope");
        assert!(!want.iter().any(|(id, _, _)| id == &inside[100]));
        assert!(want.iter().any(|(id, _, _)| id == &after_add[0]));
        assert!(want.iter().any(|(id, _, _)| id == &outside[0]));
        // A message added outside the scope is not fetched.
        let gets = w.requests_by_user(&m, GET).await;
        assert!(gets < 700, "{gets} gets: out-of-scope adds were fetched");
    }
);

/// A message of about `bytes` bytes (a base64 attachment), unique by `tag`.
fn big_message(bytes: usize, tag: &str) -> Vec<u8> {
    use base64::Engine;
    let payload: Vec<u8> = (0..bytes / 4 * 3)
        .map(|i| ((i * 31 + tag.len() * 7) % 251) as u8)
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
    let mut s = format!(
        "From: a@outside.example\r\nSubject: Big {tag}\r\nMessage-ID: <{tag}@outside.example>\r\nMIME-Version: 1.0\r\n\
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

both_backends!(
    a_hundred_12_mb_messages_with_store_raw_sync_completely_in_bounded_memory,
    |b: Backend| async move {
        // Arrange: 100 messages of 12 MB (1.2 GB) in one listing page, one
        // batch of 100 by count; the child `sync` process keeps the raw bytes.
        let Some(w) = world_with(b, small(2, 0), |_| {}).await else {
            return;
        };
        let m = first_mailbox(&w).await;
        let raw = big_message(12_000_000, "twelve");
        let raw_len = raw.len() as u64;
        {
            use base64::Engine;
            let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            w.control(
                reqwest::Method::POST,
                &format!("users/{m}/messages"),
                Some(json!({"raw": enc, "label_ids": ["INBOX"], "count": 100})),
            )
            .await;
        }
        drop(raw);
        let cli = Cli::new(
            &w,
            "[sync]\nstore_raw = true\nuser_quota_units_per_minute = 100000000\nper_mailbox_concurrency = 4\n\
             batch_max_bytes = 33554432\nmemory_budget_bytes = 134217728\n",
        );

        // Act: the real binary, its peak RSS sampled while it runs.
        let (status, stderr, peak_kib) = cli.sync_measured().await;

        // Assert.
        assert!(status.success(), "sync failed: {stderr}");
        assert_eq!(w.ctx.store.count_messages(&m).await.unwrap(), 100);
        w.assert_converged(&m).await;
        let sizes = w
            .ctx
            .store
            .query_first_column(&format!(
                "SELECT CAST(length(raw) AS TEXT) FROM messages WHERE mailbox = '{m}'"
            ))
            .await
            .unwrap();
        assert_eq!(sizes.len(), 100);
        assert!(
            sizes.iter().all(|s| s.parse::<u64>().ok() == Some(raw_len)),
            "{sizes:?}"
        );
        // All of it is 1.2 GB, and a batch of 100 by count one JSON parameter
        // of 2.4 GB of hex (which SQLite refuses): the byte bounds keep the
        // process below either (906 MiB measured with a 128 MiB budget, four
        // downloads in flight and commits of two messages).
        let peak_mib = peak_kib / 1024;
        assert!(peak_mib > 0, "VmHWM was read");
        assert!(
            peak_mib < 1536,
            "peak RSS {peak_mib} MiB for 1.2 GB of mail"
        );
    }
);

/// Makes the database refuse any `messages` row whose raw bytes are longer
/// than `limit`: a real refusal (a trigger's error) through the real commit path.
async fn refuse_rows_longer_than(w: &World, limit: usize) {
    let url = w.settings.database.url.expose().to_owned();
    match w.backend {
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TRIGGER refuse_long_rows BEFORE INSERT ON messages \
                 WHEN length(NEW.raw) > {limit} \
                 BEGIN SELECT RAISE(ABORT, 'row is longer than this database accepts'); END"
            )))
            .execute(&mut c)
            .await
            .unwrap();
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE FUNCTION refuse_long_rows() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF length(NEW.raw) > {limit} THEN \
                 RAISE EXCEPTION 'row is longer than this database accepts'; END IF; \
                 RETURN NEW; END $$"
            )))
            .execute(&mut c)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_long_rows BEFORE INSERT ON messages \
                 FOR EACH ROW EXECUTE FUNCTION refuse_long_rows()",
            )
            .execute(&mut c)
            .await
            .unwrap();
        }
    }
}

async fn allow_long_rows(w: &World) {
    let url = w.settings.database.url.expose().to_owned();
    use sqlx::Connection;
    match w.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query("DROP TRIGGER refuse_long_rows")
                .execute(&mut c)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query("DROP TRIGGER refuse_long_rows ON messages")
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

async fn parse_error_of(w: &World, m: &MailboxAddress, id: &str) -> Option<String> {
    w.ctx
        .store
        .query_first_column(&format!(
            "SELECT COALESCE(parse_error, '') FROM messages WHERE mailbox = '{m}' AND gmail_id = '{id}'"
        ))
        .await
        .unwrap()
        .into_iter()
        .next()
}

both_backends!(
    a_message_the_database_refuses_becomes_a_placeholder_and_the_rest_of_the_mailbox_completes,
    |b: Backend| async move {
        // Arrange: raw bytes kept; the database refuses rows over 1 MB; one
        // 2 MB message among small ones, listed by the full sync, and one
        // more arriving for the incremental pass.
        let Some(w) = world_with(b, small(2, 25), |s| {
            s.sync.store_raw = true;
            s.sync.batch_size = 10;
        })
        .await
        else {
            return;
        };
        let m = first_mailbox(&w).await;
        refuse_rows_longer_than(&w, 1_000_000).await;
        let big = w
            .insert_raw(&m, &big_message(2_000_000, "full"), &["INBOX"])
            .await;

        // Act 1: three passes fail (the message is retried), the fourth gives up.
        for pass in 1..=3 {
            let reports = w.sync(Some(&m)).await;
            assert!(
                reports[0].outcome.is_failure(),
                "pass {pass}: {:?}",
                reports[0].outcome
            );
            let err = format!("{:?}", reports[0].outcome);
            assert!(err.contains("refused"), "pass {pass}: {err}");
        }
        // Everything else is stored meanwhile.
        assert_eq!(
            w.ctx.store.count_messages(&m).await.unwrap() as usize,
            w.truth(&m).await.len() - 1
        );
        let reports = w.sync(Some(&m)).await;

        // Assert 1.
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        let cause = parse_error_of(&w, &m, &big)
            .await
            .expect("a placeholder row");
        assert!(
            cause.starts_with("not fetched:")
                && cause.contains("longer than this database accepts"),
            "{cause}"
        );
        assert_eq!(
            w.ctx.store.count_messages(&m).await.unwrap() as usize,
            w.truth(&m).await.len()
        );

        // Act 2: the same in an incremental pass, beside new small mail.
        let big2 = w
            .insert_raw(&m, &big_message(2_000_000, "incremental"), &["INBOX"])
            .await;
        let fine = w.insert_message(&m, "Fine", &["INBOX"]).await;
        let mut last = None;
        for _ in 0..4 {
            last = Some(w.sync(Some(&m)).await.remove(0));
            if last.as_ref().is_some_and(|r| r.outcome.is_ok()) {
                break;
            }
            assert!(
                parse_error_of(&w, &m, &fine).await.is_some(),
                "the rest waits for nothing"
            );
        }
        let last = last.unwrap();
        assert!(last.outcome.is_ok(), "{:?}", last.outcome);
        let cause2 = parse_error_of(&w, &m, &big2)
            .await
            .expect("a placeholder row");
        assert!(cause2.starts_with("not fetched:"), "{cause2}");
        assert_eq!(
            stored_history_id(&w, &m).await,
            mailbox_history_id(&w, &m).await
        );

        // Act 3: once the database accepts the rows, the placeholders are refetched.
        allow_long_rows(&w).await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert_eq!(parse_error_of(&w, &m, &big).await.as_deref(), Some(""));
        assert_eq!(parse_error_of(&w, &m, &big2).await.as_deref(), Some(""));
        w.assert_converged(&m).await;
    }
);
