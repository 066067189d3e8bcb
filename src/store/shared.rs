//! Statements that read the same on SQLite and PostgreSQL, written once and
//! expanded for each backend by `shared_store_impl!`.
//!
//! Both backends take positional `$N` parameters (sqlx maps `$N` to the
//! N-th bound value on SQLite too). What differs is passed in as literal
//! fragments: how a JSON array parameter becomes a row source
//! (`json_each` versus `json_array_elements`). Dialect-specific work
//! (connecting, migrations, claiming due mailboxes, full-text search,
//! opening a write transaction) lives in the backend modules.

macro_rules! subscription_columns {
    () => {
        "mailbox, status, label_filter, requested_by, requested_at, approved_by, approved_at, \
         last_reviewed_at, reviewed_by, org_unit_seen, org_unit_checked_at, note, status_reason, \
         auth_mode, created_at, updated_at"
    };
}

macro_rules! sync_state_columns {
    () => {
        "mailbox, phase, history_id, page_token, full_sync_history_id, full_sync_generation, \
         last_success_at, next_poll_at, consecutive_failures, last_error, lease_owner, \
         lease_epoch, lease_expires_at, updated_at"
    };
}

/// Expands the shared methods for one backend.
///
/// `ids(open, close)`: around a JSON-array-of-strings parameter, completes
/// `gmail_id` into a membership test (`IN (…)` on SQLite; `= ANY(ARRAY(…))`
/// on PostgreSQL, whose planner would otherwise hash-join against a scan of
/// the whole mailbox instead of probing the primary key). `rows(open, close)`: wraps a `$2` JSON
/// array of arrays into a row source `j` whose `j.value->>N` is field N.
macro_rules! shared_store_impl {
    (
        $store:ident,
        $db:ty,
        ids($io:literal, $ic:literal),
        rows($ro:literal, $rc:literal),
        timestamp($tc:literal),
        unhex($ho:literal, $hc:literal)
    ) => {
        impl $store {
            // -- subscriptions ------------------------------------------------

            pub(crate) async fn insert_subscription(
                &self,
                s: &NewSubscription,
            ) -> Result<Subscription, StoreError> {
                let now = now();
                let mailbox = s.mailbox.as_str();
                let (_turn, mut tx) = self.begin_write().await?;
                let current: Option<(String,)> =
                    sqlx::query_as::<$db, (String,)>("SELECT status FROM subscriptions WHERE mailbox = $1")
                        .bind(mailbox)
                        .fetch_optional(&mut *tx)
                        .await?;
                let filter = json_strings(&s.label_filter);
                let note = clean_opt(s.note.as_deref());
                let row: SubscriptionRow = match current.as_ref().map(|(st,)| st.as_str()) {
                    None => sqlx::query_as::<$db, SubscriptionRow>(concat!(
                        "INSERT INTO subscriptions (mailbox, status, label_filter, requested_by, \
                         requested_at, note, auth_mode, created_at, updated_at) \
                         VALUES ($1, 'pending', $2, $3, $4, $5, $6, $4, $4) RETURNING ",
                        subscription_columns!()
                    ))
                    .bind(mailbox)
                    .bind(&filter)
                    .bind(s.requested_by.as_str())
                    .bind(now)
                    .bind(&note)
                    .bind(s.auth_mode.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| match e.as_database_error() {
                        Some(d) if d.is_unique_violation() => StoreError::Conflict(format!(
                            "subscription for {mailbox} already exists"
                        )),
                        _ => StoreError::Other(e),
                    })?,
                    Some("removed") => sqlx::query_as::<$db, SubscriptionRow>(concat!(
                        "UPDATE subscriptions SET status = 'pending', label_filter = $2, \
                         requested_by = $3, requested_at = $4, note = $5, approved_by = NULL, \
                         approved_at = NULL, status_reason = NULL, auth_mode = $6, updated_at = $4 \
                         WHERE mailbox = $1 RETURNING ",
                        subscription_columns!()
                    ))
                    .bind(mailbox)
                    .bind(&filter)
                    .bind(s.requested_by.as_str())
                    .bind(now)
                    .bind(&note)
                    .bind(s.auth_mode.as_str())
                    .fetch_one(&mut *tx)
                    .await?,
                    Some(other) => {
                        return Err(StoreError::Conflict(format!(
                            "subscription for {mailbox} already exists (status {other})"
                        )));
                    }
                };
                let old = current.map(|(st,)| st);
                Self::insert_event(&mut tx, mailbox, now, s.requested_by.as_str(), "add", old.as_deref(), "pending", None)
                    .await?;
                tx.commit().await?;
                row.try_into()
            }

            #[allow(clippy::too_many_arguments)]
            async fn insert_event(
                tx: &mut sqlx::Transaction<'static, $db>,
                mailbox: &str,
                at: DateTime<Utc>,
                actor: &str,
                action: &str,
                old_status: Option<&str>,
                new_status: &str,
                reason: Option<&str>,
            ) -> Result<(), StoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO subscription_events \
                     (mailbox, at, actor, action, old_status, new_status, reason) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(mailbox)
                .bind(at)
                .bind(clean(actor))
                .bind(clean(action))
                .bind(old_status)
                .bind(new_status)
                .bind(clean_opt(reason))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub(crate) async fn get_subscription(
                &self,
                m: &MailboxAddress,
            ) -> Result<Option<Subscription>, StoreError> {
                sqlx::query_as::<$db, SubscriptionRow>(concat!(
                    "SELECT ",
                    subscription_columns!(),
                    " FROM subscriptions WHERE mailbox = $1"
                ))
                .bind(m.as_str())
                .fetch_optional(&self.pool)
                .await?
                .map(Subscription::try_from)
                .transpose()
            }

            pub(crate) async fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
                convert(
                    sqlx::query_as::<$db, SubscriptionRow>(concat!(
                        "SELECT ",
                        subscription_columns!(),
                        " FROM subscriptions ORDER BY mailbox"
                    ))
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            pub(crate) async fn update_subscription(
                &self,
                u: &SubscriptionUpdate,
            ) -> Result<Subscription, StoreError> {
                let now = now();
                let mailbox = u.mailbox.as_str();
                let (_turn, mut tx) = self.begin_write().await?;
                let row = sqlx::query_as::<$db, SubscriptionRow>(concat!(
                    "UPDATE subscriptions SET status = $3, \
                     approved_by = COALESCE($4, approved_by), \
                     approved_at = CASE WHEN $4 IS NULL THEN approved_at ELSE $8 END, \
                     reviewed_by = COALESCE($5, reviewed_by), \
                     last_reviewed_at = CASE WHEN $5 IS NULL THEN last_reviewed_at ELSE $8 END, \
                     status_reason = CASE WHEN $6 IS NOT NULL THEN $6 \
                                          WHEN status <> $3 THEN NULL ELSE status_reason END, \
                     org_unit_seen = COALESCE($7, org_unit_seen), \
                     org_unit_checked_at = CASE WHEN $7 IS NULL THEN org_unit_checked_at ELSE $8 END, \
                     updated_at = $8 \
                     WHERE mailbox = $1 AND status = $2 RETURNING ",
                    subscription_columns!()
                ))
                .bind(mailbox)
                .bind(u.expected.as_str())
                .bind(u.new_status.as_str())
                .bind(u.approved_by.as_ref().map(Operator::as_str))
                .bind(u.reviewed_by.as_ref().map(Operator::as_str))
                .bind(clean_opt(u.reason.as_deref()))
                .bind(clean_opt(u.org_unit_seen.as_deref()))
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    let current: Option<(String,)> = sqlx::query_as::<$db, (String,)>(
                        "SELECT status FROM subscriptions WHERE mailbox = $1",
                    )
                    .bind(mailbox)
                    .fetch_optional(&mut *tx)
                    .await?;
                    return Err(match current {
                        None => StoreError::NotFound(format!("no subscription for {mailbox}")),
                        Some((st,)) => StoreError::Conflict(format!(
                            "subscription for {mailbox} is {st}, expected {}",
                            u.expected
                        )),
                    });
                };
                Self::insert_event(
                    &mut tx,
                    mailbox,
                    now,
                    u.actor.as_str(),
                    &u.action,
                    Some(u.expected.as_str()),
                    u.new_status.as_str(),
                    u.reason.as_deref(),
                )
                .await?;
                tx.commit().await?;
                row.try_into()
            }

            pub(crate) async fn record_org_unit(
                &self,
                m: &MailboxAddress,
                org_unit: Option<&str>,
            ) -> Result<(), StoreError> {
                let done = sqlx::query::<$db>(
                    "UPDATE subscriptions SET org_unit_seen = $2, org_unit_checked_at = $3, \
                     updated_at = $3 WHERE mailbox = $1",
                )
                .bind(m.as_str())
                .bind(clean_opt(org_unit))
                .bind(now())
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("no subscription for {m}")));
                }
                Ok(())
            }

            pub(crate) async fn subscription_events(
                &self,
                m: &MailboxAddress,
            ) -> Result<Vec<SubscriptionEvent>, StoreError> {
                convert(
                    sqlx::query_as::<$db, EventRow>(
                        "SELECT id, mailbox, at, actor, action, old_status, new_status, reason \
                         FROM subscription_events WHERE mailbox = $1 ORDER BY id",
                    )
                    .bind(m.as_str())
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            // -- OAuth consent --------------------------------------------------

            pub(crate) async fn record_oauth_consent(
                &self,
                c: &OAuthConsent,
            ) -> Result<Subscription, StoreError> {
                let now = now();
                let mailbox = c.mailbox.as_str();
                let (_turn, mut tx) = self.begin_write().await?;
                let current: Option<(String,)> =
                    sqlx::query_as::<$db, (String,)>("SELECT status FROM subscriptions WHERE mailbox = $1")
                        .bind(mailbox)
                        .fetch_optional(&mut *tx)
                        .await?;
                let old = current.map(|(st,)| st);
                match old.as_deref() {
                    // The consent is the request: an operator must still approve it.
                    None | Some("removed") => {
                        sqlx::query::<$db>(
                            "INSERT INTO subscriptions (mailbox, status, label_filter, requested_by, \
                             requested_at, auth_mode, created_at, updated_at) \
                             VALUES ($1, 'pending', '[]', $2, $3, 'oauth', $3, $3) \
                             ON CONFLICT (mailbox) DO UPDATE SET status = 'pending', label_filter = '[]', \
                             requested_by = $2, requested_at = $3, approved_by = NULL, approved_at = NULL, \
                             status_reason = NULL, auth_mode = 'oauth', updated_at = $3",
                        )
                        .bind(mailbox)
                        .bind(c.actor.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        Self::insert_event(&mut tx, mailbox, now, c.actor.as_str(), "add", old.as_deref(), "pending",
                            Some("requested by the mailbox owner's OAuth consent")).await?;
                    }
                    Some(_) => {
                        sqlx::query::<$db>(
                            "UPDATE subscriptions SET auth_mode = 'oauth', updated_at = $2 WHERE mailbox = $1",
                        )
                        .bind(mailbox)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                sqlx::query::<$db>(
                    "INSERT INTO oauth_tokens (mailbox, refresh_token_ciphertext, key_id, scopes, \
                     google_subject, consented_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                     ON CONFLICT (mailbox) DO UPDATE SET refresh_token_ciphertext = $2, key_id = $3, \
                     scopes = $4, google_subject = $5, consented_at = $6, updated_at = $6",
                )
                .bind(mailbox)
                .bind(&c.refresh_token_ciphertext)
                .bind(&c.key_id)
                .bind(clean(&c.scopes))
                .bind(clean_opt(c.google_subject.as_deref()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                // A mailbox waiting after a revoked consent is retried now.
                sqlx::query::<$db>(
                    "UPDATE sync_state SET next_poll_at = $2, consecutive_failures = 0 \
                     WHERE mailbox = $1 AND phase = 'auth_failed'",
                )
                .bind(mailbox)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query_as::<$db, SubscriptionRow>(concat!(
                    "SELECT ",
                    subscription_columns!(),
                    " FROM subscriptions WHERE mailbox = $1"
                ))
                .bind(mailbox)
                .fetch_one(&mut *tx)
                .await?;
                Self::insert_event(&mut tx, mailbox, now, c.actor.as_str(), "consent", Some(&row.status), &row.status,
                    Some(&format!("OAuth consent for {}", c.scopes))).await?;
                tx.commit().await?;
                row.try_into()
            }

            pub(crate) async fn oauth_token(
                &self,
                m: &MailboxAddress,
            ) -> Result<Option<OAuthToken>, StoreError> {
                sqlx::query_as::<$db, OAuthTokenRow>(
                    "SELECT mailbox, refresh_token_ciphertext, key_id, scopes, google_subject, \
                     consented_at, updated_at FROM oauth_tokens WHERE mailbox = $1",
                )
                .bind(m.as_str())
                .fetch_optional(&self.pool)
                .await?
                .map(OAuthToken::try_from)
                .transpose()
            }

            pub(crate) async fn list_oauth_tokens(&self) -> Result<Vec<OAuthToken>, StoreError> {
                convert(
                    sqlx::query_as::<$db, OAuthTokenRow>(
                        "SELECT mailbox, refresh_token_ciphertext, key_id, scopes, google_subject, \
                         consented_at, updated_at FROM oauth_tokens ORDER BY mailbox",
                    )
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            pub(crate) async fn replace_oauth_ciphertext(
                &self,
                m: &MailboxAddress,
                old_ciphertext: &str,
                new_ciphertext: &str,
                key_id: &str,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query::<$db>(
                    "UPDATE oauth_tokens SET refresh_token_ciphertext = $3, key_id = $4, updated_at = $5 \
                     WHERE mailbox = $1 AND refresh_token_ciphertext = $2",
                )
                .bind(m.as_str())
                .bind(old_ciphertext)
                .bind(new_ciphertext)
                .bind(key_id)
                .bind(now())
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(done == 1)
            }

            pub(crate) async fn disconnect_oauth(
                &self,
                m: &MailboxAddress,
                actor: &Operator,
                reason: &str,
            ) -> Result<Subscription, StoreError> {
                let now = now();
                let mailbox = m.as_str();
                let (_turn, mut tx) = self.begin_write().await?;
                let current: Option<(String,)> =
                    sqlx::query_as::<$db, (String,)>("SELECT status FROM subscriptions WHERE mailbox = $1")
                        .bind(mailbox)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some((old,)) = current else {
                    return Err(StoreError::NotFound(format!("no subscription for {mailbox}")));
                };
                sqlx::query::<$db>("DELETE FROM oauth_tokens WHERE mailbox = $1")
                    .bind(mailbox)
                    .execute(&mut *tx)
                    .await?;
                // Pending stays pending: pausing it would let `resume` skip approval.
                let new = match old.as_str() {
                    "active" | "suspended" => "paused",
                    other => other,
                };
                let row = sqlx::query_as::<$db, SubscriptionRow>(concat!(
                    "UPDATE subscriptions SET status = $2, status_reason = $3, updated_at = $4 \
                     WHERE mailbox = $1 RETURNING ",
                    subscription_columns!()
                ))
                .bind(mailbox)
                .bind(new)
                .bind(clean(reason))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                Self::insert_event(&mut tx, mailbox, now, actor.as_str(), "disconnect", Some(&old), new, Some(reason))
                    .await?;
                tx.commit().await?;
                row.try_into()
            }

            pub(crate) async fn purge_mailbox(
                &self,
                m: &MailboxAddress,
            ) -> Result<PurgeCounts, StoreError> {
                let (_turn, mut tx) = self.begin_write().await?;
                let mut run = async |sql: &'static str| -> Result<u64, StoreError> {
                    Ok(sqlx::query::<$db>(sql)
                        .bind(m.as_str())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected())
                };
                let counts = PurgeCounts {
                    message_addresses: run("DELETE FROM message_addresses WHERE mailbox = $1").await?,
                    message_labels: run("DELETE FROM message_labels WHERE mailbox = $1").await?,
                    attachments: run("DELETE FROM attachments WHERE mailbox = $1").await?,
                    messages: run("DELETE FROM messages WHERE mailbox = $1").await?,
                    labels: run("DELETE FROM labels WHERE mailbox = $1").await?,
                    message_changes: run("DELETE FROM message_changes WHERE mailbox = $1").await?,
                    sync_runs: run("DELETE FROM sync_runs WHERE mailbox = $1").await?,
                    sync_state: run("DELETE FROM sync_state WHERE mailbox = $1").await?,
                };
                tx.commit().await?;
                Ok(counts)
            }

            // -- sync state ---------------------------------------------------

            pub(crate) async fn sync_state(
                &self,
                m: &MailboxAddress,
            ) -> Result<Option<SyncState>, StoreError> {
                sqlx::query_as::<$db, SyncStateRow>(concat!(
                    "SELECT ",
                    sync_state_columns!(),
                    " FROM sync_state WHERE mailbox = $1"
                ))
                .bind(m.as_str())
                .fetch_optional(&self.pool)
                .await?
                .map(SyncState::try_from)
                .transpose()
            }

            pub(crate) async fn list_sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
                convert(
                    sqlx::query_as::<$db, SyncStateRow>(concat!(
                        "SELECT ",
                        sync_state_columns!(),
                        " FROM sync_state ORDER BY mailbox"
                    ))
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            pub(crate) async fn mailbox_statuses(&self) -> Result<Vec<MailboxStatus>, StoreError> {
                convert(
                    sqlx::query_as::<$db, StatusRow>(
                        "SELECT s.mailbox, s.status, t.phase, t.history_id, t.last_success_at, \
                         t.next_poll_at, COALESCE(t.consecutive_failures, 0) AS consecutive_failures, \
                         t.last_error, t.lease_owner, t.lease_expires_at, \
                         (SELECT COUNT(*) FROM messages m \
                          WHERE m.mailbox = s.mailbox AND m.deleted_at IS NULL) AS messages \
                         FROM subscriptions s LEFT JOIN sync_state t ON t.mailbox = s.mailbox \
                         WHERE s.status <> 'removed' ORDER BY s.mailbox",
                    )
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            // -- leases -------------------------------------------------------

            pub(crate) async fn claim_mailbox(
                &self,
                m: &MailboxAddress,
                owner: &str,
                now: DateTime<Utc>,
                lease_for: Duration,
            ) -> Result<Option<Lease>, StoreError> {
                let now = micros(now);
                let expires = plus(now, lease_for);
                let (_turn, mut tx) = self.begin_write().await?;
                sqlx::query::<$db>(
                    "INSERT INTO sync_state (mailbox, phase, updated_at) \
                     SELECT mailbox, 'initial', $2 FROM subscriptions \
                     WHERE mailbox = $1 AND status = 'active' \
                     ON CONFLICT (mailbox) DO NOTHING",
                )
                .bind(m.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let claimed: Option<(i64,)> = sqlx::query_as::<$db, (i64,)>(
                    "UPDATE sync_state SET lease_owner = $2, lease_epoch = lease_epoch + 1, \
                     lease_expires_at = $3, updated_at = $4 \
                     WHERE mailbox = $1 \
                     AND EXISTS (SELECT 1 FROM subscriptions s \
                                 WHERE s.mailbox = sync_state.mailbox AND s.status = 'active') \
                     AND (lease_owner IS NULL OR lease_owner = $2 \
                          OR lease_expires_at IS NULL OR lease_expires_at <= $4) \
                     RETURNING lease_epoch",
                )
                .bind(m.as_str())
                .bind(owner)
                .bind(expires)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if claimed.is_none() {
                    let exists: Option<(String,)> = sqlx::query_as::<$db, (String,)>(
                        "SELECT mailbox FROM subscriptions WHERE mailbox = $1",
                    )
                    .bind(m.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound(format!("no subscription for {m}")));
                    }
                }
                tx.commit().await?;
                Ok(claimed.map(|(epoch,)| Lease {
                    mailbox: m.clone(),
                    owner: owner.to_owned(),
                    epoch,
                    expires_at: expires,
                }))
            }

            pub(crate) async fn renew_lease(
                &self,
                l: &Lease,
                now: DateTime<Utc>,
                lease_for: Duration,
            ) -> Result<Lease, StoreError> {
                let now = micros(now);
                let expires = plus(now, lease_for);
                let done = sqlx::query::<$db>(
                    "UPDATE sync_state SET lease_expires_at = $4, updated_at = $5 \
                     WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                     AND lease_expires_at > $5",
                )
                .bind(l.mailbox.as_str())
                .bind(&l.owner)
                .bind(l.epoch)
                .bind(expires)
                .bind(now)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                }
                Ok(Lease { expires_at: expires, ..l.clone() })
            }

            pub(crate) async fn release_lease(
                &self,
                l: &Lease,
                next_poll_at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query::<$db>(
                    "UPDATE sync_state SET lease_owner = NULL, lease_expires_at = NULL, \
                     next_poll_at = $4, updated_at = $5 \
                     WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3",
                )
                .bind(l.mailbox.as_str())
                .bind(&l.owner)
                .bind(l.epoch)
                .bind(micros(next_poll_at))
                .bind(now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            /// The fencing check, first statement of every sync write: takes
            /// the `sync_state` row (a row lock on PostgreSQL) only when the
            /// lease is still ours and unexpired.
            async fn fence(
                tx: &mut sqlx::Transaction<'static, $db>,
                l: &Lease,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let done = sqlx::query::<$db>(
                    "UPDATE sync_state SET updated_at = $4 \
                     WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                     AND lease_expires_at > $4",
                )
                .bind(l.mailbox.as_str())
                .bind(&l.owner)
                .bind(l.epoch)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                }
                Ok(())
            }

            async fn insert_run(
                tx: &mut sqlx::Transaction<'static, $db>,
                r: &SyncRunRow,
            ) -> Result<(), StoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO sync_runs (mailbox, kind, replica, started_at, finished_at, \
                     added, updated, deleted, label_changes, api_calls, quota_units, outcome, error) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(r.mailbox.as_str())
                .bind(r.kind.as_str())
                .bind(clean(&r.replica))
                .bind(micros(r.started_at))
                .bind(micros(r.finished_at))
                .bind(r.counts.added as i64)
                .bind(r.counts.updated as i64)
                .bind(r.counts.deleted as i64)
                .bind(r.counts.label_changes as i64)
                .bind(r.counts.api_calls as i64)
                .bind(r.counts.quota_units as i64)
                .bind(r.outcome.as_str())
                .bind(clean_opt(r.error.as_deref()))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            // -- fenced sync writes -------------------------------------------

            pub(crate) async fn commit_batch(
                &self,
                l: &Lease,
                b: &SyncBatch,
            ) -> Result<SyncCounts, StoreError> {
                let now = now();
                let mailbox = l.mailbox.as_str();
                let (_turn, mut tx) = self.begin_write().await?;
                Self::fence(&mut tx, l, now).await?;

                // The stored state the plan depends on.
                let mut existing = sqlx::query_as::<$db, ExistingRow>(concat!(
                    "SELECT gmail_id, deleted_at IS NULL AS live, label_ids FROM messages \
                     WHERE mailbox = $1 AND gmail_id",
                    $io, "$2", $ic
                ))
                .bind(mailbox)
                .bind(json_strings(batch_ids(b)))
                .fetch_all(&mut *tx)
                .await?;
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

                let c = &b.checkpoint;
                sqlx::query::<$db>(
                    "UPDATE sync_state SET phase = $2, history_id = $3, page_token = $4, \
                     full_sync_history_id = $5, full_sync_generation = $6, \
                     last_success_at = CASE WHEN $7 THEN $8 ELSE last_success_at END, \
                     consecutive_failures = CASE WHEN $7 THEN 0 ELSE consecutive_failures END, \
                     last_error = CASE WHEN $7 THEN NULL ELSE last_error END, \
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
                .execute(&mut *tx)
                .await?;

                if let Some(r) = &b.run {
                    Self::insert_run(&mut tx, r).await?;
                }
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

            pub(crate) async fn record_failure(
                &self,
                l: &Lease,
                f: &FailureRecord,
            ) -> Result<(), StoreError> {
                let now = now();
                let (_turn, mut tx) = self.begin_write().await?;
                let done = sqlx::query::<$db>(
                    "UPDATE sync_state SET phase = $5, last_error = $6, \
                     consecutive_failures = consecutive_failures + 1, next_poll_at = $7, \
                     updated_at = $4 \
                     WHERE mailbox = $1 AND lease_owner = $2 AND lease_epoch = $3 \
                     AND lease_expires_at > $4",
                )
                .bind(l.mailbox.as_str())
                .bind(&l.owner)
                .bind(l.epoch)
                .bind(now)
                .bind(f.phase.as_str())
                .bind(clean(&f.error))
                .bind(micros(f.next_poll_at))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::LeaseLost { mailbox: l.mailbox.to_string() });
                }
                if let Some(r) = &f.run {
                    Self::insert_run(&mut tx, r).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub(crate) async fn known_message_ids(
                &self,
                m: &MailboxAddress,
                ids: &[GmailMessageId],
            ) -> Result<HashSet<GmailMessageId>, StoreError> {
                if ids.is_empty() {
                    return Ok(HashSet::new());
                }
                let rows: Vec<(String,)> = sqlx::query_as::<$db, (String,)>(concat!(
                    "SELECT gmail_id FROM messages WHERE mailbox = $1 AND deleted_at IS NULL \
                     AND gmail_id", $io, "$2", $ic
                ))
                .bind(m.as_str())
                .bind(json_strings(ids.iter().map(GmailMessageId::as_str)))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(id,)| GmailMessageId::parse(&id).map_err(decode_err))
                    .collect()
            }

            // -- reads --------------------------------------------------------

            pub(crate) async fn live_messages(
                &self,
                m: &MailboxAddress,
            ) -> Result<Vec<LiveMessage>, StoreError> {
                convert(
                    sqlx::query_as::<$db, LiveRow>(
                        "SELECT gmail_id, thread_id, label_ids FROM messages \
                         WHERE mailbox = $1 AND deleted_at IS NULL ORDER BY gmail_id",
                    )
                    .bind(m.as_str())
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            pub(crate) async fn message_changes(
                &self,
                m: &MailboxAddress,
            ) -> Result<Vec<MessageChange>, StoreError> {
                convert(
                    sqlx::query_as::<$db, ChangeRowDb>(
                        "SELECT id, mailbox, gmail_id, change, label_id, history_id, observed_at \
                         FROM message_changes WHERE mailbox = $1 ORDER BY id",
                    )
                    .bind(m.as_str())
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            pub(crate) async fn recent_messages(
                &self,
                mailbox: &MailboxAddress,
                limit: u32,
            ) -> Result<Vec<SearchHit>, StoreError> {
                self.hits(
                    "SELECT mailbox, gmail_id, subject FROM messages \
                     WHERE mailbox = $1 AND deleted_at IS NULL \
                     ORDER BY internal_date DESC, gmail_id LIMIT $2",
                    mailbox,
                    limit,
                )
                .await
            }

            pub(crate) async fn unfetched_messages(
                &self,
                mailbox: &MailboxAddress,
                limit: u32,
            ) -> Result<Vec<SearchHit>, StoreError> {
                self.hits(
                    "SELECT mailbox, gmail_id, subject FROM messages \
                     WHERE mailbox = $1 AND deleted_at IS NULL AND parse_error LIKE 'not fetched:%' \
                     ORDER BY gmail_id LIMIT $2",
                    mailbox,
                    limit,
                )
                .await
            }

            async fn hits(
                &self,
                sql: &'static str,
                mailbox: &MailboxAddress,
                limit: u32,
            ) -> Result<Vec<SearchHit>, StoreError> {
                convert(
                    sqlx::query_as::<$db, HitRow>(sql)
                        .bind(mailbox.as_str())
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            pub(crate) async fn count_messages(&self, m: &MailboxAddress) -> Result<i64, StoreError> {
                let (n,): (i64,) = sqlx::query_as::<$db, (i64,)>(
                    "SELECT COUNT(*) FROM messages WHERE mailbox = $1 AND deleted_at IS NULL",
                )
                .bind(m.as_str())
                .fetch_one(&self.pool)
                .await?;
                Ok(n)
            }

            pub(crate) async fn sync_runs(
                &self,
                m: &MailboxAddress,
            ) -> Result<Vec<SyncRunRow>, StoreError> {
                convert(
                    sqlx::query_as::<$db, RunRow>(
                        "SELECT mailbox, kind, replica, started_at, finished_at, added, updated, \
                         deleted, label_changes, api_calls, quota_units, outcome, error \
                         FROM sync_runs WHERE mailbox = $1 ORDER BY id",
                    )
                    .bind(m.as_str())
                    .fetch_all(&self.pool)
                    .await?,
                )
            }

            // -- quota --------------------------------------------------------

            pub(crate) async fn reserve_quota(
                &self,
                bucket: &str,
                window_start: DateTime<Utc>,
                units: i64,
                limit: i64,
            ) -> Result<bool, StoreError> {
                // One statement, so it is atomic on both backends: the insert
                // happens only within the limit, the increment only while
                // the new total stays within it.
                let done = sqlx::query::<$db>(
                    "INSERT INTO quota_usage (bucket, window_start, units) \
                     SELECT $1, $2, $3 WHERE $3 <= $4 \
                     ON CONFLICT (bucket, window_start) DO UPDATE \
                     SET units = quota_usage.units + excluded.units \
                     WHERE quota_usage.units + excluded.units <= $4",
                )
                .bind(clean(bucket))
                .bind(micros(window_start))
                .bind(units)
                .bind(limit)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            // -- housekeeping -------------------------------------------------

            pub(crate) async fn prune_history(
                &self,
                runs_before: Option<DateTime<Utc>>,
                quota_before: DateTime<Utc>,
                batch: i64,
            ) -> Result<Pruned, StoreError> {
                let mut pruned = Pruned::default();
                if let Some(before) = runs_before {
                    // Oldest first by id (ids follow time), a batch per
                    // statement: short transactions beside the sync's, and
                    // the scan stops at the first batch.
                    loop {
                        let done = sqlx::query::<$db>(
                            "DELETE FROM sync_runs WHERE id IN (SELECT id FROM sync_runs \
                             WHERE started_at < $1 ORDER BY id LIMIT $2)",
                        )
                        .bind(micros(before))
                        .bind(batch)
                        .execute(&self.pool)
                        .await?;
                        pruned.sync_runs += done.rows_affected();
                        if done.rows_affected() < batch as u64 {
                            break;
                        }
                    }
                }
                let done = sqlx::query::<$db>("DELETE FROM quota_usage WHERE window_start < $1")
                    .bind(micros(quota_before))
                    .execute(&self.pool)
                    .await?;
                pruned.quota_windows = done.rows_affected();
                Ok(pruned)
            }

            // -- analyst queries (docs test) ----------------------------------

            pub(crate) async fn count_query_rows(&self, sql: &str) -> Result<usize, StoreError> {
                let rows = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.len())
            }

            pub(crate) async fn query_first_column(&self, sql: &str) -> Result<Vec<String>, StoreError> {
                use sqlx::Row as _;
                let rows = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let v = if let Ok(v) = r.try_get::<Option<String>, _>(0) {
                        v.unwrap_or_default()
                    } else if let Ok(v) = r.try_get::<Option<i64>, _>(0) {
                        v.map(|v| v.to_string()).unwrap_or_default()
                    } else if let Ok(v) = r.try_get::<Option<f64>, _>(0) {
                        v.map(|v| v.to_string()).unwrap_or_default()
                    } else {
                        r.try_get::<Option<DateTime<Utc>>, _>(0)?
                            .map(|v| v.to_rfc3339())
                            .unwrap_or_default()
                    };
                    out.push(v);
                }
                Ok(out)
            }
        }
    };
}

pub(crate) use shared_store_impl;
pub(crate) use subscription_columns;
pub(crate) use sync_state_columns;
