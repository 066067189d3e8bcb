//! The embedded SQLite backend (the default for one replica).
//!
//! One file in WAL mode; readers run concurrently, writers take the
//! database's single write lock with `BEGIN IMMEDIATE` (so a transaction
//! never fails half-way on a read-to-write lock upgrade), queued in order
//! within the process and waiting up to the 5 s busy timeout for anyone
//! else. Full-text search is an external-content FTS5
//! table kept in step with `messages` by triggers (see the migration).

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::StoreError;
use super::model::{Lease, SearchHit};
use super::rows::{HitRow, convert};
use super::sql::{self, claimed_leases, micros, pending, plus};
use super::text::fts5_query;
use crate::domain::MailboxAddress;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: Option<PathBuf>,
    /// Whose turn it is to write (see `begin_write`); shared by clones.
    writer: Arc<Mutex<()>>,
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("invalid SQLite database url: {e}")))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let path = (!in_memory).then(|| opts.get_filename().to_path_buf());
        let missing_dir = path
            .as_deref()
            .and_then(|p| p.parent())
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir());
        if let (Some(p), Some(dir)) = (&path, missing_dir) {
            return Err(StoreError::Unavailable(format!(
                "cannot open SQLite database {}: directory {} does not exist",
                p.display(),
                dir.display()
            )));
        }
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal);
        let mut pool = SqlitePoolOptions::new().max_connections(max_connections.max(1));
        if in_memory {
            // An in-memory database lives as long as one connection to it.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(opts).await.map_err(|e| {
            let what = path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ":memory:".to_owned());
            StoreError::Unavailable(format!("cannot open SQLite database {what}: {e}"))
        })?;
        Ok(Self {
            pool,
            path,
            writer: Arc::new(Mutex::new(())),
        })
    }

    pub(crate) fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::SQLITE_MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let (exists,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        let applied: HashSet<i64> = if exists == 0 {
            HashSet::new()
        } else {
            sqlx::query_as::<Sqlite, (i64,)>("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(v,)| v)
                .collect()
        };
        Ok(pending(&super::migrations::SQLITE_MIGRATOR, &applied))
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction and this process's turn to write. SQLite has
    /// one writer; left to the busy timeout, waiting writers poll with
    /// backoff and are not served in order, so under a full sync of many
    /// mailboxes one could starve past the 5 s and fail with "database is
    /// locked" (seen in the CPU benchmark: 1 of 10 mailboxes). Queuing our
    /// own writers first (a fair mutex) leaves the busy timeout for other
    /// processes, such as an analyst's `sqlite3` shell or a CLI command.
    async fn begin_write(
        &self,
    ) -> Result<(OwnedMutexGuard<()>, sqlx::Transaction<'static, Sqlite>), StoreError> {
        let turn = self.writer.clone().lock_owned().await;
        Ok((turn, self.pool.begin_with("BEGIN IMMEDIATE").await?))
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
        // SQLite has one writer: inside BEGIN IMMEDIATE nobody else can
        // claim between our SELECT and UPDATE, so one statement suffices.
        // It walks `sync_state_due_idx` from the earliest due row and stops
        // at `limit` claimable ones: rows in flight and the due ones claimed
        // are all it reads, however many mailboxes there are (unscheduled
        // rows have NULL `next_poll_at` and lie outside the range).
        let (_turn, mut tx) = self.begin_write().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE sync_state SET lease_owner = $1, lease_epoch = lease_epoch + 1, \
             lease_expires_at = $2, updated_at = $3 \
             WHERE mailbox IN ( \
               SELECT t.mailbox FROM sync_state t \
               WHERE t.next_poll_at <= $3 \
               AND (t.lease_owner IS NULL OR t.lease_expires_at IS NULL OR t.lease_expires_at <= $3) \
               AND EXISTS (SELECT 1 FROM subscriptions s \
                           WHERE s.mailbox = t.mailbox AND s.status = 'active') \
               ORDER BY t.next_poll_at, t.mailbox LIMIT $4) \
             RETURNING mailbox, lease_epoch",
        )
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
        let Some(expr) = fts5_query(query) else {
            return Ok(Vec::new());
        };
        convert(
            sqlx::query_as::<Sqlite, HitRow>(
                "SELECT m.mailbox, m.gmail_id, m.subject \
                 FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid \
                 WHERE messages_fts MATCH $1 AND m.deleted_at IS NULL \
                 AND ($2 IS NULL OR m.mailbox = $2) \
                 ORDER BY messages_fts.rank, m.id LIMIT $3",
            )
            .bind(expr)
            .bind(mailbox.map(MailboxAddress::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
        )
    }
}

// The statements both backends share (`store/sql/`), in SQLite's dialect.
sql::subscription_statements!(SqliteStore, Sqlite);
sql::group_statements!(SqliteStore, Sqlite);
sql::oauth_statements!(SqliteStore, Sqlite);
sql::lease_statements!(SqliteStore, Sqlite, share_lock(""));
sql::batch_statements!(
    SqliteStore,
    Sqlite,
    ids(" IN (SELECT value FROM json_each(", "))"),
    rows("json_each(", ") AS j"),
    timestamp(""),
    unhex("unhex(", ")")
);
sql::run_statements!(SqliteStore, Sqlite);
sql::message_statements!(
    SqliteStore,
    Sqlite,
    ids(" IN (SELECT value FROM json_each(", "))")
);
sql::quota_statements!(SqliteStore, Sqlite);
sql::budget_statements!(SqliteStore, Sqlite);
sql::housekeeping_statements!(SqliteStore, Sqlite);
sql::watch_statements!(SqliteStore, Sqlite);
sql::push_statements!(SqliteStore, Sqlite, share_lock(""), row_lock(""));

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer of ours queued behind a slow one waits its turn: left to
    /// SQLite's busy handler it failed with "database is locked" once the
    /// 5 s busy timeout ran out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_behind_a_slow_one_waits_its_turn_instead_of_failing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("turns.db").display());
        let store = SqliteStore::connect(&url, 4).await.expect("open");
        store.migrate().await.expect("migrate");

        let (turn, mut tx) = store.begin_write().await.expect("first writer");
        sqlx::query("UPDATE sync_state SET updated_at = updated_at")
            .execute(&mut *tx)
            .await
            .expect("write inside the first transaction");
        let other = store.clone();
        let queued = tokio::spawn(async move {
            other
                .claim_due("replica-b", Utc::now(), Duration::from_secs(60), 10)
                .await
        });
        // Past the busy timeout.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            !queued.is_finished(),
            "the queued writer gave up: {:?}",
            queued.await
        );
        tx.commit().await.expect("commit");
        drop(turn);
        let claimed = queued
            .await
            .expect("task")
            .expect("the queued writer succeeds");
        assert!(claimed.is_empty());
    }
}
