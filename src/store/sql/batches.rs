//! The fenced batch write (`Store::commit_batch`): the lease check, the
//! stored state the plan needs, then the plan applied in bulk to
//! `messages`, its child tables, `labels` and `message_changes`, and the
//! checkpoint, all in one transaction.
//!
//! What changes is decided by `batch::plan_batch`, not here; this file only
//! turns the plan into statements. Expanded once per backend by
//! `batch_statements!`, whose dialect fragments are described on it.

/// The batch statements for one backend: `$store` is the backend's store
/// type, `$db` its sqlx database. Both backends take positional `$N`
/// parameters; what differs is passed in as literal fragments:
///
/// - `ids(open, close)`: around a JSON-array-of-strings parameter, completes
///   `gmail_id` into a membership test (`IN (…)` on SQLite; `= ANY(ARRAY(…))`
///   on PostgreSQL, whose planner would otherwise hash-join against a scan of
///   the whole mailbox instead of probing the primary key);
/// - `rows(open, close)`: wraps a `$2` JSON array of arrays into a row source
///   `j` whose `j.value->>N` is field N;
/// - `timestamp(cast)`: appended to a timestamp read from JSON text;
/// - `unhex(open, close)`: turns hex text into bytes.
macro_rules! batch_statements {
    (
        $store:ident,
        $db:ty,
        ids($io:literal, $ic:literal),
        rows($ro:literal, $rc:literal),
        timestamp($tc:literal),
        unhex($ho:literal, $hc:literal)
    ) => {
        const _: () = {
            use $crate::domain::{ChangeKind, GmailMessageId, HistoryId, SyncCounts};
            use $crate::store::StoreError;
            use $crate::store::batch::{
                ChangeRow, addresses_json, attachments_json, batch_ids, changes_json, existing_map,
                label_pairs_json, label_rows_json, label_updates_json, messages_json, plan_batch,
                upsert_labels_json,
            };
            use $crate::store::model::{Lease, SyncBatch};
            use $crate::store::rows::ExistingRow;
            use $crate::store::sql::{micros, now};
            use $crate::store::text::{clean, clean_opt, json_strings};

            impl $store {
                pub(crate) async fn commit_batch(
                    &self,
                    l: &Lease,
                    b: &SyncBatch,
                ) -> Result<SyncCounts, StoreError> {
                    let now = now();
                    let mailbox = l.mailbox.as_str();
                    let (_turn, mut tx) = self.begin_write().await?;
                    Self::fence(&mut tx, l, now).await?;

                    // The stored state the plan depends on (nothing to read for
                    // a batch that names no message, such as a quiet pass's).
                    let ids = batch_ids(b);
                    let mut existing = if ids.is_empty() {
                        Vec::new()
                    } else {
                        sqlx::query_as::<$db, ExistingRow>(concat!(
                            "SELECT gmail_id, deleted_at IS NULL AS live, label_ids FROM messages \
                             WHERE mailbox = $1 AND gmail_id",
                            $io, "$2", $ic
                        ))
                        .bind(mailbox)
                        .bind(json_strings(ids))
                        .fetch_all(&mut *tx)
                        .await?
                    };
                    if let Some((label, _)) = &b.label_reconcile {
                        existing.extend(
                            sqlx::query_as::<$db, ExistingRow>(
                                "SELECT m.gmail_id, TRUE AS live, m.label_ids FROM messages m \
                                 JOIN message_labels ml \
                                   ON ml.mailbox = m.mailbox AND ml.gmail_id = m.gmail_id \
                                 WHERE ml.mailbox = $1 AND ml.label_id = $2 AND m.deleted_at IS NULL",
                            )
                            .bind(mailbox)
                            .bind(clean(label))
                            .fetch_all(&mut *tx)
                            .await?,
                        );
                    }
                    let plan = plan_batch(b, existing_map(existing));
                    let mut changes = plan.changes.clone();
                    let mut stats = plan.stats;
                    let generation = b.checkpoint.full_sync_generation;

                    // Upserts: the message row, then its children replaced in bulk.
                    if !plan.upserts.is_empty() {
                        sqlx::query::<$db>(concat!(
                            "INSERT INTO messages (mailbox, gmail_id, thread_id, history_id, internal_date, \
                             message_id, in_reply_to, references_ids, subject, snippet, body_text, body_html, \
                             size_estimate, has_attachments, label_ids, parse_error, truncated, date_header, \
                             raw, sync_generation, fts_addresses, deleted_at, ingested_at, updated_at) \
                             SELECT $1, j.value->>0, j.value->>1, CAST(j.value->>2 AS BIGINT), \
                             (j.value->>3)", $tc, ", j.value->>4, j.value->>5, j.value->>6, j.value->>7, \
                             j.value->>8, j.value->>9, j.value->>10, CAST(j.value->>11 AS BIGINT), \
                             CAST(j.value->>12 AS BOOLEAN), j.value->>13, j.value->>14, \
                             CAST(j.value->>15 AS BOOLEAN), (j.value->>16)", $tc, ", ",
                            $ho, "j.value->>17", $hc, ", $3, j.value->>18, NULL, $4, $4 \
                             FROM ", $ro, "$2", $rc, " WHERE TRUE \
                             ON CONFLICT (mailbox, gmail_id) DO UPDATE SET \
                             thread_id = excluded.thread_id, history_id = excluded.history_id, \
                             internal_date = excluded.internal_date, message_id = excluded.message_id, \
                             in_reply_to = excluded.in_reply_to, references_ids = excluded.references_ids, \
                             subject = excluded.subject, snippet = excluded.snippet, \
                             body_text = excluded.body_text, body_html = excluded.body_html, \
                             size_estimate = excluded.size_estimate, has_attachments = excluded.has_attachments, \
                             label_ids = excluded.label_ids, parse_error = excluded.parse_error, \
                             truncated = excluded.truncated, date_header = excluded.date_header, \
                             raw = excluded.raw, sync_generation = excluded.sync_generation, \
                             fts_addresses = excluded.fts_addresses, deleted_at = NULL, \
                             updated_at = excluded.updated_at"
                        ))
                        .bind(mailbox)
                        .bind(messages_json(&plan))
                        .bind(generation)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        let ids = json_strings(plan.upserts.iter().map(|(u, _)| u.meta.gmail_id.as_str()));
                        for sql in [
                            concat!("DELETE FROM message_addresses WHERE mailbox = $1 AND gmail_id", $io, "$2", $ic),
                            concat!("DELETE FROM attachments WHERE mailbox = $1 AND gmail_id", $io, "$2", $ic),
                            concat!("DELETE FROM message_labels WHERE mailbox = $1 AND gmail_id", $io, "$2", $ic),
                        ] {
                            sqlx::query::<$db>(sql).bind(mailbox).bind(&ids).execute(&mut *tx).await?;
                        }
                        sqlx::query::<$db>(concat!(
                            "INSERT INTO message_addresses (mailbox, gmail_id, role, position, name, address, domain) \
                             SELECT $1, j.value->>0, j.value->>1, CAST(j.value->>2 AS BIGINT), j.value->>3, \
                             j.value->>4, j.value->>5 FROM ", $ro, "$2", $rc
                        ))
                        .bind(mailbox)
                        .bind(addresses_json(&plan))
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query::<$db>(concat!(
                            "INSERT INTO attachments (mailbox, gmail_id, part_id, filename, mime_type, \
                             size_bytes, sha256, is_inline, content_id) \
                             SELECT $1, j.value->>0, j.value->>1, j.value->>2, j.value->>3, \
                             CAST(j.value->>4 AS BIGINT), j.value->>5, CAST(j.value->>6 AS BOOLEAN), \
                             j.value->>7 FROM ", $ro, "$2", $rc
                        ))
                        .bind(mailbox)
                        .bind(attachments_json(&plan))
                        .execute(&mut *tx)
                        .await?;
                        Self::insert_message_labels(&mut tx, mailbox, upsert_labels_json(&plan)).await?;
                    }

                    // Label-only rewrites of messages not upserted here.
                    if !plan.label_updates.is_empty() {
                        let label_ids = json_strings(plan.label_updates.iter().map(|u| u.gmail_id.as_str()));
                        sqlx::query::<$db>(concat!(
                            "UPDATE messages SET label_ids = j.value->>1, updated_at = $3 \
                             FROM ", $ro, "$2", $rc, " \
                             WHERE messages.mailbox = $1 AND messages.gmail_id = j.value->>0 \
                             AND messages.gmail_id", $io, "$4", $ic
                        ))
                        .bind(mailbox)
                        .bind(label_updates_json(&plan))
                        .bind(now)
                        .bind(&label_ids)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query::<$db>(concat!(
                            "DELETE FROM message_labels WHERE mailbox = $1 AND gmail_id", $io, "$3", $ic,
                            " AND (gmail_id, label_id) IN \
                             (SELECT j.value->>0, j.value->>1 FROM ", $ro, "$2", $rc, ")"
                        ))
                        .bind(mailbox)
                        .bind(label_pairs_json(&plan, false))
                        .bind(&label_ids)
                        .execute(&mut *tx)
                        .await?;
                        Self::insert_message_labels(&mut tx, mailbox, label_pairs_json(&plan, true)).await?;
                    }

                    if !plan.deletes.is_empty() {
                        sqlx::query::<$db>(concat!(
                            "UPDATE messages SET deleted_at = $3, updated_at = $3 \
                             WHERE mailbox = $1 AND deleted_at IS NULL \
                             AND gmail_id", $io, "$2", $ic
                        ))
                        .bind(mailbox)
                        .bind(json_strings(&plan.deletes))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }

                    if !b.mark_seen.is_empty() {
                        sqlx::query::<$db>(concat!(
                            "UPDATE messages SET sync_generation = $3 \
                             WHERE mailbox = $1 AND sync_generation <> $3 \
                             AND gmail_id", $io, "$2", $ic
                        ))
                        .bind(mailbox)
                        .bind(json_strings(b.mark_seen.iter().map(GmailMessageId::as_str)))
                        .bind(generation)
                        .execute(&mut *tx)
                        .await?;
                    }

                    if b.delete_unseen {
                        let gone: Vec<(String,)> = sqlx::query_as::<$db, (String,)>(
                            "UPDATE messages SET deleted_at = $3, updated_at = $3 \
                             WHERE mailbox = $1 AND deleted_at IS NULL AND sync_generation < $2 \
                             RETURNING gmail_id",
                        )
                        .bind(mailbox)
                        .bind(generation)
                        .bind(now)
                        .fetch_all(&mut *tx)
                        .await?;
                        stats.deleted += gone.len() as u64;
                        let mut gone: Vec<String> = gone.into_iter().map(|(id,)| id).collect();
                        gone.sort();
                        changes.extend(gone.into_iter().map(|gmail_id| ChangeRow {
                            gmail_id,
                            change: ChangeKind::Deleted,
                            label_id: None,
                            history_id: None,
                        }));
                    }

                    if let Some(rows) = &b.labels {
                        sqlx::query::<$db>("DELETE FROM labels WHERE mailbox = $1")
                            .bind(mailbox)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query::<$db>(concat!(
                            "INSERT INTO labels (mailbox, label_id, name, type) \
                             SELECT $1, j.value->>0, j.value->>1, j.value->>2 FROM ", $ro, "$2", $rc,
                            " WHERE TRUE ON CONFLICT (mailbox, label_id) DO NOTHING"
                        ))
                        .bind(mailbox)
                        .bind(label_rows_json(rows))
                        .execute(&mut *tx)
                        .await?;
                    }

                    if !changes.is_empty() {
                        sqlx::query::<$db>(concat!(
                            "INSERT INTO message_changes (mailbox, gmail_id, change, label_id, history_id, observed_at) \
                             SELECT $1, j.value->>0, j.value->>1, j.value->>2, CAST(j.value->>3 AS BIGINT), $3 \
                             FROM ", $ro, "$2", $rc
                        ))
                        .bind(mailbox)
                        .bind(changes_json(&changes))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }

                    // The run row before the checkpoint, which may release the
                    // lease: every row of the batch is written while it is held.
                    // A release leaves the mailbox due now instead of at
                    // `release_at` when a notification named a historyId
                    // beyond the one written (it arrived mid-pass, or the
                    // change it announces came after the pass's last read).
                    if let Some(r) = &b.run {
                        Self::insert_run(&mut tx, r).await?;
                    }
                    let c = &b.checkpoint;
                    sqlx::query::<$db>(
                        "UPDATE sync_state SET phase = $2, history_id = $3, page_token = $4, \
                         full_sync_history_id = $5, full_sync_generation = $6, applied_label_scope = $9, \
                         last_success_at = CASE WHEN $7 THEN $8 ELSE last_success_at END, \
                         consecutive_failures = CASE WHEN $7 THEN 0 ELSE consecutive_failures END, \
                         last_error = CASE WHEN $7 THEN NULL ELSE last_error END, \
                         quiet_passes = quiet_passes + CASE WHEN $10 THEN 1 ELSE 0 END, \
                         last_quiet_at = CASE WHEN $10 THEN $8 ELSE last_quiet_at END, \
                         lease_owner = CASE WHEN $11 IS NULL THEN lease_owner ELSE NULL END, \
                         lease_expires_at = CASE WHEN $11 IS NULL THEN lease_expires_at ELSE NULL END, \
                         next_poll_at = CASE WHEN $11 IS NULL THEN next_poll_at \
                             WHEN $2 = 'incremental' AND $7 AND notified_history_id > COALESCE($3, 0) \
                             AND $11 > $8 THEN $8 ELSE $11 END, \
                         updated_at = $8 WHERE mailbox = $1",
                    )
                    .bind(mailbox)
                    .bind(c.phase.as_str())
                    .bind(c.history_id.map(HistoryId::as_i64))
                    .bind(clean_opt(c.page_token.as_deref()))
                    .bind(c.full_sync_history_id.map(HistoryId::as_i64))
                    .bind(c.full_sync_generation)
                    .bind(c.success)
                    .bind(now)
                    .bind(c.applied_label_scope.as_ref().map(json_strings))
                    .bind(b.quiet)
                    .bind(b.release_at.map(micros))
                    .execute(&mut *tx)
                    .await?;

                    tx.commit().await?;
                    Ok(stats)
                }

                async fn insert_message_labels(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    mailbox: &str,
                    pairs_json: String,
                ) -> Result<(), StoreError> {
                    sqlx::query::<$db>(concat!(
                        "INSERT INTO message_labels (mailbox, gmail_id, label_id) \
                         SELECT $1, j.value->>0, j.value->>1 FROM ", $ro, "$2", $rc,
                        " WHERE TRUE ON CONFLICT (mailbox, gmail_id, label_id) DO NOTHING"
                    ))
                    .bind(mailbox)
                    .bind(pairs_json)
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use batch_statements;
