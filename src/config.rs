//! Settings: `config/default.toml` < `config/$GMAIL_INGEST_ENV.toml` <
//! `--config FILE` < environment `GMAIL_INGEST__SECTION__KEY`.
//!
//! Loading is strict: every struct denies unknown fields, so a misspelt key
//! fails with its name; an environment variable under our prefix that maps to
//! no key fails too. Durations are humantime strings ("60s"), sizes end in
//! `_bytes`. Secrets are paths to files, or `SecretString`s: neither the key
//! file's content nor a database password can reach a `Debug` or a log line.
//! This module does no logging; callers report its errors.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{Domain, MailboxAddress, MessageFormat, OrgUnitPath};

/// The built-in defaults; `config/default.toml` in the repository is the same
/// text, so a binary installed without the repository still has them.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

pub const ENV_PREFIX: &str = "GMAIL_INGEST";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub google: GoogleSettings,
    pub policy: PolicySettings,
    pub sync: SyncSettings,
    pub http: HttpSettings,
    pub integration: IntegrationSettings,
    pub oauth: OAuthSettings,
    pub push: PushSettings,
    pub log: LogSettings,
}

/// A database URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with any password replaced by `***`, for messages.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Query parameters of a database URL whose values are shown as written:
/// the ones sqlx reads for SQLite or PostgreSQL that hold no secret. Every
/// other parameter's value (`password`, `sslpassword`, a misspelt key, a key
/// written percent-encoded) is shown as `***`: an allow-list, so a form
/// nobody thought of is hidden rather than printed.
const SHOWN_URL_PARAMETERS: &[&str] = &[
    // PostgreSQL (sqlx-postgres `PgConnectOptions::parse_from_url`).
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
    // SQLite (sqlx-sqlite `SqliteConnectOptions::from_str`).
    "mode",
    "cache",
    "immutable",
    "vfs",
];

/// A database URL fit for messages and `Debug`: the password in the
/// userinfo and the value of every query parameter not known to be harmless
/// (`?password=`, `?sslpassword=`, …) become `***`, a fragment is dropped,
/// and a URL that does not parse is never echoed: only its scheme (when it
/// is one we support) and its length are described.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return describe_unparsable_url(url);
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let shown = SHOWN_URL_PARAMETERS.contains(&k.as_ref());
                let value = if shown {
                    v.into_owned()
                } else {
                    "***".to_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        u.set_query(None);
        if !pairs.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
        }
    }
    if u.fragment().is_some() {
        u.set_fragment(Some("***"));
    }
    u.to_string()
}

/// What a database URL that does not parse may say about itself: the input
/// is never shown (its password may be anywhere in it).
fn describe_unparsable_url(url: &str) -> String {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    let known = ["sqlite", "postgres", "postgresql"];
    match known.iter().find(|k| k.eq_ignore_ascii_case(scheme)) {
        Some(k) => format!(
            "<a {k} URL that does not parse ({} characters; not shown, it may hold a password)>",
            url.chars().count()
        ),
        None => format!(
            "<a value that is not a URL ({} characters; not shown, it may hold a password)>",
            url.chars().count()
        ),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    pub max_connections: u32,
    /// Optional file holding the password; it replaces the URL's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PostgreSQL aborts a transaction of ours left idle this long
    /// (`idle_in_transaction_session_timeout`), releasing its row locks, so a
    /// replica frozen mid-transaction cannot pin mailboxes; `0s` leaves the
    /// server's setting (e.g. one set on the role behind PgBouncer). Our
    /// transactions never wait on anything but the database.
    #[serde(
        with = "humantime_serde",
        default = "default_idle_in_transaction_timeout"
    )]
    pub idle_in_transaction_timeout: Duration,
}

fn default_idle_in_transaction_timeout() -> Duration {
    Duration::from_secs(60)
}

impl DatabaseSettings {
    /// The connection URL with the password from `password_file` applied.
    pub fn connect_url(&self) -> anyhow::Result<DatabaseUrl> {
        let Some(path) = &self.password_file else {
            return Ok(self.url.clone());
        };
        crate::secret_file::check_private(path, "database.password_file")?;
        let password = std::fs::read_to_string(path)
            .with_context(|| format!("reading database.password_file {}", path.display()))?;
        let mut url = url::Url::parse(self.url.expose()).map_err(|e| {
            anyhow::anyhow!("database.url is not a URL ({e}): {}", self.url.redacted())
        })?;
        url.set_password(Some(password.trim_end_matches(['\r', '\n'])))
            .map_err(|()| anyhow::anyhow!("database.url cannot carry a password"))?;
        Ok(DatabaseUrl::new(url.to_string()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleSettings {
    /// Path to the service-account JSON key (a secret: only the path is kept here).
    pub service_account_key_file: PathBuf,
    pub scopes: Vec<String>,
    pub admin_subject: String,
    /// Empty means Google; set to the emulator's URL in tests.
    pub gmail_base_url: String,
    pub directory_base_url: String,
    /// Per-request timeout for Google calls.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per Google call, including the first.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub allowed_domains: Vec<String>,
    pub approved_org_units: Vec<String>,
    pub review_interval_days: u32,
    pub four_eyes: bool,
    /// How often the daemon re-expands group subscriptions (new members
    /// become pending; members that left are flagged or paused).
    #[serde(with = "humantime_serde", default = "default_group_recheck_interval")]
    pub group_recheck_interval: Duration,
    /// What happens to a subscription requested through a group when its
    /// mailbox leaves that group.
    #[serde(default)]
    pub on_group_leave: OnGroupLeave,
}

fn default_group_recheck_interval() -> Duration {
    Duration::from_secs(3600)
}

/// `policy.on_group_leave`: flag the subscription in review, or also pause it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGroupLeave {
    #[default]
    Flag,
    Pause,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub full_resync_cron: String,
    pub message_format: MessageFormat,
    pub store_raw: bool,
    pub max_message_bytes: usize,
    pub max_concurrent_mailboxes: usize,
    pub per_mailbox_concurrency: usize,
    pub user_quota_units_per_minute: u32,
    pub project_quota_units_per_minute: u32,
    pub project_quota_units_per_day: u64,
    /// The smallest share of `project_quota_units_per_day` backfills leave
    /// for incremental passes (the reserve grows with the fleet's measured
    /// incremental rate until the Pacific reset).
    pub daily_incremental_reserve_fraction: f64,
    pub method_costs: MethodCosts,
    /// How long a claimed mailbox lease lasts without renewal.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// How often the OU gate re-checks every subscription (beyond the per-cycle check).
    #[serde(with = "humantime_serde")]
    pub org_unit_recheck_interval: Duration,
    /// Delay before retrying a mailbox whose access was revoked.
    #[serde(with = "humantime_serde")]
    pub auth_failed_retry: Duration,
    /// Alert when a mailbox's last success is older than this (history lasts ~7 days).
    #[serde(with = "humantime_serde")]
    pub history_window_alert: Duration,
    /// Messages written per database transaction during a full sync.
    pub batch_size: usize,
    /// A batch is also cut once the fetched messages it holds reach this
    /// many bytes (raw message plus decoded bodies), whichever comes first.
    pub batch_max_bytes: usize,
    /// Fetched message bytes held in memory by the whole replica, across
    /// every mailbox syncing at once, before they are committed; a message
    /// larger than the budget takes all of it.
    pub memory_budget_bytes: usize,
    /// An incremental pass reads history pages until the records hold this
    /// many distinct messages, then fetches and commits that chunk (with
    /// the history position of its last record) before reading on.
    pub history_chunk_messages: usize,
    /// `sync_runs` rows older than this are deleted by the hourly
    /// housekeeping; zero keeps them forever.
    #[serde(with = "humantime_serde", default = "default_run_retention")]
    pub run_retention: Duration,
}

fn default_run_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

/// Quota units charged per Gmail method (2026 regime by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodCosts {
    pub get_profile: u32,
    pub labels_list: u32,
    pub history_list: u32,
    pub messages_list: u32,
    pub messages_get: u32,
    pub attachments_get: u32,
    /// `users.watch` (Gmail push).
    pub watch: u32,
    /// `users.stop`.
    pub stop: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A request's headers must arrive within this (it also ends a
    /// kept-alive connection that sends no next request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// The largest request body accepted (413 above it).
    pub max_body_bytes: usize,
}

impl HttpSettings {
    /// The bounds of the `http.listen` listener.
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// What one listener allows a client: `[http]` or `[oauth]`'s
/// `header_read_timeout`, `idle_timeout`, `max_connections` and
/// `max_body_bytes`, with the daemon's `http.shutdown_grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
}

impl ListenerLimits {
    /// Refuses limits that would leave a listener unusable; `section` names
    /// the keys in the error (`http` or `oauth`).
    fn validate(&self, section: &str) -> anyhow::Result<()> {
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d < Duration::from_millis(100) {
                bail!("configuration: {section}.{key} must be at least 100ms");
            }
        }
        if self.max_connections == 0 {
            bail!("configuration: {section}.max_connections must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            bail!("configuration: {section}.max_body_bytes must be at least 1024");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSettings {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSettings {
    pub enabled: bool,
    pub client_id: String,
    pub client_secret_file: String,
    pub public_base_url: String,
    pub token_encryption_key_file: String,
    /// The consent pages' own listener, apart from the metrics/health port.
    pub listen: String,
    /// Empty = Google; the emulator's base URL in tests and the demo.
    pub accounts_base_url: String,
    /// How long an authorization link's `state` stays valid.
    #[serde(with = "humantime_serde")]
    pub state_ttl: Duration,
    /// How long a disconnect link sent to a mailbox owner stays valid.
    #[serde(with = "humantime_serde")]
    pub disconnect_link_ttl: Duration,
    /// The consent listener's bounds, as under `[http]`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_body_bytes: usize,
}

impl OAuthSettings {
    /// The bounds of the `oauth.listen` listener; the shutdown grace is the
    /// daemon's (`http.shutdown_grace`).
    pub fn limits(&self, shutdown_grace: Duration) -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace,
        }
    }
}

/// Gmail push through Cloud Pub/Sub: watches on the mailboxes, pulled
/// notifications that make a mailbox due, polling kept as the safety net.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    pub enabled: bool,
    /// `projects/P/topics/T`; P must be the service account's project.
    pub topic: String,
    /// `projects/P/subscriptions/S`, a pull subscription on `topic`.
    pub subscription: String,
    /// How often a mailbox's watch is renewed (Google: daily; it lapses after 7 days).
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// With push on, a watched mailbox is still polled this often.
    #[serde(with = "humantime_serde")]
    pub fallback_poll_interval: Duration,
    /// Empty = Google; the emulator's base URL in tests and the demo.
    pub pubsub_base_url: String,
}

/// Google's limit on one watch's life: a watch not renewed within it lapses.
pub const WATCH_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

impl PushSettings {
    /// The project of `topic` (`projects/P/topics/T` → P), once validated.
    pub fn topic_project(&self) -> Option<&str> {
        resource_name(&self.topic, "topics").map(|(p, _)| p)
    }

    fn validate(&self, service_account_key_file: &std::path::Path) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.topic.trim().is_empty() {
            bail!("configuration: push.topic must be set when push.enabled is true");
        }
        if self.subscription.trim().is_empty() {
            bail!("configuration: push.subscription must be set when push.enabled is true");
        }
        let Some((topic_project, _)) = resource_name(&self.topic, "topics") else {
            bail!(
                "configuration: push.topic {:?} is not of the form projects/PROJECT/topics/TOPIC",
                self.topic
            );
        };
        let Some((sub_project, _)) = resource_name(&self.subscription, "subscriptions") else {
            bail!(
                "configuration: push.subscription {:?} is not of the form projects/PROJECT/subscriptions/SUBSCRIPTION",
                self.subscription
            );
        };
        if topic_project != sub_project {
            bail!(
                "configuration: push.topic is in project {topic_project:?} but push.subscription in {sub_project:?}: Gmail publishes only to topics of the calling project, pulled by its own subscriptions"
            );
        }
        if service_account_key_file.as_os_str().is_empty() {
            bail!(
                "configuration: push.enabled needs google.service_account_key_file: the daemon pulls Pub/Sub as the service account itself"
            );
        }
        if self.renew_interval < Duration::from_secs(60) || self.renew_interval >= WATCH_LIFETIME {
            bail!(
                "configuration: push.renew_interval must be at least 1m and under 7d (a watch lapses after 7 days)"
            );
        }
        if self.fallback_poll_interval < Duration::from_secs(1) {
            bail!("configuration: push.fallback_poll_interval must be at least 1s");
        }
        if !self.pubsub_base_url.trim().is_empty() {
            let u = url::Url::parse(self.pubsub_base_url.trim()).map_err(|e| {
                anyhow::anyhow!("configuration: push.pubsub_base_url is not a URL: {e}")
            })?;
            if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() {
                bail!("configuration: push.pubsub_base_url must be an http(s) URL with a host");
            }
        }
        Ok(())
    }
}

/// `projects/P/<kind>/N` → (P, N), each non-empty and made of the characters
/// Google allows in project IDs and resource names.
fn resource_name<'a>(name: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let mut parts = name.split('/');
    let (Some("projects"), Some(project), Some(k), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '%' | ':')
            })
    };
    (k == kind && ok(project) && ok(id)).then_some((project, id))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// Policy values parsed into domain types (done once, at load).
#[derive(Debug, Clone)]
pub struct Policy {
    pub allowed_domains: Vec<Domain>,
    pub approved_org_units: Vec<OrgUnitPath>,
    pub review_interval_days: u32,
    pub four_eyes: bool,
}

impl Policy {
    pub fn domain_allowed(&self, mailbox: &MailboxAddress) -> bool {
        self.allowed_domains
            .iter()
            .any(|d| d.as_str() == mailbox.domain())
    }

    pub fn org_unit_approved(&self, ou: &OrgUnitPath) -> bool {
        self.approved_org_units.iter().any(|a| ou.is_within(a))
    }
}

impl Settings {
    /// Loads the layered settings. `config_dir` holds `default.toml` and the
    /// per-environment files; when it has no `default.toml` the built-in
    /// defaults are used.
    pub fn load(config_dir: &Path, file: Option<&Path>) -> anyhow::Result<Settings> {
        let env_vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(config_dir, file, &env_vars)
    }

    /// `load` with an explicit environment, for tests.
    pub fn load_from(
        config_dir: &Path,
        file: Option<&Path>,
        env_vars: &[(String, String)],
    ) -> anyhow::Result<Settings> {
        use config::{Config, Environment, File, FileFormat};

        let default_path = config_dir.join("default.toml");
        let mut builder = if default_path.is_file() {
            Config::builder()
                .add_source(File::from(default_path.as_path()).format(FileFormat::Toml))
        } else {
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
        };
        if let Some((_, env_name)) = env_vars.iter().find(|(k, _)| k == "GMAIL_INGEST_ENV") {
            let path = config_dir.join(format!("{env_name}.toml"));
            if !path.is_file() {
                bail!(
                    "GMAIL_INGEST_ENV={env_name} but {} does not exist",
                    path.display()
                );
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        if let Some(path) = file {
            std::fs::metadata(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }

        let ours: Vec<(String, String)> = env_vars
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .cloned()
            .collect();
        check_env_keys(&ours)?;
        let env_map: std::collections::HashMap<String, String> = ours.into_iter().collect();
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("google.scopes")
                .with_list_parse_key("policy.allowed_domains")
                .with_list_parse_key("policy.approved_org_units")
                .try_parsing(true)
                .source(Some(env_map)),
        );

        let raw = builder
            .build()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.policy()?;
        if self.google.scopes.is_empty() {
            bail!("configuration: google.scopes must not be empty");
        }
        if self.sync.max_concurrent_mailboxes == 0 || self.sync.per_mailbox_concurrency == 0 {
            bail!("configuration: sync concurrency limits must be at least 1");
        }
        if self.sync.batch_size == 0 {
            bail!("configuration: sync.batch_size must be at least 1");
        }
        let reserve = self.sync.daily_incremental_reserve_fraction;
        if !(0.0..=1.0).contains(&reserve) {
            bail!(
                "configuration: sync.daily_incremental_reserve_fraction must be between 0 and 1 (got {reserve})"
            );
        }
        if self.sync.batch_max_bytes == 0 || self.sync.memory_budget_bytes == 0 {
            bail!(
                "configuration: sync.batch_max_bytes and sync.memory_budget_bytes must be at least 1"
            );
        }
        if self.sync.history_chunk_messages == 0 {
            bail!("configuration: sync.history_chunk_messages must be at least 1");
        }
        if self.google.max_attempts == 0 {
            bail!("configuration: google.max_attempts must be at least 1");
        }
        if self.policy.group_recheck_interval < Duration::from_secs(1) {
            bail!("configuration: policy.group_recheck_interval must be at least 1s");
        }
        if self.sync.lease_duration < Duration::from_secs(2) {
            bail!("configuration: sync.lease_duration must be at least 2s");
        }
        let keep = self.sync.run_retention;
        if !keep.is_zero() && keep < Duration::from_secs(3600) {
            bail!("configuration: sync.run_retention must be 0s (keep every run) or at least 1h");
        }
        let idle = self.database.idle_in_transaction_timeout;
        if !idle.is_zero() && idle < Duration::from_secs(1) {
            bail!(
                "configuration: database.idle_in_transaction_timeout must be 0s (off) or at least 1s"
            );
        }
        let uses_metadata_scope = self
            .google
            .scopes
            .iter()
            .any(|s| s.ends_with("/gmail.metadata"));
        if uses_metadata_scope && self.sync.message_format != MessageFormat::Metadata {
            bail!(
                "configuration: google.scopes has gmail.metadata, which only allows sync.message_format = \"metadata\""
            );
        }
        tokio_cron_scheduler::Job::new_async(self.sync.full_resync_cron.as_str(), |_, _| {
            Box::pin(async {})
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "configuration: sync.full_resync_cron {:?} is not a 6-field cron expression (seconds first): {e}",
                self.sync.full_resync_cron
            )
        })?;
        self.http.limits().validate("http")?;
        self.oauth
            .limits(self.http.shutdown_grace)
            .validate("oauth")?;
        if self.oauth.enabled {
            self.validate_oauth()?;
        } else if self.google.service_account_key_file.as_os_str().is_empty() {
            bail!(
                "configuration: google.service_account_key_file must be set (it may be empty only when oauth.enabled is true)"
            );
        }
        self.push.validate(&self.google.service_account_key_file)?;
        if !self.google.admin_subject.is_empty() {
            MailboxAddress::parse(&self.google.admin_subject)
                .map_err(|e| anyhow::anyhow!("configuration: google.admin_subject: {e}"))?;
        }
        Ok(())
    }

    fn validate_oauth(&self) -> anyhow::Result<()> {
        let o = &self.oauth;
        for (key, value) in [
            ("oauth.client_id", &o.client_id),
            ("oauth.client_secret_file", &o.client_secret_file),
            ("oauth.public_base_url", &o.public_base_url),
            (
                "oauth.token_encryption_key_file",
                &o.token_encryption_key_file,
            ),
            ("oauth.listen", &o.listen),
        ] {
            if value.trim().is_empty() {
                bail!("configuration: {key} must be set when oauth.enabled is true");
            }
        }
        let base = url::Url::parse(o.public_base_url.trim()).map_err(|e| {
            anyhow::anyhow!("configuration: oauth.public_base_url is not a URL: {e}")
        })?;
        if !matches!(base.scheme(), "https" | "http") || base.host_str().is_none() {
            bail!("configuration: oauth.public_base_url must be an http(s) URL with a host");
        }
        if !o.accounts_base_url.trim().is_empty() {
            url::Url::parse(o.accounts_base_url.trim()).map_err(|e| {
                anyhow::anyhow!("configuration: oauth.accounts_base_url is not a URL: {e}")
            })?;
        }
        if o.state_ttl < Duration::from_secs(1) || o.state_ttl > Duration::from_secs(3600) {
            bail!("configuration: oauth.state_ttl must be between 1s and 1h");
        }
        Ok(())
    }

    pub fn policy(&self) -> anyhow::Result<Policy> {
        let allowed_domains = self
            .policy
            .allowed_domains
            .iter()
            .map(|d| Domain::parse(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("configuration: policy.allowed_domains: {e}"))?;
        let approved_org_units = self
            .policy
            .approved_org_units
            .iter()
            .map(|o| OrgUnitPath::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("configuration: policy.approved_org_units: {e}"))?;
        Ok(Policy {
            allowed_domains,
            approved_org_units,
            review_interval_days: self.policy.review_interval_days,
            four_eyes: self.policy.four_eyes,
        })
    }
}

/// Every dotted key path the settings accept, e.g. `sync.poll_interval`.
/// Used to reject unknown environment variables and by the tidy test that
/// keeps `config/example.toml` complete.
pub fn known_keys() -> BTreeSet<String> {
    let value: toml::Value =
        toml::from_str(DEFAULT_TOML).unwrap_or(toml::Value::Table(Default::default()));
    let mut keys = BTreeSet::new();
    collect_keys("", &value, &mut keys);
    // Optional keys absent from the defaults.
    keys.insert("database.password_file".to_owned());
    keys
}

fn collect_keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_table() {
                collect_keys(&path, v, out);
            } else {
                out.insert(path);
            }
        }
    }
}

fn check_env_keys(vars: &[(String, String)]) -> anyhow::Result<()> {
    let known = known_keys();
    for (name, _) in vars {
        let path = name
            .trim_start_matches(ENV_PREFIX)
            .trim_start_matches("__")
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        if !known.contains(&path) {
            bail!("configuration: environment variable {name} does not match any setting");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str, env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.toml");
        std::fs::write(&file, extra).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(dir.path(), Some(&file), &env)
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.sync.poll_interval, Duration::from_secs(60));
        assert_eq!(s.sync.method_costs.messages_get, 20);
        assert_eq!(s.http.shutdown_grace, Duration::from_secs(30));
        assert!(s.policy.four_eyes);
    }

    #[test]
    fn push_is_refused_by_name_when_incomplete_or_malformed() {
        let ok = "[push]\nenabled = true\ntopic = \"projects/p-1/topics/gmail\"\n\
                  subscription = \"projects/p-1/subscriptions/ingest\"\n";
        let s = load(ok, &[]).unwrap();
        assert_eq!(s.push.topic_project(), Some("p-1"));
        assert_eq!(s.push.renew_interval, Duration::from_secs(24 * 3600));
        assert_eq!(s.push.fallback_poll_interval, Duration::from_secs(15 * 60));
        assert_eq!(s.sync.method_costs.watch, 100);
        assert_eq!(s.sync.method_costs.stop, 50);
        // Off, nothing else is needed.
        assert!(load("[push]\nenabled = false\n", &[]).is_ok());
        for (broken, named) in [
            (
                ok.replace("topic = \"projects/p-1/topics/gmail\"", ""),
                "push.topic must be set",
            ),
            (
                ok.replace("subscription = \"projects/p-1/subscriptions/ingest\"", ""),
                "push.subscription must be set",
            ),
            (
                ok.replace("projects/p-1/topics/gmail", "gmail"),
                "push.topic \"gmail\" is not of the form",
            ),
            (
                ok.replace("topics/gmail", "subscriptions/gmail"),
                "push.topic",
            ),
            (
                ok.replace(
                    "projects/p-1/subscriptions/ingest",
                    "projects/p-1/subscriptions/",
                ),
                "push.subscription",
            ),
            (
                ok.replace("projects/p-1/subscriptions", "projects/p-2/subscriptions"),
                "in project \"p-1\" but push.subscription in \"p-2\"",
            ),
            (
                format!("{ok}renew_interval = \"7d\"\n"),
                "push.renew_interval",
            ),
            (
                format!("{ok}renew_interval = \"10s\"\n"),
                "push.renew_interval",
            ),
            (
                format!("{ok}fallback_poll_interval = \"0s\"\n"),
                "push.fallback_poll_interval",
            ),
            (
                format!("{ok}pubsub_base_url = \"ftp://x\"\n"),
                "push.pubsub_base_url",
            ),
            (
                format!(
                    "[google]\nservice_account_key_file = \"\"\n[oauth]\nenabled = true\nclient_id = \"1\"\n\
                      client_secret_file = \"/s\"\ntoken_encryption_key_file = \"/k\"\n\
                      public_base_url = \"https://i.example.com\"\n{ok}"
                ),
                "push.enabled needs google.service_account_key_file",
            ),
        ] {
            let err = load(&broken, &[]).unwrap_err().to_string();
            assert!(err.contains(named), "{named:?} not in {err:?}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn oauth_needs_its_settings_and_alone_may_do_without_a_key_file() {
        let err = load("[oauth]\nenabled = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("oauth.client_id must be set"), "{err}");
        let full = "[oauth]\nenabled = true\nclient_id = \"1.apps.googleusercontent.com\"\n\
                    client_secret_file = \"/s\"\ntoken_encryption_key_file = \"/k\"\n\
                    public_base_url = \"https://ingest.example.com\"\n";
        assert!(load(full, &[]).is_ok());
        let err = load(&full.replace("https://ingest.example.com", "ingest"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("oauth.public_base_url"), "{err}");
        // An OAuth-only deployment has no service-account key; DWD needs one.
        let no_key = "[google]\nservice_account_key_file = \"\"\n";
        assert!(load(&format!("{no_key}{full}"), &[]).is_ok());
        let err = load(no_key, &[]).unwrap_err().to_string();
        assert!(
            err.contains("google.service_account_key_file must be set"),
            "{err}"
        );
    }

    #[test]
    fn layers_apply_in_order_file_then_env() {
        let s = load(
            "[sync]\npoll_interval = \"5m\"\n[database]\nurl = \"sqlite://a.db\"\n",
            &[("GMAIL_INGEST__DATABASE__URL", "sqlite://b.db")],
        )
        .unwrap();
        assert_eq!(s.sync.poll_interval, Duration::from_secs(300));
        assert_eq!(s.database.url.expose(), "sqlite://b.db");
    }

    #[test]
    fn env_lists_are_comma_separated() {
        let s = load(
            "",
            &[(
                "GMAIL_INGEST__POLICY__ALLOWED_DOMAINS",
                "a.example,b.example",
            )],
        )
        .unwrap();
        assert_eq!(s.policy.allowed_domains, vec!["a.example", "b.example"]);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = load("[sync]\npoll_intervall = \"5m\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_intervall"), "{err}");
        let err = load("[nosuch]\nx = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("nosuch"), "{err}");
        let err = load("", &[("GMAIL_INGEST__SYNC__POLL_INTERVALL", "5s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GMAIL_INGEST__SYNC__POLL_INTERVALL"), "{err}");
    }

    #[test]
    fn idle_in_transaction_timeout_is_off_or_at_least_a_second() {
        let s = load("", &[]).unwrap();
        assert_eq!(
            s.database.idle_in_transaction_timeout,
            Duration::from_secs(60)
        );
        let s = load("[database]\nidle_in_transaction_timeout = \"0s\"\n", &[]).unwrap();
        assert!(s.database.idle_in_transaction_timeout.is_zero());
        let err = load("[database]\nidle_in_transaction_timeout = \"500ms\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database.idle_in_transaction_timeout"),
            "{err}"
        );
    }

    #[test]
    fn malformed_durations_name_the_key() {
        let err = load("[sync]\npoll_interval = \"sixty\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_interval"), "{err}");
    }

    #[test]
    fn unreadable_config_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Settings::load_from(dir.path(), Some(&dir.path().join("missing.toml")), &[])
            .unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"), "{err:#}");
    }

    #[test]
    fn bad_policy_values_are_refused() {
        let err = load("[policy]\napproved_org_units = [\"Shared\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("approved_org_units"), "{err}");
        let err = load("[sync]\nfull_resync_cron = \"0 3 * * Sun\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("full_resync_cron"), "{err}");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let s = load(
            "[database]\nurl = \"postgres://app:hunter2@db.internal/mail\"\n",
            &[],
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("postgres://app:***@db.internal/mail"),
            "{debug}"
        );
    }

    #[test]
    fn every_url_form_is_redacted_and_an_unparsable_one_is_never_echoed() {
        for (url, secret, shown) in [
            (
                "postgres://app:hunter2@db/mail",
                "hunter2",
                "postgres://app:***@db/mail",
            ),
            (
                "postgres://app@db/mail?sslmode=require&password=hunter2",
                "hunter2",
                "postgres://app@db/mail?sslmode=require&password=***",
            ),
            (
                "postgres://app@db/mail?sslpassword=hunter2&application_name=ingest",
                "hunter2",
                "postgres://app@db/mail?sslpassword=***&application_name=ingest",
            ),
            // A key written percent-encoded is still the password to sqlx.
            (
                "postgresql://app@db/mail?pass%77ord=hunter2",
                "hunter2",
                "postgresql://app@db/mail?password=***",
            ),
            (
                "postgres://app:hunter%32@db/mail",
                "hunter",
                "postgres://app:***@db/mail",
            ),
            (
                "postgres://app@db/mail#hunter2",
                "hunter2",
                "postgres://app@db/mail#***",
            ),
            (
                "postgres://app:hunter2@db:notaport/mail",
                "hunter2",
                "<a postgres URL that does not parse",
            ),
            (
                "host=db user=app password=hunter2",
                "hunter2",
                "<a value that is not a URL",
            ),
            ("sqlite://gi.db?mode=rwc", "", "sqlite://gi.db?mode=rwc"),
        ] {
            let r = redact_url(url);
            assert!(secret.is_empty() || !r.contains(secret), "{url} -> {r}");
            assert!(r.starts_with(shown), "{url} -> {r}");
            let s = DatabaseUrl::new(url);
            assert!(secret.is_empty() || !format!("{s:?} {s}").contains(secret));
        }
    }

    /// Settings whose `database.password_file` holds `s3cret` with `mode`.
    fn with_password_file(dir: &Path, mode: u32) -> Settings {
        use std::os::unix::fs::PermissionsExt;
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
        load(
            &format!(
                "[database]\nurl = \"postgres://app@db/mail\"\npassword_file = {:?}\n",
                pw.display().to_string()
            ),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = with_password_file(dir.path(), 0o640);
        let err = format!("{:#}", s.database.connect_url().unwrap_err());
        assert!(
            err.contains("database.password_file") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn password_file_replaces_the_url_password() {
        let dir = tempfile::tempdir().unwrap();
        let s = with_password_file(dir.path(), 0o600);
        assert_eq!(
            s.database.connect_url().unwrap().expose(),
            "postgres://app:s3cret@db/mail"
        );
    }
}
