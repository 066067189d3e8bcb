//! The command line: clap types and one function per command.
//!
//! Commands parse raw strings into domain types, call the library and hand
//! results to `output`; they hold no SQL and make no Google calls of their
//! own. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::app::{self, UsageError, open_migrated_store, open_store};
use crate::config::Settings;
use crate::domain::{MailboxAddress, Operator, SubscriptionAction, SubscriptionStatus};
use crate::output::{self, Format};
use crate::store::Store;
use crate::subscriptions::Subscriptions;

#[derive(Debug, Parser)]
#[command(
    name = "gmail-ingest",
    version,
    about = "Copies Google Workspace mailboxes into SQL."
)]
pub struct Cli {
    /// Configuration file layered over config/default.toml and config/$GMAIL_INGEST_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding default.toml and the per-environment files.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "GMAIL_INGEST_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: poll, sync, serve /healthz /readyz /metrics until SIGTERM.
    Run,
    /// Apply pending database migrations.
    Migrate,
    /// One pass over approved subscriptions (or one), then exit.
    Sync(SyncArgs),
    /// Manage which mailboxes are ingested.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Per-mailbox sync state, lag and last error.
    Status(FormatArg),
    /// Preflight: config, key file, DB, token + profile + org unit for every
    /// subscription (mailboxes that are not active get no token and no Gmail call).
    Check(CheckArgs),
    /// Serve the local Google emulator (tests, benchmarks, demo).
    Emulator(EmulatorArgs),
    /// Emulator + SQLite + one sync: shows what gets ingested.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only this subscription.
    #[arg(long, value_name = "EMAIL")]
    pub mailbox: Option<String>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only this mailbox.
    #[arg(long, value_name = "EMAIL")]
    pub mailbox: Option<String>,
    /// Reconciliation full sync even when history is available.
    #[arg(long)]
    pub full: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct FormatArg {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// Request a subscription (status pending).
    Add {
        email: String,
        /// Only ingest messages carrying one of these labels (comma-separated
        /// names or IDs; resolved to IDs when the subscription is approved).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long)]
        note: Option<String>,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
        /// How the mailbox is authorized: domain-wide delegation, or its
        /// owner's OAuth consent (send them `subscriptions authorize-link`).
        #[arg(long, value_enum, default_value_t = AuthModeArg::Delegated)]
        auth_mode: AuthModeArg,
    },
    /// Approve a pending subscription (active); --group approves every
    /// pending member a group subscription requested, each on its own.
    Approve {
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        email: Option<String>,
        /// Approve the pending members of this group subscription.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Subscribe a Google Group: each active member not yet subscribed
    /// becomes a pending subscription (nested groups expanded); the daemon
    /// re-expands it every policy.group_recheck_interval.
    AddGroup {
        group: String,
        /// Labels for each member's subscription (comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long)]
        note: Option<String>,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// End a group subscription; its members' subscriptions stay as they are.
    RemoveGroup {
        group: String,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
    },
    /// Stop ingesting for now.
    Pause {
        email: String,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
    },
    /// Resume a paused subscription.
    Resume {
        email: String,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
    },
    /// Remove a subscription; --purge also deletes its ingested mail.
    Remove {
        email: String,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
        #[arg(long)]
        purge: bool,
    },
    /// Revoke an OAuth mailbox's consent at Google, delete its token and
    /// pause it; --purge also deletes its ingested mail.
    Disconnect {
        email: String,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
        #[arg(long)]
        purge: bool,
    },
    /// Print the consent link to send an OAuth mailbox's owner, and the
    /// signed link with which they can withdraw the consent stored now.
    AuthorizeLink { email: String },
    /// Change which labels are ingested: back to pending, for another
    /// operator's approval (four-eyes).
    Relabel {
        email: String,
        /// Keep only messages carrying one of these labels (comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Option<Vec<String>>,
        /// Ingest the whole mailbox again (no label filter).
        #[arg(long)]
        all_mail: bool,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
    },
    /// Switch how the mailbox is authorized: back to pending, for another
    /// operator's approval (four-eyes). `oauth` needs its owner's stored consent.
    SetAuth {
        email: String,
        #[arg(value_enum)]
        mode: AuthModeArg,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
    },
    /// Revoke at Google and delete the consent stored for a mailbox, so that
    /// a consent of another Google account with its address may replace it.
    ForgetConsent {
        email: String,
        #[arg(long, value_name = "OPERATOR")]
        by: String,
    },
    /// List subscriptions.
    List(FormatArg),
    /// What needs an operator's eyes; --mark-reviewed records a review.
    Review {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(long, requires = "by")]
        mark_reviewed: bool,
        #[arg(long, value_name = "OPERATOR")]
        by: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthModeArg {
    Delegated,
    Oauth,
}

impl From<AuthModeArg> for crate::domain::AuthMode {
    fn from(a: AuthModeArg) -> Self {
        match a {
            AuthModeArg::Delegated => crate::domain::AuthMode::Delegated,
            AuthModeArg::Oauth => crate::domain::AuthMode::OAuth,
        }
    }
}

/// The `emulator` command's flags are the emulator crate's, shared with its own binary.
#[cfg(feature = "emulator")]
pub use gmail_emulator::EmulatorArgs;

/// Without the `emulator` feature the command remains and refuses whatever it is given.
#[cfg(not(feature = "emulator"))]
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    _ignored: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to keep the SQLite file and key (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Messages per generated mailbox.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.to_string()))
}

/// Maps an error to the process exit code.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<UsageError>().is_some()
            || cause.downcast_ref::<crate::domain::ParseError>().is_some()
        {
            return 2;
        }
        if let Some(s) = cause.downcast_ref::<crate::subscriptions::SubscriptionError>() {
            return if s.is_user_error() { 2 } else { 1 };
        }
        if let Some(crate::store::StoreError::InvalidUrl(_)) =
            cause.downcast_ref::<crate::store::StoreError>()
        {
            return 2;
        }
    }
    1
}

fn mailbox(s: &str) -> anyhow::Result<MailboxAddress> {
    MailboxAddress::parse(s).map_err(usage)
}

fn operator(s: &str) -> anyhow::Result<Operator> {
    Operator::parse(s).map_err(usage)
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// Runs a parsed command. `shutdown` resolves on SIGTERM/SIGINT.
pub async fn run(
    cli: Cli,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run => app::run_daemon(settings, shutdown).await.map(|()| 0),
        Command::Migrate => {
            let store = open_store(&settings).await?;
            let pending = store.pending_migrations().await?;
            store.migrate().await.context("applying migrations")?;
            output::line(format!(
                "{pending} migration(s) applied; {} schema is up to date",
                store.backend()
            ));
            Ok(0)
        }
        Command::Sync(args) => sync(settings, args, shutdown).await,
        Command::Subscriptions(cmd) => subscriptions(settings, cmd).await,
        Command::Status(f) => status(settings, f.format).await,
        Command::Check(args) => {
            let only = args.mailbox.as_deref().map(mailbox).transpose()?;
            app::check(&settings, only.as_ref()).await
        }
        Command::Emulator(args) => emulator(args, shutdown).await,
        Command::Demo(args) => demo(settings, args).await,
    }
}

#[cfg(feature = "emulator")]
async fn emulator(
    args: EmulatorArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u8> {
    crate::domain::Domain::parse(&args.domain).map_err(usage)?;
    gmail_emulator::run_command(args, shutdown).await?;
    Ok(0)
}

#[cfg(not(feature = "emulator"))]
async fn emulator(_: EmulatorArgs, _: impl Future<Output = ()>) -> anyhow::Result<u8> {
    Err(usage(
        "this build has no emulator (cargo feature `emulator`)",
    ))
}

#[cfg(feature = "emulator")]
async fn demo(settings: Settings, args: DemoArgs) -> anyhow::Result<u8> {
    let options = crate::demo::DemoOptions {
        dir: args.dir,
        messages: args.messages,
        seed: args.seed,
    };
    crate::demo::run(settings, options).await.map(|()| 0)
}

#[cfg(not(feature = "emulator"))]
async fn demo(_: Settings, _: DemoArgs) -> anyhow::Result<u8> {
    Err(usage(
        "this build has no emulator (cargo feature `emulator`) and so no demo",
    ))
}

/// The OAuth service for the `disconnect` and `authorize-link` commands.
fn oauth_service(
    settings: &Settings,
    store: &Store,
    policy: &crate::config::Policy,
) -> anyhow::Result<Arc<crate::oauth::OAuthService>> {
    crate::oauth::OAuthService::from_settings(settings, store.clone(), Arc::new(policy.clone()))?
        .ok_or_else(|| usage("oauth.enabled is false: per-mailbox consent is not configured"))
}

/// `relabel`'s flags: exactly one of `--labels` (naming at least one label)
/// and `--all-mail`.
fn label_change(
    labels: Option<&[String]>,
    all_mail: bool,
) -> anyhow::Result<crate::subscriptions::Change> {
    let named = labels.filter(|l| l.iter().any(|x| !x.trim().is_empty()));
    match (named, all_mail, labels.is_some()) {
        (Some(l), false, _) => Ok(crate::subscriptions::Change::Labels(Some(l.to_vec()))),
        (None, true, false) => Ok(crate::subscriptions::Change::Labels(None)),
        _ => Err(usage(
            "relabel needs exactly one of --labels or --all-mail (with --labels naming at least one label)",
        )),
    }
}

/// Refusals of `disconnect` and `forget-consent` that are bad input (exit 2).
fn disconnect_error(e: crate::oauth::DisconnectError) -> anyhow::Error {
    use crate::oauth::DisconnectError as D;
    match e {
        D::NotFound(_) | D::NotOAuth(_) | D::NoConsent(_) | D::Superseded(_) => {
            usage(e.to_string())
        }
        other => anyhow::Error::new(other),
    }
}

async fn subscriptions(settings: Settings, cmd: SubscriptionsCommand) -> anyhow::Result<u8> {
    let policy = settings.policy()?;
    // Parse before touching the database: bad input changes nothing.
    match &cmd {
        SubscriptionsCommand::Approve {
            email: Some(email),
            by,
            ..
        } => {
            mailbox(email)?;
            operator(by)?;
        }
        SubscriptionsCommand::Approve {
            group: Some(group),
            by,
            ..
        }
        | SubscriptionsCommand::AddGroup { group, by, .. }
        | SubscriptionsCommand::RemoveGroup { group, by } => {
            crate::groups::parse_group(group).map_err(app::group_error)?;
            operator(by)?;
        }
        SubscriptionsCommand::Add { email, by, .. }
        | SubscriptionsCommand::Pause { email, by }
        | SubscriptionsCommand::Resume { email, by }
        | SubscriptionsCommand::Remove { email, by, .. }
        | SubscriptionsCommand::Disconnect { email, by, .. }
        | SubscriptionsCommand::SetAuth { email, by, .. }
        | SubscriptionsCommand::ForgetConsent { email, by } => {
            mailbox(email)?;
            operator(by)?;
        }
        SubscriptionsCommand::Relabel {
            email,
            by,
            labels,
            all_mail,
        } => {
            mailbox(email)?;
            operator(by)?;
            label_change(labels.as_deref(), *all_mail)?;
        }
        SubscriptionsCommand::AuthorizeLink { email } => {
            mailbox(email)?;
        }
        SubscriptionsCommand::Review { by: Some(by), .. } => {
            operator(by)?;
        }
        _ => {}
    }
    let store = open_migrated_store(&settings).await?;
    let subs = Subscriptions::new(&store, &policy);
    match cmd {
        SubscriptionsCommand::Add {
            email,
            labels,
            note,
            by,
            auth_mode,
        } => {
            let s = subs
                .add(
                    mailbox(&email)?,
                    operator(&by)?,
                    &labels,
                    note,
                    auth_mode.into(),
                )
                .await?;
            output::line(format!(
                "{} is {} (requested by {}, auth mode {})",
                s.mailbox, s.status, s.requested_by, s.auth_mode
            ));
        }
        SubscriptionsCommand::Disconnect { email, by, purge } => {
            let m = mailbox(&email)?;
            let by = operator(&by)?;
            let oauth = oauth_service(&settings, &store, &policy)?;
            let done = oauth
                .disconnect(&m, &by, None, purge)
                .await
                .map_err(disconnect_error)?;
            let revoked = if done.revoked {
                "consent revoked at Google and the token deleted"
            } else {
                "no token was stored"
            };
            match done.purged {
                Some(c) => output::line(format!(
                    "{} is {}; {revoked}; purged {} messages",
                    done.subscription.mailbox, done.subscription.status, c.messages
                )),
                None => output::line(format!(
                    "{} is {}; {revoked}; its ingested mail is kept (use --purge to delete it)",
                    done.subscription.mailbox, done.subscription.status
                )),
            }
        }
        SubscriptionsCommand::AuthorizeLink { email } => {
            let m = mailbox(&email)?;
            let oauth = oauth_service(&settings, &store, &policy)?;
            output::line(format!("authorize:  {}", oauth.authorize_link(&m)));
            match oauth.current_disconnect_link(&m).await? {
                Some(link) => output::line(format!("disconnect: {link}")),
                None => output::line(
                    "disconnect: none yet (no consent stored; the owner gets the link after consenting)",
                ),
            }
        }
        SubscriptionsCommand::Relabel {
            email,
            labels,
            all_mail,
            by,
        } => {
            let change = label_change(labels.as_deref(), all_mail)?;
            let s = subs
                .request_change(&mailbox(&email)?, operator(&by)?, change)
                .await?;
            let labels = if s.label_filter.is_empty() {
                "all mail".to_owned()
            } else {
                format!("labels {}", s.label_filter.join(","))
            };
            output::line(format!(
                "{} is {} ({labels} requested by {}; another operator must approve it)",
                s.mailbox, s.status, s.requested_by
            ));
        }
        SubscriptionsCommand::SetAuth { email, mode, by } => {
            let s = subs
                .request_change(
                    &mailbox(&email)?,
                    operator(&by)?,
                    crate::subscriptions::Change::AuthMode(mode.into()),
                )
                .await?;
            output::line(format!(
                "{} is {} (auth mode {} requested by {}; another operator must approve it)",
                s.mailbox, s.status, s.auth_mode, s.requested_by
            ));
        }
        SubscriptionsCommand::ForgetConsent { email, by } => {
            let m = mailbox(&email)?;
            let by = operator(&by)?;
            let oauth = oauth_service(&settings, &store, &policy)?;
            let s = oauth
                .forget_consent(&m, &by)
                .await
                .map_err(disconnect_error)?;
            output::line(format!(
                "{}: the stored consent was revoked at Google and deleted; the subscription is {} (auth mode {})",
                s.mailbox, s.status, s.auth_mode
            ));
        }
        SubscriptionsCommand::Approve {
            email,
            group,
            by,
            format,
        } => {
            let by = operator(&by)?;
            if let Some(group) = group {
                return approve_group(&settings, &policy, &store, &group, by, format).await;
            }
            let m = mailbox(email.as_deref().unwrap_or_default())?;
            let done = app::approve_one(&settings, &store, &policy, &m, by.clone()).await?;
            if let Some(w) = &done.warning {
                output::notice(format!("warning: {w}"));
            }
            let s = done.subscription;
            let scope = match s.label_scope.as_deref() {
                None | Some([]) => String::new(),
                Some(ids) => format!("; label scope: {}", ids.join(", ")),
            };
            output::line(format!(
                "{} is {} (approved by {by}{scope})",
                s.mailbox, s.status
            ));
            if done.readable {
                print_backfill_estimate(&settings, &store, &policy, &s).await;
            }
        }
        SubscriptionsCommand::AddGroup {
            group,
            labels,
            note,
            by,
            format,
        } => {
            let google = app::directory_client(&settings).map_err(|why| {
                usage(format!(
                    "cannot expand group {group}: the Directory cannot be asked ({why})"
                ))
            })?;
            let report = crate::groups::add_group(
                &store,
                &google,
                &policy,
                &group,
                operator(&by)?,
                &labels,
                note,
            )
            .await
            .map_err(app::group_error)?;
            print_group_report(&report, format);
        }
        SubscriptionsCommand::RemoveGroup { group, by } => {
            let g = crate::groups::remove_group(&store, &group, operator(&by)?)
                .await
                .map_err(app::group_error)?;
            output::line(format!(
                "group subscription {} is removed; its members' subscriptions stay as they are (pause or remove them one by one)",
                g.group_email
            ));
        }
        SubscriptionsCommand::Pause { email, by } => {
            let s = subs
                .transition(
                    &mailbox(&email)?,
                    operator(&by)?,
                    SubscriptionAction::Pause,
                    None,
                )
                .await?;
            output::line(format!("{} is {}", s.mailbox, s.status));
        }
        SubscriptionsCommand::Resume { email, by } => {
            let s = subs
                .transition(
                    &mailbox(&email)?,
                    operator(&by)?,
                    SubscriptionAction::Resume,
                    None,
                )
                .await?;
            output::line(format!("{} is {}", s.mailbox, s.status));
        }
        SubscriptionsCommand::Remove { email, by, purge } => {
            let (s, counts) = subs
                .remove(&mailbox(&email)?, operator(&by)?, purge)
                .await?;
            match counts {
                Some(c) => output::line(format!(
                    "{} is {}; purged {} messages ({} addresses, {} labels, {} attachments, {} change rows, {} sync runs)",
                    s.mailbox,
                    s.status,
                    c.messages,
                    c.message_addresses,
                    c.message_labels,
                    c.attachments,
                    c.message_changes,
                    c.sync_runs
                )),
                None => output::line(format!(
                    "{} is {}; its ingested mail is kept (use --purge to delete it)",
                    s.mailbox, s.status
                )),
            }
        }
        SubscriptionsCommand::List(f) => {
            let list = store.list_subscriptions().await?;
            match f.format {
                Format::Json => output::json(&list),
                Format::Table => output::table(
                    &[
                        "MAILBOX",
                        "STATUS",
                        "AUTH",
                        "REQUESTED BY",
                        "APPROVED BY",
                        "LAST REVIEW",
                        "ORG UNIT",
                        "LABELS",
                        "NOTE",
                    ],
                    &list
                        .iter()
                        .map(|s| {
                            vec![
                                s.mailbox.to_string(),
                                s.status.to_string(),
                                s.auth_mode.to_string(),
                                s.requested_by.to_string(),
                                s.approved_by
                                    .as_ref()
                                    .map_or("-".to_owned(), ToString::to_string),
                                fmt_time(s.last_reviewed_at),
                                s.org_unit_seen.clone().unwrap_or_else(|| "-".to_owned()),
                                match (&s.label_scope, s.label_filter.is_empty()) {
                                    (_, true) => "-".to_owned(),
                                    // Resolved at approval: the IDs when they differ.
                                    (Some(ids), false) if *ids != s.label_filter => {
                                        format!("{} ({})", s.label_filter.join(","), ids.join(","))
                                    }
                                    _ => s.label_filter.join(","),
                                },
                                s.note.clone().unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        SubscriptionsCommand::Review {
            format,
            mark_reviewed,
            by,
        } => {
            let directory = match app::directory_client(&settings) {
                Ok(google) => Ok(app::directory_view(&google, &store).await?),
                Err(why) => Err(why),
            };
            let view = directory.as_ref().ok();
            if mark_reviewed {
                let by = operator(by.as_deref().unwrap_or_default())?;
                let (n, snapshots) = subs.mark_reviewed(by.clone(), view).await?;
                output::line(format!("recorded a review of {n} subscription(s) by {by}"));
                match (&directory, view.and_then(|v| v.groups_unknown.as_deref())) {
                    (Err(why), _) => output::line(format!(
                        "group memberships not recorded: the Directory was not asked ({why})"
                    )),
                    (Ok(_), Some(why)) => output::line(format!(
                        "group memberships unknown: {why}; the previous snapshot is kept"
                    )),
                    (Ok(_), None) => output::line(format!(
                        "recorded the group memberships of {snapshots} mailbox(es) as reviewed"
                    )),
                }
                return Ok(0);
            }
            let items = subs
                .review_with(Utc::now(), settings.sync.history_window_alert, view)
                .await?;
            if format == Format::Table {
                match &directory {
                    Err(why) => output::line(format!("the Directory was not asked ({why})")),
                    Ok(v) => {
                        if let Some(why) = &v.groups_unknown {
                            output::line(format!("group memberships unknown: {why}"));
                        }
                    }
                }
            }
            match format {
                Format::Json => output::json(&items),
                Format::Table if items.is_empty() => output::line("nothing needs review"),
                Format::Table => output::table(
                    &["MAILBOX", "STATUS", "LAST REVIEW", "NEEDS"],
                    &items
                        .iter()
                        .map(|i| {
                            vec![
                                i.mailbox.to_string(),
                                i.status.to_string(),
                                fmt_time(i.last_reviewed_at),
                                i.issues.join("; "),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
    }
    Ok(0)
}

async fn approve_group(
    settings: &Settings,
    policy: &crate::config::Policy,
    store: &Store,
    group: &str,
    by: Operator,
    format: Format,
) -> anyhow::Result<u8> {
    let results = app::approve_group(settings, policy, store, group, by).await?;
    let refused: Vec<String> = results
        .iter()
        .filter(|r| r.result == "refused")
        .map(|r| r.mailbox.to_string())
        .collect();
    match format {
        Format::Json => output::json(&results),
        Format::Table if results.is_empty() => {
            output::line(format!(
                "no pending subscription was requested through {group}"
            ));
        }
        Format::Table => output::table(
            &["MAILBOX", "RESULT", "STATUS", "REASON"],
            &results
                .iter()
                .map(|r| {
                    vec![
                        r.mailbox.to_string(),
                        r.result.to_owned(),
                        r.status.map_or("-".to_owned(), |s| s.to_string()),
                        r.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    if !refused.is_empty() {
        output::error(format!(
            "{} of {} refused: {}",
            refused.len(),
            results.len(),
            refused.join(", ")
        ));
        return Ok(2);
    }
    Ok(0)
}

#[derive(Serialize)]
struct GroupReportView<'a> {
    group: &'a str,
    requested: &'a [MailboxAddress],
    already_subscribed: Vec<serde_json::Value>,
    nested_groups: &'a [String],
    skipped: Vec<serde_json::Value>,
}

fn print_group_report(r: &crate::groups::GroupReport, format: Format) {
    match format {
        Format::Json => output::json(&GroupReportView {
            group: &r.group,
            requested: &r.requested,
            already_subscribed: r
                .already
                .iter()
                .map(|(m, s)| serde_json::json!({"mailbox": m, "status": s}))
                .collect(),
            nested_groups: &r.expansion.nested,
            skipped: r
                .expansion
                .skipped
                .iter()
                .map(|(e, why)| serde_json::json!({"email": e, "reason": why}))
                .collect(),
        }),
        Format::Table => {
            output::line(format!(
                "group {} subscribed: {} member(s) pending approval, {} already subscribed, {} skipped{}",
                r.group,
                r.requested.len(),
                r.already.len(),
                r.expansion.skipped.len(),
                if r.expansion.nested.is_empty() {
                    String::new()
                } else {
                    format!(" (nested groups: {})", r.expansion.nested.join(", "))
                }
            ));
            let mut rows: Vec<Vec<String>> = r
                .requested
                .iter()
                .map(|m| {
                    vec![
                        m.to_string(),
                        "pending".to_owned(),
                        "requested now".to_owned(),
                    ]
                })
                .collect();
            rows.extend(r.already.iter().map(|(m, s)| {
                vec![
                    m.to_string(),
                    s.to_string(),
                    "already subscribed: left as it is".to_owned(),
                ]
            }));
            rows.extend(
                r.expansion
                    .skipped
                    .iter()
                    .map(|(e, why)| vec![e.clone(), "-".to_owned(), format!("skipped: {why}")]),
            );
            if !rows.is_empty() {
                output::table(&["MEMBER", "STATUS", "NOTE"], &rows);
            }
            if !r.requested.is_empty() {
                output::line(format!(
                    "approve them with: gmail-ingest subscriptions approve --group {} --by OPERATOR",
                    r.group
                ));
            }
        }
    }
}

/// What approving the mailbox commits the project's quota to. The
/// approval stands whatever this says: a profile that cannot be read is
/// reported, not an error.
async fn print_backfill_estimate(
    settings: &Settings,
    store: &Store,
    policy: &crate::config::Policy,
    sub: &crate::store::Subscription,
) {
    match app::backfill_estimate(settings, store, policy, sub).await {
        Ok(e) => {
            let share = if e.share_of_remaining.is_finite() {
                format!("{:.1} %", e.share_of_remaining * 100.0)
            } else {
                "more than all".to_owned()
            };
            output::line(format!(
                "estimated backfill: {} messages x {} units = {} units; {} at the per-mailbox ceiling of {} units/min; {share} of the {} units left in today's project budget (resets {})",
                e.messages,
                settings.sync.method_costs.messages_get,
                e.units,
                humantime::format_duration(std::time::Duration::from_secs(
                    (e.minutes_at_ceiling * 60.0).ceil() as u64
                )),
                settings.sync.user_quota_units_per_minute,
                e.remaining_today,
                e.reset_at.format("%Y-%m-%d %H:%M UTC"),
            ));
        }
        Err(e) => output::line(format!(
            "estimated backfill: unknown (the mailbox's profile could not be read: {e:#})"
        )),
    }
}

/// The project's daily quota for `status`.
#[derive(Serialize)]
struct QuotaHeader {
    /// The Pacific day the quota counts (Google resets it at its midnight).
    day: chrono::NaiveDate,
    used_units: i64,
    budget_units: i64,
    /// Kept for incremental passes: backfills wait below it.
    reserve_units: i64,
    rate_units_per_hour: f64,
    /// When the budget runs out at today's rate; null: not today.
    exhaustion_at: Option<DateTime<Utc>>,
    next_reset_at: DateTime<Utc>,
}

/// A full sync in progress, for `status`.
#[derive(Serialize)]
struct BackfillView {
    started_at: DateTime<Utc>,
    listed: i64,
    fetched: i64,
    /// The profile's messagesTotal when the listing began.
    estimated_total: i64,
    /// Messages listed per second since the listing began (waits included).
    rate_per_second: f64,
    eta: Option<DateTime<Utc>>,
}

impl BackfillView {
    fn new(p: &crate::store::FullSyncProgress, now: DateTime<Utc>) -> BackfillView {
        let secs = (now - p.started_at).num_milliseconds().max(1) as f64 / 1000.0;
        let rate = p.listed as f64 / secs;
        let left = (p.estimated_total - p.listed).max(0) as f64;
        BackfillView {
            started_at: p.started_at,
            listed: p.listed,
            fetched: p.fetched,
            estimated_total: p.estimated_total,
            rate_per_second: rate,
            eta: (rate > 0.0)
                .then(|| now + chrono::TimeDelta::milliseconds((left / rate * 1000.0) as i64)),
        }
    }

    fn cell(&self) -> String {
        let eta = self.eta.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M UTC").to_string()
        });
        format!(
            "{}/{} listed, {} fetched, {:.1}/s, ETA {eta}",
            self.listed, self.estimated_total, self.fetched, self.rate_per_second
        )
    }
}

#[derive(Serialize)]
struct StatusRow {
    mailbox: String,
    subscription: SubscriptionStatus,
    phase: Option<String>,
    last_success_at: Option<DateTime<Utc>>,
    lag_seconds: Option<i64>,
    messages: i64,
    history_id: Option<String>,
    consecutive_failures: i64,
    last_error: Option<String>,
    /// The full sync (or resync) in progress.
    full_sync: Option<BackfillView>,
    /// Set while the backfill waits for the daily budget.
    quota_wait: Option<crate::store::QuotaWait>,
    /// Passes that found nothing to change (they write no `sync_runs` row).
    quiet_passes: i64,
    last_quiet_at: Option<DateTime<Utc>>,
    /// The Gmail push watch.
    watch: WatchView,
}

/// A mailbox's push watch as `status` shows it.
#[derive(Serialize)]
struct WatchView {
    /// `live`, `lapsed`, `failed` or `none`.
    state: crate::store::WatchState,
    expires_at: Option<DateTime<Utc>>,
    /// Why the last `users.watch` or `users.stop` failed.
    error: Option<String>,
    failed_at: Option<DateTime<Utc>>,
}

impl WatchView {
    fn new(s: &crate::store::MailboxStatus, now: DateTime<Utc>) -> WatchView {
        WatchView {
            state: crate::store::WatchState::of(s.watch_expires_at, s.watch_error.as_deref(), now),
            expires_at: s.watch_expires_at,
            error: s.watch_error.clone(),
            failed_at: s.watch_failed_at,
        }
    }

    /// The WATCH cell: `until <time>`, `lapsed <time>`, `failed: <why>` or `-`.
    fn cell(&self) -> String {
        use crate::store::WatchState;
        match (self.state, &self.error) {
            (WatchState::Failed, Some(e)) => format!("failed: {e}"),
            (WatchState::Live, _) => format!("until {}", fmt_time(self.expires_at)),
            (WatchState::Lapsed, _) => format!("lapsed {}", fmt_time(self.expires_at)),
            _ => "-".to_owned(),
        }
    }
}

#[derive(Serialize)]
struct StatusReport {
    integration_enabled: bool,
    quota: QuotaHeader,
    mailboxes: Vec<StatusRow>,
}

async fn status(settings: Settings, format: Format) -> anyhow::Result<u8> {
    let store = open_migrated_store(&settings).await?;
    let now = Utc::now();
    let rows: Vec<StatusRow> = store
        .mailbox_statuses()
        .await?
        .into_iter()
        .map(|s| StatusRow {
            watch: WatchView::new(&s, now),
            mailbox: s.mailbox.to_string(),
            subscription: s.status,
            phase: s.phase.map(|p| p.to_string()),
            last_success_at: s.last_success_at,
            lag_seconds: s.last_success_at.map(|t| (now - t).num_seconds()),
            messages: s.messages,
            history_id: s.history_id.map(|h| h.to_string()),
            consecutive_failures: s.consecutive_failures,
            last_error: s.last_error,
            full_sync: s.full_sync.as_ref().map(|p| BackfillView::new(p, now)),
            quota_wait: s.quota_wait.filter(|w| w.until > now),
            quiet_passes: s.quiet_passes,
            last_quiet_at: s.last_quiet_at,
        })
        .collect();
    let plan = app::daily_plan(&settings, &store).await?;
    let report = StatusReport {
        integration_enabled: settings.integration.enabled,
        quota: QuotaHeader {
            day: plan.day,
            used_units: plan.used,
            budget_units: plan.budget,
            reserve_units: plan.reserve,
            rate_units_per_hour: plan.rate_per_second * 3600.0,
            exhaustion_at: plan.exhaustion_at,
            next_reset_at: plan.reset_at,
        },
        mailboxes: rows,
    };
    match format {
        Format::Json => output::json(&report),
        Format::Table => {
            if !report.integration_enabled {
                output::line("integration.enabled = false: the daemon ingests nothing");
            }
            let q = &report.quota;
            let runs_out = match q.exhaustion_at {
                Some(t) => format!("runs out at {} UTC at today's rate", fmt_time(Some(t))),
                None => "runs out: not today".to_owned(),
            };
            output::line(format!(
                "daily quota: {} of {} units used today (Pacific day {}, {:.0} units/h); {runs_out}; next reset {} UTC (midnight America/Los_Angeles); {} units kept for incremental passes",
                q.used_units,
                q.budget_units,
                q.day,
                q.rate_units_per_hour,
                fmt_time(Some(q.next_reset_at)),
                q.reserve_units,
            ));
            output::table(
                &[
                    "MAILBOX",
                    "SUBSCRIPTION",
                    "PHASE",
                    "LAST SUCCESS",
                    "LAG",
                    "MESSAGES",
                    "QUIET PASSES",
                    "FAILURES",
                    "LAST ERROR",
                    "WATCH",
                    "BACKFILL",
                ],
                &report
                    .mailboxes
                    .iter()
                    .map(|r| {
                        vec![
                            r.mailbox.clone(),
                            r.subscription.to_string(),
                            r.phase.clone().unwrap_or_else(|| "-".to_owned()),
                            fmt_time(r.last_success_at),
                            r.lag_seconds.map_or("-".to_owned(), |s| {
                                humantime::format_duration(std::time::Duration::from_secs(
                                    s.max(0) as u64
                                ))
                                .to_string()
                            }),
                            r.messages.to_string(),
                            r.quiet_passes.to_string(),
                            r.consecutive_failures.to_string(),
                            r.last_error.clone().unwrap_or_default(),
                            r.watch.cell(),
                            backfill_cell(r),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(0)
}

/// The BACKFILL cell: the listing's progress, and why it waits if it does.
fn backfill_cell(r: &StatusRow) -> String {
    let progress = r.full_sync.as_ref().map(BackfillView::cell);
    let wait = r.quota_wait.as_ref().map(|w| {
        format!(
            "waits for the daily quota until {} UTC: {}",
            fmt_time(Some(w.until)),
            w.reason
        )
    });
    match (progress, wait) {
        (Some(p), Some(w)) => format!("{p}; {w}"),
        (Some(p), None) => p,
        (None, Some(w)) => w,
        (None, None) => String::new(),
    }
}

async fn sync(
    settings: Settings,
    args: SyncArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u8> {
    let only = args.mailbox.as_deref().map(mailbox).transpose()?;
    let settings = Arc::new(settings);
    let show_progress = args.format == Format::Table && output::is_terminal();
    let reports = app::sync_once(settings, only, args.full, show_progress, shutdown).await?;
    // A pass stopped by a decision (pause, removal, suspension) did not fail.
    let failed = reports.iter().filter(|r| r.outcome.is_failure()).count();
    match args.format {
        Format::Json => output::json(
            &reports
                .iter()
                .map(app::ReportView::from)
                .collect::<Vec<_>>(),
        ),
        Format::Table => output::table(app::REPORT_HEADERS, &app::report_rows(&reports)),
    }
    if failed > 0 {
        output::error(format!("{failed} mailbox(es) failed"));
        return Ok(1);
    }
    Ok(0)
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once
/// (still nothing half-written: every write is a transaction).
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("Shutdown requested; send the signal again to exit immediately.");
    tokio::spawn(async {
        wait_for_signal().await;
        output::error("second signal: exiting immediately");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The whole program behind `main.rs`: parse, load settings, start
/// telemetry and the runtime, dispatch, map the outcome to an exit code.
///
/// It lives here, not in the binary, so that `run` and everything generic
/// under it (the shutdown future is a type parameter all the way down to the
/// daemon) is compiled once, in this crate: in the binary it was compiled a
/// second time, 48 s of a cold release build on 2 cores.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let mut settings = match Settings::load(&cli.config_dir, cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            output::error(format!("{e:#}"));
            return ExitCode::from(2);
        }
    };
    // The demo's output is for a person: its own sections and tables, and
    // only the daemon's warnings unless RUST_LOG asks for more.
    if matches!(cli.command, Command::Demo(_)) && std::env::var_os("RUST_LOG").is_none() {
        settings.log.level = "warn".to_owned();
    }
    crate::telemetry::init_tracing(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::error(format!("starting the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, settings, shutdown_signal()));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            output::error(format!("{e:#}"));
            ExitCode::from(exit_code(&e))
        }
    }
}
