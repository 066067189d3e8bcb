//! Google Groups: group subscriptions and their expansion into member
//! subscriptions.
//!
//! A group subscription (`subscriptions add-group`) is a standing request:
//! every member the Directory lists (type `USER`, status `ACTIVE`, nested
//! groups expanded, cycles cut) that is not yet subscribed becomes a
//! *pending* subscription with `via_group` recorded, approved mailbox by
//! mailbox under four-eyes like any other. The daemon re-expands every group
//! subscription each `policy.group_recheck_interval`: a new member becomes
//! pending (never active), a member that left is recorded (review flags it)
//! and, with `policy.on_group_leave = "pause"`, its subscription paused.
//!
//! This module never activates a subscription, never reads a mailbox, and
//! never prints; refusals are typed so the CLI exits 2 on bad input.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use crate::config::{OnGroupLeave, Policy, Settings};
use crate::domain::{MailboxAddress, Operator, SubscriptionAction, SubscriptionStatus};
use crate::events;
use crate::google::Google;
use crate::google::directory::GroupsError;
use crate::store::{GroupSubscription, Store, StoreError};
use crate::subscriptions::{SubscriptionError, Subscriptions, validate_request};

/// At most this many groups are expanded for one group subscription.
const MAX_NESTED_GROUPS: usize = 500;

/// The members one expansion found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Active users in an allowed domain, sorted, each once.
    pub members: Vec<MailboxAddress>,
    /// Nested groups expanded (the group itself not included), sorted.
    pub nested: Vec<String>,
    /// Members left out, with why (suspended, outside the allowed domains, …).
    pub skipped: Vec<(String, String)>,
}

/// Why a group request was refused or could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("invalid group address {0:?}")]
    BadGroup(String),
    #[error("unknown group {0}: the Directory has no such group")]
    UnknownGroup(String),
    #[error(
        "cannot read group {0}: scope not granted (authorize {scope} for the client ID in the Admin console)",
        scope = crate::google::DIRECTORY_GROUP_SCOPE
    )]
    ScopeNotGranted(String),
    #[error("group {0} is already subscribed")]
    AlreadySubscribed(String),
    #[error("no group subscription for {0}")]
    NotSubscribed(String),
    #[error("looking up group {group}: {source}")]
    Directory {
        group: String,
        #[source]
        source: crate::google::error::GoogleError,
    },
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GroupError {
    /// True when the request itself was wrong (exit code 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            GroupError::BadGroup(_)
            | GroupError::UnknownGroup(_)
            | GroupError::ScopeNotGranted(_)
            | GroupError::AlreadySubscribed(_)
            | GroupError::NotSubscribed(_) => true,
            GroupError::Subscription(e) => e.is_user_error(),
            GroupError::Directory { .. } | GroupError::Store(_) => false,
        }
    }
}

/// A group address, lower case, parsed like a mailbox address.
pub fn parse_group(s: &str) -> Result<String, GroupError> {
    MailboxAddress::parse(s)
        .map(|m| m.as_str().to_owned())
        .map_err(|_| GroupError::BadGroup(s.to_owned()))
}

fn lookup_error(group: &str, e: GroupsError) -> GroupError {
    match e {
        GroupsError::ScopeNotGranted => GroupError::ScopeNotGranted(group.to_owned()),
        GroupsError::NotFound(_) => GroupError::UnknownGroup(group.to_owned()),
        GroupsError::Google(source) => GroupError::Directory {
            group: group.to_owned(),
            source,
        },
    }
}

/// Expands `group` through the Directory: breadth first over nested groups,
/// each group read once (so a cycle ends), users kept when `ACTIVE` and in
/// an allowed domain. An unknown nested group is skipped; an unknown `group`
/// is [`GroupError::UnknownGroup`].
pub async fn expand(
    google: &Arc<Google>,
    policy: &Policy,
    group: &str,
) -> Result<Expansion, GroupError> {
    let mut seen_groups: HashSet<String> = HashSet::from([group.to_owned()]);
    let mut queue: VecDeque<String> = VecDeque::from([group.to_owned()]);
    let mut members: BTreeSet<MailboxAddress> = BTreeSet::new();
    let mut nested: BTreeSet<String> = BTreeSet::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    while let Some(g) = queue.pop_front() {
        let listed = match google.directory_group_members(&g).await {
            Ok(l) => l,
            Err(GroupsError::NotFound(_)) if g != group => {
                skipped.push((g.clone(), "nested group not found in the Directory".into()));
                continue;
            }
            Err(e) => return Err(lookup_error(group, e)),
        };
        for m in listed {
            match m.kind.as_str() {
                "GROUP" => {
                    if seen_groups.len() >= MAX_NESTED_GROUPS {
                        skipped.push((
                            m.email,
                            format!("more than {MAX_NESTED_GROUPS} nested groups"),
                        ));
                    } else if seen_groups.insert(m.email.clone()) {
                        nested.insert(m.email.clone());
                        queue.push_back(m.email);
                    }
                }
                "USER" if m.status == "ACTIVE" => match MailboxAddress::parse(&m.email) {
                    Ok(addr) if policy.domain_allowed(&addr) => {
                        members.insert(addr);
                    }
                    Ok(_) => skipped.push((m.email, "not in an allowed domain".into())),
                    Err(_) => skipped.push((m.email, "not a valid address".into())),
                },
                "USER" => {
                    let status = if m.status.is_empty() {
                        "unknown"
                    } else {
                        &m.status
                    };
                    skipped.push((m.email, format!("member status {status}, not ACTIVE")));
                }
                other => skipped.push((m.email, format!("member type {other}, not USER"))),
            }
        }
    }
    skipped.sort();
    skipped.dedup();
    Ok(Expansion {
        members: members.into_iter().collect(),
        nested: nested.into_iter().collect(),
        skipped,
    })
}

/// What `add-group` (or one re-expansion) did.
#[derive(Debug, Clone, Default)]
pub struct GroupReport {
    pub group: String,
    pub expansion: Expansion,
    /// Members that became pending subscriptions now.
    pub requested: Vec<MailboxAddress>,
    /// Members already subscribed, with their status (left as they are).
    pub already: Vec<(MailboxAddress, SubscriptionStatus)>,
    /// Members that left the group since the previous expansion.
    pub left: Vec<MailboxAddress>,
    /// Subscriptions paused because their mailbox left (`on_group_leave = "pause"`).
    pub paused: Vec<MailboxAddress>,
}

/// Requests a subscription for each member of `expansion` not yet
/// subscribed (none, or removed), on behalf of the group's requester.
async fn request_members(
    store: &Store,
    policy: &Policy,
    group: &GroupSubscription,
    members: &[MailboxAddress],
    reason: &str,
    report: &mut GroupReport,
) -> Result<(), GroupError> {
    let subs = Subscriptions::new(store, policy);
    for m in members {
        match store.get_subscription(m).await? {
            Some(s) if s.status != SubscriptionStatus::Removed => {
                report.already.push((m.clone(), s.status));
            }
            _ => match subs
                .add_via_group(
                    m.clone(),
                    group.requested_by.clone(),
                    &group.label_filter,
                    group.note.clone(),
                    &group.group_email,
                    reason,
                )
                .await
            {
                Ok(_) => report.requested.push(m.clone()),
                // Subscribed meanwhile by someone else: their request stands.
                Err(SubscriptionError::AlreadySubscribed(_)) => {
                    if let Some(s) = store.get_subscription(m).await? {
                        report.already.push((m.clone(), s.status));
                    }
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(())
}

/// `subscriptions add-group`: validates, expands (nothing is written when
/// the group is unknown or cannot be read), records the group subscription
/// and its members, and requests a pending subscription for each member not
/// yet subscribed.
pub async fn add_group(
    store: &Store,
    google: &Arc<Google>,
    policy: &Policy,
    group: &str,
    by: Operator,
    labels: &[String],
    note: Option<String>,
) -> Result<GroupReport, GroupError> {
    let group = parse_group(group)?;
    let label_filter = validate_request(labels, note.as_deref())?;
    if let Some(g) = store.get_group_subscription(&group).await?
        && g.status != "removed"
    {
        return Err(GroupError::AlreadySubscribed(group));
    }
    let expansion = expand(google, policy, &group).await?;
    let recorded = match store
        .insert_group_subscription(&group, &by, &label_filter, note.as_deref())
        .await
    {
        Ok(g) => g,
        Err(StoreError::Conflict(_)) => return Err(GroupError::AlreadySubscribed(group)),
        Err(e) => return Err(e.into()),
    };
    store
        .record_group_expansion(&group, &expansion.members)
        .await?;
    let mut report = GroupReport {
        group: group.clone(),
        ..GroupReport::default()
    };
    let reason = format!("member of group {group} (subscriptions add-group by {by})");
    request_members(
        store,
        policy,
        &recorded,
        &expansion.members,
        &reason,
        &mut report,
    )
    .await?;
    report.expansion = expansion;
    Ok(report)
}

/// `subscriptions remove-group`: ends the group subscription; the member
/// subscriptions stay as they are.
pub async fn remove_group(
    store: &Store,
    group: &str,
    by: Operator,
) -> Result<GroupSubscription, GroupError> {
    let group = parse_group(group)?;
    match store.remove_group_subscription(&group, &by).await {
        Ok(g) => Ok(g),
        Err(StoreError::NotFound(_)) => Err(GroupError::NotSubscribed(group)),
        Err(e) => Err(e.into()),
    }
}

/// The pending subscriptions requested through `group` and whether each
/// mailbox is still a member (`approve --group`); an unknown group
/// subscription is [`GroupError::NotSubscribed`].
pub async fn pending_members(
    store: &Store,
    group: &str,
) -> Result<Vec<(MailboxAddress, bool)>, GroupError> {
    let group = parse_group(group)?;
    match store.get_group_subscription(&group).await? {
        Some(g) if g.status == "active" => {}
        _ => return Err(GroupError::NotSubscribed(group)),
    }
    let members = store.list_group_members().await?;
    Ok(store
        .list_subscriptions()
        .await?
        .into_iter()
        .filter(|s| {
            s.status == SubscriptionStatus::Pending && s.via_group.as_deref() == Some(&group)
        })
        .map(|s| {
            let still = members
                .iter()
                .any(|m| m.group_email == group && m.mailbox == s.mailbox && m.left_at.is_none());
            (s.mailbox, still)
        })
        .collect())
}

/// One re-expansion of one group subscription (the daemon's job): new
/// members become pending, members that left are recorded, audited, and
/// paused when `policy.on_group_leave = "pause"`.
pub async fn reexpand(
    store: &Store,
    google: &Arc<Google>,
    settings: &Settings,
    policy: &Policy,
    group: &GroupSubscription,
) -> Result<GroupReport, GroupError> {
    let name = group.group_email.as_str();
    let expansion = expand(google, policy, name).await?;
    let changes = store
        .record_group_expansion(name, &expansion.members)
        .await?;
    let mut report = GroupReport {
        group: name.to_owned(),
        ..GroupReport::default()
    };
    let reason = format!(
        "member of group {name}; found by the daemon's re-expansion of the group subscription {} requested",
        group.requested_by
    );
    request_members(store, policy, group, &changes.joined, &reason, &mut report).await?;
    for m in &report.requested {
        events::GroupMemberJoined {
            group: name,
            mailbox: m,
        }
        .emit();
    }
    let subs = Subscriptions::new(store, policy);
    let pause = settings.policy.on_group_leave == OnGroupLeave::Pause;
    for m in &changes.left {
        let sub = store.get_subscription(m).await?;
        let mut paused = false;
        if let Some(sub) = sub.filter(|s| {
            s.via_group.as_deref() == Some(name) && s.status != SubscriptionStatus::Removed
        }) {
            let why = format!("left group {name}, through which it was subscribed");
            let result = if pause && sub.status.apply(SubscriptionAction::Pause).is_some() {
                paused = true;
                subs.transition(
                    m,
                    Operator::system(),
                    SubscriptionAction::Pause,
                    Some(format!("{why} (policy.on_group_leave = \"pause\")")),
                )
                .await
            } else {
                subs.note_event(&sub, Operator::system(), "group_left", why)
                    .await
            };
            match result {
                Ok(_) => {}
                // An operator changed it meanwhile: their decision stands.
                Err(SubscriptionError::IllegalTransition { .. }) => paused = false,
                Err(e) => return Err(e.into()),
            }
            if paused {
                google.forget(m);
                report.paused.push(m.clone());
            }
        }
        events::GroupMemberLeft {
            group: name,
            mailbox: m,
            paused,
        }
        .emit();
    }
    report.left = changes.left;
    report.expansion = expansion;
    Ok(report)
}

/// Re-expands every active group subscription; one group's failure does not
/// stop the others. Returns each group's outcome.
pub async fn reexpand_all(
    store: &Store,
    google: &Arc<Google>,
    settings: &Settings,
    policy: &Policy,
) -> anyhow::Result<Vec<(String, Result<GroupReport, GroupError>)>> {
    let groups = store.list_group_subscriptions().await?;
    let mut out = Vec::new();
    for g in groups.into_iter().filter(|g| g.status == "active") {
        let r = reexpand(store, google, settings, policy, &g).await;
        if let Err(e) = &r {
            tracing::warn!(group = %g.group_email, error = %e, "Group re-expansion failed; retrying at the next interval.");
        }
        out.push((g.group_email, r));
    }
    Ok(out)
}
