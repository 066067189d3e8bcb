//! Subscriptions and their audit log (`subscriptions`, `subscription_events`):
//! adding, reading, the guarded status change, the org-unit record.
//!
//! Every status change writes its event in the same transaction. Expanded
//! once per backend by `subscription_statements!`; it must not hold dialect
//! SQL (that belongs in the backend modules).

/// The columns of `subscriptions` in `SubscriptionRow`'s order (a literal,
/// for `concat!`).
macro_rules! subscription_columns {
    () => {
        "mailbox, status, label_filter, requested_by, requested_at, approved_by, approved_at, \
         last_reviewed_at, reviewed_by, org_unit_seen, org_unit_checked_at, note, status_reason, \
         auth_mode, created_at, updated_at, label_scope, via_group, org_unit_allowed_at"
    };
}

pub(crate) use subscription_columns;

/// The subscription statements for one backend: `$store` is the backend's
/// store type, `$db` its sqlx database.
macro_rules! subscription_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use $crate::domain::{MailboxAddress, Operator};
            use $crate::store::StoreError;
            use $crate::store::model::{
                NewSubscription, Subscription, SubscriptionChange, SubscriptionEvent, SubscriptionUpdate,
            };
            use $crate::store::rows::{EventRow, SubscriptionRow, convert};
            use $crate::store::sql::{NewEvent, now, subscription_columns};
            use $crate::store::text::{clean, clean_opt, json_strings};

            impl $store {
                pub(crate) async fn insert_subscription(
                    &self,
                    s: &NewSubscription,
                    via: Option<(&str, &str)>,
                ) -> Result<Subscription, StoreError> {
                    let via_group = via.map(|(g, _)| g);
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
                             requested_at, note, auth_mode, created_at, updated_at, via_group) \
                             VALUES ($1, 'pending', $2, $3, $4, $5, $6, $4, $4, $7) RETURNING ",
                            subscription_columns!()
                        ))
                        .bind(mailbox)
                        .bind(&filter)
                        .bind(s.requested_by.as_str())
                        .bind(now)
                        .bind(&note)
                        .bind(s.auth_mode.as_str())
                        .bind(via_group)
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
                             approved_at = NULL, status_reason = NULL, auth_mode = $6, updated_at = $4, \
                             label_scope = NULL, via_group = $7 \
                             WHERE mailbox = $1 RETURNING ",
                            subscription_columns!()
                        ))
                        .bind(mailbox)
                        .bind(&filter)
                        .bind(s.requested_by.as_str())
                        .bind(now)
                        .bind(&note)
                        .bind(s.auth_mode.as_str())
                        .bind(via_group)
                        .fetch_one(&mut *tx)
                        .await?,
                        Some(other) => {
                            return Err(StoreError::Conflict(format!(
                                "subscription for {mailbox} already exists (status {other})"
                            )));
                        }
                    };
                    let old = current.map(|(st,)| st);
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: s.requested_by.as_str(),
                        action: "add",
                        old_status: old.as_deref(),
                        new_status: "pending",
                        reason: via.map(|(_, why)| why),
                    })
                    .await?;
                    tx.commit().await?;
                    row.try_into()
                }

                /// Appends `e` to the audit log inside the caller's transaction.
                async fn insert_event(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    e: NewEvent<'_>,
                ) -> Result<(), StoreError> {
                    sqlx::query::<$db>(
                        "INSERT INTO subscription_events \
                         (mailbox, at, actor, action, old_status, new_status, reason) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(e.mailbox)
                    .bind(e.at)
                    .bind(clean(e.actor))
                    .bind(clean(e.action))
                    .bind(e.old_status)
                    .bind(e.new_status)
                    .bind(clean_opt(e.reason))
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
                         label_scope = COALESCE($9, label_scope), \
                         org_unit_allowed_at = CASE WHEN status <> $3 THEN NULL ELSE org_unit_allowed_at END, \
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
                    .bind(u.label_scope.as_ref().map(json_strings))
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
                    Self::reschedule(&mut tx, mailbox, u.expected.as_str(), u.new_status.as_str(), now)
                        .await?;
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: u.actor.as_str(),
                        action: &u.action,
                        old_status: Some(u.expected.as_str()),
                        new_status: u.new_status.as_str(),
                        reason: u.reason.as_deref(),
                    })
                    .await?;
                    tx.commit().await?;
                    row.try_into()
                }

                pub(crate) async fn request_subscription_change(
                    &self,
                    c: &SubscriptionChange,
                ) -> Result<Subscription, StoreError> {
                    const PLAIN: &str = concat!(
                        "UPDATE subscriptions SET status = 'pending', label_filter = $5, label_scope = NULL, auth_mode = $6, \
                         requested_by = $7, requested_at = $8, approved_by = NULL, approved_at = NULL, \
                         status_reason = $9, updated_at = $8 \
                         WHERE mailbox = $1 AND status = $2 AND label_filter = $3 AND auth_mode = $4 \
                         AND status <> 'removed' RETURNING ",
                        subscription_columns!()
                    );
                    const WITH_CONSENT: &str = concat!(
                        "UPDATE subscriptions SET status = 'pending', label_filter = $5, label_scope = NULL, auth_mode = $6, \
                         requested_by = $7, requested_at = $8, approved_by = NULL, approved_at = NULL, \
                         status_reason = $9, updated_at = $8 \
                         WHERE mailbox = $1 AND status = $2 AND label_filter = $3 AND auth_mode = $4 \
                         AND status <> 'removed' \
                         AND EXISTS (SELECT 1 FROM oauth_tokens t WHERE t.mailbox = $1) RETURNING ",
                        subscription_columns!()
                    );
                    let now = now();
                    let mailbox = c.mailbox.as_str();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let row = sqlx::query_as::<$db, SubscriptionRow>(if c.require_consent {
                        WITH_CONSENT
                    } else {
                        PLAIN
                    })
                    .bind(mailbox)
                    .bind(c.expected_status.as_str())
                    .bind(json_strings(&c.expected_label_filter))
                    .bind(c.expected_auth_mode.as_str())
                    .bind(json_strings(&c.label_filter))
                    .bind(c.auth_mode.as_str())
                    .bind(c.actor.as_str())
                    .bind(now)
                    .bind(clean(&c.reason))
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = row else {
                        let exists: Option<(String,)> = sqlx::query_as::<$db, (String,)>(
                            "SELECT status FROM subscriptions WHERE mailbox = $1",
                        )
                        .bind(mailbox)
                        .fetch_optional(&mut *tx)
                        .await?;
                        return Err(match exists {
                            None => StoreError::NotFound(format!("no subscription for {mailbox}")),
                            Some(_) => StoreError::Conflict(format!(
                                "subscription for {mailbox} changed meanwhile (or its consent is gone)"
                            )),
                        });
                    };
                    Self::reschedule(&mut tx, mailbox, c.expected_status.as_str(), "pending", now).await?;
                    Self::insert_event(&mut tx, NewEvent {
                        mailbox,
                        at: now,
                        actor: c.actor.as_str(),
                        action: &c.action,
                        old_status: Some(c.expected_status.as_str()),
                        new_status: "pending",
                        reason: Some(&c.reason),
                    })
                    .await?;
                    tx.commit().await?;
                    row.try_into()
                }

                pub(crate) async fn record_org_unit(
                    &self,
                    m: &MailboxAddress,
                    org_unit: Option<&str>,
                    allowed: bool,
                ) -> Result<(), StoreError> {
                    let done = sqlx::query::<$db>(
                        "UPDATE subscriptions SET org_unit_seen = $2, org_unit_checked_at = $3, \
                         org_unit_allowed_at = CASE WHEN $4 THEN $3 ELSE NULL END, \
                         updated_at = $3 WHERE mailbox = $1",
                    )
                    .bind(m.as_str())
                    .bind(clean_opt(org_unit))
                    .bind(now())
                    .bind(allowed)
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
            }
        };
    };
}

pub(crate) use subscription_statements;
