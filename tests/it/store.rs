//! The store: the conformance suite on both backends, connection errors,
//! migration tidiness, and the analysts' example queries in docs/schema.md.

use gmail_ingest::store::conformance;
use gmail_ingest::store::{ConnectOptions, Store, StoreError};

use crate::pg;

/// A migrated store on a fresh SQLite file; keep the temp dir alive.
async fn sqlite_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url, 4).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    (dir, store)
}

/// A migrated store on a fresh PostgreSQL database, or `None` (skipped).
async fn pg_store() -> Option<(String, Store)> {
    let url = pg::fresh_pg_url().await?;
    let store = Store::connect(&url, 8).await.expect("connect postgres");
    store.migrate().await.expect("migrate postgres");
    Some((url, store))
}

macro_rules! conformance_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, store) = super::sqlite_store().await;
                    gmail_ingest::store::conformance::$name(&store).await;
                    store.close().await;
                }
            )+
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((url, store)) = super::pg_store().await else { return };
                    gmail_ingest::store::conformance::$name(&store).await;
                    store.close().await;
                    crate::pg::drop_database(&url).await;
                }
            )+
        }
    };
}

conformance_tests!(
    upserts_are_idempotent,
    soft_delete_and_readd,
    label_changes_and_reconcile,
    failed_batch_moves_nothing,
    fencing_refuses_stale_leases,
    claim_due_hands_each_mailbox_to_one_owner,
    full_text_search,
    subscription_lifecycle_is_audited,
    purge_reports_counts,
    metacharacters_are_stored_verbatim,
    quota_reservations_respect_the_limit,
    daily_quota_and_backfill_progress,
    full_sync_deletes_unseen_messages,
    label_scope_is_enforced_by_the_batch,
    failures_are_counted_and_reset,
    old_runs_and_quota_windows_are_pruned,
    migrations_are_applied_once,
    decisions_fence_every_sync_write,
    governance_changes_compare_and_set,
    quiet_passes_are_counted_not_rowed,
    the_schedule_follows_the_subscription_status,
    org_unit_admission_is_recorded_and_cleared,
    push_watches_are_recorded_and_stopped_once,
    notifications_make_an_idle_mailbox_behind_them_due,
    a_notification_that_arrives_mid_pass_is_not_lost,
);

// -- connection errors ------------------------------------------------------

/// Every pooled PostgreSQL connection carries the idle-in-transaction
/// timeout, so the server aborts a frozen replica's open transaction and
/// releases the fence's row lock; without the option the server's default
/// stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_carry_the_idle_in_transaction_timeout() {
    let Some(url) = pg::fresh_pg_url().await else {
        return;
    };
    // Concurrent queries that each hold their connection for a moment, so
    // several pooled connections answer, not one reused.
    async fn settings_seen(store: &Store) -> Vec<String> {
        let sql =
            "SELECT current_setting('idle_in_transaction_session_timeout') FROM pg_sleep(0.2)";
        let answers =
            futures::future::join_all((0..4).map(|_| store.query_first_column(sql))).await;
        answers
            .into_iter()
            .flat_map(|r| r.expect("query"))
            .collect()
    }
    let options = ConnectOptions {
        max_connections: 4,
        idle_in_transaction_timeout: Some(std::time::Duration::from_millis(1500)),
    };
    let store = Store::connect_with(&url, options).await.expect("connect");
    assert_eq!(settings_seen(&store).await, vec!["1500ms"; 4]);
    store.close().await;

    let plain = Store::connect(&url, 4).await.expect("connect");
    let server_default = settings_seen(&plain).await;
    assert_eq!(server_default.len(), 4);
    assert!(
        server_default.iter().all(|v| v != "1500ms"),
        "{server_default:?}"
    );
    plain.close().await;
    pg::drop_database(&url).await;
}

/// A claim reads the due range, not the fleet, whatever the planner's
/// statistics say. Here they were taken while a burst of 5,000 new
/// subscriptions was still pending (as when an operator approves a fleet at
/// once and autovacuum analyzes midway), so they count almost none active:
/// written as a join, the claim was then driven from the "few" active
/// subscriptions and read every mailbox's row on every claim, in the generic
/// plan a pooled connection keeps for good (12 ms per quiet poll at 10,000
/// mailboxes). Three mailboxes are due; the claim takes exactly them, and its
/// plan (generic and custom) touches a few dozen buffers, not thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_read_the_due_range_whatever_the_statistics_say() {
    let Some(url) = pg::fresh_pg_url().await else {
        return;
    };
    let store = Store::connect(&url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    for sql in [
        // Keep the stale statistics for the whole test.
        "ALTER TABLE subscriptions SET (autovacuum_enabled = false)",
        "ALTER TABLE sync_state SET (autovacuum_enabled = false)",
        "INSERT INTO subscriptions (mailbox, status, requested_by, requested_at, created_at, updated_at) \
         SELECT 'm' || i || '@example.com', 'pending', 'ops@example.com', now(), now(), now() \
         FROM generate_series(1, 5000) i",
        "ANALYZE subscriptions",
        "UPDATE subscriptions SET status = 'active', approved_by = 'lead@example.com', approved_at = now()",
        // Every mailbox polled within the next minute but three, due now.
        "INSERT INTO sync_state (mailbox, phase, history_id, next_poll_at, updated_at) \
         SELECT 'm' || i || '@example.com', 'incremental', 100, \
         CASE WHEN i <= 3 THEN now() - interval '1 second' \
         ELSE now() + (1 + i % 60) * interval '1 second' END, now() \
         FROM generate_series(1, 5000) i",
        "ANALYZE sync_state",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let now = chrono::Utc::now();
    let expires = now + chrono::TimeDelta::minutes(5);
    let args = |n: i64| {
        format!(
            "('replica-x', '{}'::timestamptz, '{}'::timestamptz, {n})",
            expires.to_rfc3339(),
            now.to_rfc3339()
        )
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE claim (text, timestamptz, timestamptz, bigint) AS {}",
        gmail_ingest::store::PG_CLAIM_DUE_SQL
    )))
    .execute(&mut conn)
    .await
    .expect("prepare the claim");
    for mode in ["force_generic_plan", "force_custom_plan"] {
        let plan: (serde_json::Value,) = {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET plan_cache_mode = {mode}; BEGIN"
            )))
            .execute(&mut conn)
            .await
            .expect("set the plan mode");
            let plan = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim {}",
                args(16)
            )))
            .fetch_one(&mut conn)
            .await
            .expect("explain the claim");
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut conn)
                .await
                .expect("roll back");
            plan
        };
        let top = &plan.0[0]["Plan"];
        let buffers = top["Shared Hit Blocks"].as_i64().unwrap_or(0)
            + top["Shared Read Blocks"].as_i64().unwrap_or(0);
        assert_eq!(top["Actual Rows"], 3, "{mode}: {plan:?}");
        assert!(
            buffers < 200,
            "{mode}: the claim of 3 due mailboxes among 5,000 touched {buffers} buffers: {}",
            plan.0
        );
        assert!(
            !plan.0.to_string().contains("subscriptions_status_idx"),
            "{mode}: the claim was driven from the subscriptions: {}",
            plan.0
        );
    }
    // The store's own claim takes exactly the three due mailboxes.
    let leases = store
        .claim_due(
            "replica-1",
            chrono::Utc::now(),
            std::time::Duration::from_secs(300),
            16,
        )
        .await
        .expect("claim");
    let mut claimed: Vec<String> = leases.iter().map(|l| l.mailbox.to_string()).collect();
    claimed.sort();
    assert_eq!(
        claimed,
        ["m1@example.com", "m2@example.com", "m3@example.com"]
    );
    let _ = sqlx::Connection::close(conn).await;
    store.close().await;
    pg::drop_database(&url).await;
}

#[tokio::test]
async fn an_unsupported_url_scheme_is_refused_by_name() {
    let err = Store::connect("mysql://root@localhost/db", 1)
        .await
        .unwrap_err();

    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "unsupported database url scheme 'mysql' (expected sqlite:// or postgres://)"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_without_leaking_the_password() {
    // Port 1 on localhost: nothing listens there.
    let err = Store::connect("postgres://app:s3cret-pw@127.0.0.1:1/db", 1)
        .await
        .unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(
        text,
        "cannot connect to PostgreSQL at 127.0.0.1:1: connection refused"
    );
    assert!(!text.contains("s3cret"));
}

#[tokio::test]
async fn a_sqlite_path_in_a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("x.db");

    let err = Store::connect(&format!("sqlite://{}", missing.display()), 1)
        .await
        .unwrap_err();

    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists());
}

#[tokio::test]
async fn a_new_sqlite_file_is_created_and_reports_pending_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();

    assert_eq!(store.backend(), "sqlite");
    assert_eq!(store.sqlite_path().as_deref(), Some(path.as_path()));
    assert!(store.pending_migrations().await.unwrap() >= 1);
    store.migrate().await.unwrap();
    assert_eq!(store.pending_migrations().await.unwrap(), 0);
    assert!(path.exists());
}

#[tokio::test]
async fn an_in_memory_sqlite_store_works_across_pool_connections() {
    let store = Store::connect("sqlite::memory:", 4).await.unwrap();
    store.migrate().await.unwrap();

    conformance::subscription_lifecycle_is_audited(&store).await;

    assert_eq!(store.sqlite_path(), None);
}

// -- tidy -------------------------------------------------------------------

#[test]
fn both_migration_directories_hold_the_same_file_names() {
    let names = |dir: &str| {
        let mut v: Vec<String> =
            std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
                .unwrap_or_else(|e| panic!("reading migrations/{dir}: {e}"))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        v.sort();
        v
    };

    let sqlite = names("sqlite");
    let postgres = names("postgres");

    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, postgres);
    for n in &sqlite {
        let (version, rest) = n
            .split_once('_')
            .unwrap_or_else(|| panic!("{n}: expected VERSION_name.sql"));
        assert!(
            version.len() == 14 && version.chars().all(|c| c.is_ascii_digit()),
            "{n}: timestamped version"
        );
        assert!(rest.ends_with(".sql"), "{n}");
    }
}

// -- docs/schema.md example queries -----------------------------------------

/// A fenced ```sql block: which backends it is for, its `-- Qn` name, its text.
struct DocQuery {
    sqlite: bool,
    postgres: bool,
    name: String,
    sql: String,
}

fn doc_queries() -> Vec<DocQuery> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md"))
        .expect("docs/schema.md exists");
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in doc.lines() {
        match &mut current {
            None => {
                if let Some(tag) = line.trim().strip_prefix("```sql") {
                    current = Some((tag.trim().to_owned(), Vec::new()));
                }
            }
            Some((tag, lines)) => {
                if line.trim() == "```" {
                    let sql = lines.join("\n");
                    let name = lines
                        .iter()
                        .find_map(|l| l.trim().strip_prefix("-- "))
                        .and_then(|l| l.split(':').next())
                        .unwrap_or("")
                        .to_owned();
                    out.push(DocQuery {
                        sqlite: tag.is_empty() || tag == "sqlite",
                        postgres: tag.is_empty() || tag == "postgres",
                        name,
                        sql,
                    });
                    current = None;
                } else {
                    lines.push(line);
                }
            }
        }
    }
    out
}

/// Expected first-column values on the sample data, for some queries.
fn expected(name: &str) -> Option<Vec<&'static str>> {
    Some(match name {
        "Q2" => vec!["t2", "t3", "t4"],
        "Q3" => vec!["application/pdf", "image/png"],
        "Q4" => vec!["s3"],
        "Q6" => vec!["t1", "t3", "u1", "t2", "t4"],
        "Q8" => vec![
            "alice@customer.example",
            "support@example.com",
            "bob@customer.example",
            "carol@partner.example",
            "dave@customer.example",
            "sales@example.com",
        ],
        "Q9" => vec!["s6"],
        _ => return None,
    })
}

async fn check_doc_queries(store: &Store) {
    conformance::seed_sample_data(store).await;
    let postgres = store.backend() == "postgres";
    let queries: Vec<DocQuery> = doc_queries()
        .into_iter()
        .filter(|q| if postgres { q.postgres } else { q.sqlite })
        .collect();
    let names: std::collections::BTreeSet<&str> = queries.iter().map(|q| q.name.as_str()).collect();
    assert!(
        names.len() >= 10,
        "expected at least ten example queries for {}, found {names:?}",
        store.backend()
    );

    for q in &queries {
        assert!(
            q.name.starts_with('Q'),
            "every sql block starts with a `-- Qn: title` comment:\n{}",
            q.sql
        );
        let n = store
            .count_query_rows(&q.sql)
            .await
            .unwrap_or_else(|e| panic!("{} failed on {}: {e}\n{}", q.name, store.backend(), q.sql));
        assert!(
            n > 0,
            "{} returned no rows on the sample data ({})",
            q.name,
            store.backend()
        );
        if let Some(want) = expected(&q.name) {
            let got = store.query_first_column(&q.sql).await.unwrap();
            assert_eq!(got, want, "{} on {}", q.name, store.backend());
        }
    }
}

#[test]
fn every_backend_specific_doc_query_has_a_counterpart() {
    let queries = doc_queries();
    for q in queries.iter().filter(|q| q.sqlite != q.postgres) {
        assert!(
            queries
                .iter()
                .any(|o| o.name == q.name && o.sqlite != q.sqlite && o.postgres != q.postgres),
            "{} has a variant for one backend only",
            q.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_doc_queries_run_on_sqlite() {
    let (_dir, store) = sqlite_store().await;
    check_doc_queries(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_doc_queries_run_on_postgres() {
    let Some((url, store)) = pg_store().await else {
        return;
    };
    check_doc_queries(&store).await;
    store.close().await;
    pg::drop_database(&url).await;
}
