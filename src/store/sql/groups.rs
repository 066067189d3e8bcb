//! Google Groups (`group_subscriptions`, `group_members`) and the group
//! memberships an operator reviewed (`review_snapshots`).
//!
//! A group subscription only records the request; its members become
//! ordinary subscriptions through `subscription_statements!`. Expanded once
//! per backend by `group_statements!`; it must not hold dialect SQL.

/// The columns of `group_subscriptions` in `GroupSubscriptionRow`'s order
/// (a literal, for `concat!`).
macro_rules! group_columns {
    () => {
        "group_email, status, label_filter, note, requested_by, requested_at, removed_by, \
         removed_at, last_expanded_at"
    };
}

pub(crate) use group_columns;

/// The group statements for one backend: `$store` is the backend's store
/// type, `$db` its sqlx database.
macro_rules! group_statements {
    (
        $store:ident,
        $db:ty
    ) => {
        const _: () = {
            use std::collections::HashSet;

            use $crate::domain::{MailboxAddress, Operator};
            use $crate::store::StoreError;
            use $crate::store::model::{
                GroupMemberRow, GroupSubscription, MembershipChanges, ReviewSnapshot,
            };
            use $crate::store::rows::{
                GroupMemberDbRow, GroupSubscriptionRow, ReviewSnapshotRow, convert,
            };
            use $crate::store::sql::{group_columns, now};
            use $crate::store::text::{clean, clean_opt, json_strings};

            impl $store {
                pub(crate) async fn insert_group_subscription(
                    &self,
                    group: &str,
                    by: &Operator,
                    label_filter: &[String],
                    note: Option<&str>,
                ) -> Result<GroupSubscription, StoreError> {
                    let now = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let current: Option<(String,)> = sqlx::query_as::<$db, (String,)>(
                        "SELECT status FROM group_subscriptions WHERE group_email = $1",
                    )
                    .bind(group)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((status,)) = &current
                        && status != "removed"
                    {
                        return Err(StoreError::Conflict(format!(
                            "group {group} is already subscribed"
                        )));
                    }
                    let row = sqlx::query_as::<$db, GroupSubscriptionRow>(concat!(
                        "INSERT INTO group_subscriptions (group_email, status, label_filter, note, \
                         requested_by, requested_at, created_at, updated_at) \
                         VALUES ($1, 'active', $2, $3, $4, $5, $5, $5) \
                         ON CONFLICT (group_email) DO UPDATE SET status = 'active', label_filter = $2, \
                         note = $3, requested_by = $4, requested_at = $5, removed_by = NULL, \
                         removed_at = NULL, updated_at = $5 RETURNING ",
                        group_columns!()
                    ))
                    .bind(group)
                    .bind(json_strings(label_filter))
                    .bind(clean_opt(note))
                    .bind(by.as_str())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    row.try_into()
                }

                pub(crate) async fn get_group_subscription(
                    &self,
                    group: &str,
                ) -> Result<Option<GroupSubscription>, StoreError> {
                    sqlx::query_as::<$db, GroupSubscriptionRow>(concat!(
                        "SELECT ",
                        group_columns!(),
                        " FROM group_subscriptions WHERE group_email = $1"
                    ))
                    .bind(group)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(GroupSubscription::try_from)
                    .transpose()
                }

                pub(crate) async fn list_group_subscriptions(
                    &self,
                ) -> Result<Vec<GroupSubscription>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, GroupSubscriptionRow>(concat!(
                            "SELECT ",
                            group_columns!(),
                            " FROM group_subscriptions ORDER BY group_email"
                        ))
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn remove_group_subscription(
                    &self,
                    group: &str,
                    by: &Operator,
                ) -> Result<GroupSubscription, StoreError> {
                    let now = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let row = sqlx::query_as::<$db, GroupSubscriptionRow>(concat!(
                        "UPDATE group_subscriptions SET status = 'removed', removed_by = $2, \
                         removed_at = $3, updated_at = $3 \
                         WHERE group_email = $1 AND status = 'active' RETURNING ",
                        group_columns!()
                    ))
                    .bind(group)
                    .bind(by.as_str())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = row else {
                        return Err(StoreError::NotFound(format!(
                            "no group subscription for {group}"
                        )));
                    };
                    tx.commit().await?;
                    row.try_into()
                }

                pub(crate) async fn record_group_expansion(
                    &self,
                    group: &str,
                    members: &[MailboxAddress],
                ) -> Result<MembershipChanges, StoreError> {
                    let now = now();
                    let (_turn, mut tx) = self.begin_write().await?;
                    let known: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
                        sqlx::query_as::<$db, (String, Option<chrono::DateTime<chrono::Utc>>)>(
                            "SELECT mailbox, left_at FROM group_members WHERE group_email = $1",
                        )
                        .bind(group)
                        .fetch_all(&mut *tx)
                        .await?;
                    let current: HashSet<&str> = members.iter().map(MailboxAddress::as_str).collect();
                    let mut changes = MembershipChanges::default();
                    for m in members {
                        let row = known.iter().find(|(k, _)| k == m.as_str());
                        if row.is_none_or(|(_, left)| left.is_some()) {
                            changes.joined.push(m.clone());
                        }
                        sqlx::query::<$db>(
                            "INSERT INTO group_members (group_email, mailbox, first_seen_at, last_seen_at) \
                             VALUES ($1, $2, $3, $3) ON CONFLICT (group_email, mailbox) \
                             DO UPDATE SET last_seen_at = $3, left_at = NULL",
                        )
                        .bind(group)
                        .bind(m.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    for (mailbox, left) in &known {
                        if left.is_none() && !current.contains(mailbox.as_str()) {
                            sqlx::query::<$db>(
                                "UPDATE group_members SET left_at = $3 \
                                 WHERE group_email = $1 AND mailbox = $2",
                            )
                            .bind(group)
                            .bind(mailbox)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            changes.left.push(
                                MailboxAddress::parse(mailbox)
                                    .map_err($crate::store::rows::decode_err)?,
                            );
                        }
                    }
                    sqlx::query::<$db>(
                        "UPDATE group_subscriptions SET last_expanded_at = $2, updated_at = $2 \
                         WHERE group_email = $1",
                    )
                    .bind(group)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(changes)
                }

                pub(crate) async fn list_group_members(
                    &self,
                ) -> Result<Vec<GroupMemberRow>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, GroupMemberDbRow>(
                            "SELECT group_email, mailbox, first_seen_at, last_seen_at, left_at \
                             FROM group_members ORDER BY group_email, mailbox",
                        )
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn list_review_snapshots(
                    &self,
                ) -> Result<Vec<ReviewSnapshot>, StoreError> {
                    convert(
                        sqlx::query_as::<$db, ReviewSnapshotRow>(
                            "SELECT mailbox, groups, org_unit, reviewed_by, reviewed_at \
                             FROM review_snapshots ORDER BY mailbox",
                        )
                        .fetch_all(&self.pool)
                        .await?,
                    )
                }

                pub(crate) async fn record_review_snapshot(
                    &self,
                    m: &MailboxAddress,
                    groups: &[String],
                    org_unit: Option<&str>,
                    by: &Operator,
                ) -> Result<(), StoreError> {
                    let (_turn, mut tx) = self.begin_write().await?;
                    sqlx::query::<$db>(
                        "INSERT INTO review_snapshots (mailbox, groups, org_unit, reviewed_by, reviewed_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (mailbox) DO UPDATE SET \
                         groups = $2, org_unit = $3, reviewed_by = $4, reviewed_at = $5",
                    )
                    .bind(m.as_str())
                    .bind(json_strings(groups))
                    .bind(clean_opt(org_unit))
                    .bind(clean(by.as_str()))
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use group_statements;
