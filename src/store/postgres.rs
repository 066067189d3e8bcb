//! The PostgreSQL backend (production; several replicas share one database).
//!
//! Replicas coordinate only through row locks: `claim_due` picks due
//! mailboxes with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never
//! wait on or double-claim each other, and every sync write re-checks the
//! lease first (see the fencing protocol in `store/mod.rs`). Full-text search
//! uses the trigger-maintained `messages.search_tsv` column and its GIN
//! index, with the `simple` configuration (no stemming, any language).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::StoreError;
use super::model::{ConnectOptions, Lease, SearchHit};
use super::rows::{HitRow, convert};
use super::sql::{self, claimed_leases, micros, pending, plus};
use super::text::search_words;
use crate::domain::MailboxAddress;

/// How long `connect` waits for the first connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// The claim of due mailboxes (`$1` owner, `$2` lease expiry, `$3` now,
/// `$4` limit).
///
/// It must walk `sync_state_due_idx` from the earliest due row and stop at
/// `$4` claimable ones whatever the planner's statistics say: rows in flight
/// and the due ones claimed are all it reads, however many mailboxes there
/// are (unscheduled rows have NULL `next_poll_at` and lie outside the range).
/// Two shapes are chosen for that:
/// - the subscription's status is a scalar subquery, evaluated per row the
///   walk reaches. Written as `EXISTS`, PostgreSQL turned it into a join and,
///   with statistics taken while a burst of new subscriptions was still
///   pending ("24 active"), drove the join from `subscriptions_status_idx`:
///   every claim then read every active mailbox's row (10,000 index probes,
///   30,000 buffers, 12 ms per quiet poll at 10,000 mailboxes, BENCHMARKS.md
///   §6), in the generic plan each connection keeps for good;
/// - the rows are updated by key (`= ANY(ARRAY(...))`), not joined to the
///   claimed set, which a generic plan (its `LIMIT` unknown) hashed against
///   a scan of the whole table.
///
/// `SKIP LOCKED`: rows another replica is claiming (or writing under a
/// lease) are passed over instead of waited for; a row whose claim committed
/// meanwhile is re-checked against the lease condition.
#[doc(hidden)]
pub const CLAIM_DUE_SQL: &str = "UPDATE sync_state SET lease_owner = $1, lease_epoch = lease_epoch + 1, \
     lease_expires_at = $2, updated_at = $3 \
     WHERE mailbox = ANY(ARRAY( \
       SELECT t.mailbox FROM sync_state t \
       WHERE t.next_poll_at <= $3 \
       AND (t.lease_owner IS NULL OR t.lease_expires_at IS NULL OR t.lease_expires_at <= $3) \
       AND (SELECT s.status FROM subscriptions s WHERE s.mailbox = t.mailbox) = 'active' \
       ORDER BY t.next_poll_at, t.mailbox LIMIT $4 \
       FOR UPDATE OF t SKIP LOCKED)) \
     RETURNING mailbox, lease_epoch";

impl PgStore {
    pub(crate) async fn connect(url: &str, options: ConnectOptions) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("invalid PostgreSQL database url: {e}")))?;
        let target = format!("{}:{}", opts.get_host(), opts.get_port());
        // One direct attempt first: the pool retries refused connections
        // until its acquire timeout and then reports only "timed out".
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts)).await {
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: timed out after {}s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: {}",
                    describe(&e)
                )));
            }
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
        }
        // A session setting, not the `options` startup parameter, which
        // PgBouncer refuses.
        let idle_timeout_ms = options
            .idle_in_transaction_timeout
            .filter(|t| !t.is_zero())
            .map(|t| t.as_millis().max(1));
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if let Some(ms) = idle_timeout_ms {
                        let set = format!("SET idle_in_transaction_session_timeout = {ms}");
                        sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(opts);
        Ok(Self { pool })
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::POSTGRES_MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let (exists,): (bool,) =
            sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let applied: HashSet<i64> = if exists {
            sqlx::query_as::<Postgres, (i64,)>("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(v,)| v)
                .collect()
        } else {
            HashSet::new()
        };
        Ok(pending(&super::migrations::POSTGRES_MIGRATOR, &applied))
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction (the unit is SQLite's writer turn: PostgreSQL
    /// has row locks and needs none).
    async fn begin_write(&self) -> Result<((), sqlx::Transaction<'static, Postgres>), StoreError> {
        Ok(((), self.pool.begin().await?))
    }

    pub(crate) async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let now = micros(now);
        let expires = plus(now, lease_for);
        let (_turn, mut tx) = self.begin_write().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(CLAIM_DUE_SQL)
            .bind(owner)
            .bind(expires)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        claimed_leases(rows, owner, expires)
    }

    pub(crate) async fn search(
        &self,
        mailbox: Option<&MailboxAddress>,
        query: &str,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let words = search_words(query);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // plainto_tsquery ANDs the words and ignores operators: any input
        // is a valid query.
        convert(
            sqlx::query_as::<Postgres, HitRow>(
                "SELECT mailbox, gmail_id, subject FROM messages \
                 WHERE search_tsv @@ plainto_tsquery('simple', $1) AND deleted_at IS NULL \
                 AND ($2::text IS NULL OR mailbox = $2) \
                 ORDER BY ts_rank(search_tsv, plainto_tsquery('simple', $1)) DESC, mailbox, gmail_id \
                 LIMIT $3",
            )
            .bind(words.join(" "))
            .bind(mailbox.map(MailboxAddress::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
        )
    }
}

// The statements both backends share (`store/sql/`), in PostgreSQL's dialect.
sql::subscription_statements!(PgStore, Postgres);
sql::group_statements!(PgStore, Postgres);
sql::oauth_statements!(PgStore, Postgres);
sql::lease_statements!(PgStore, Postgres, share_lock(" FOR SHARE"));
sql::batch_statements!(
    PgStore,
    Postgres,
    ids(
        " = ANY(ARRAY(SELECT jsonb_array_elements_text(",
        "::jsonb)))"
    ),
    rows("jsonb_array_elements(", "::jsonb) AS j(value)"),
    timestamp("::timestamptz"),
    unhex("decode(", ", 'hex')")
);
sql::run_statements!(PgStore, Postgres);
sql::message_statements!(
    PgStore,
    Postgres,
    ids(
        " = ANY(ARRAY(SELECT jsonb_array_elements_text(",
        "::jsonb)))"
    )
);
sql::quota_statements!(PgStore, Postgres);
sql::budget_statements!(PgStore, Postgres);
sql::housekeeping_statements!(PgStore, Postgres);
sql::watch_statements!(PgStore, Postgres);
sql::push_statements!(
    PgStore,
    Postgres,
    share_lock(" FOR SHARE"),
    row_lock(" FOR UPDATE")
);

/// A connection failure in one short clause, without the URL or password.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_owned()
        }
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Tls(t) => format!("TLS error: {t}"),
        other => other.to_string(),
    }
}
