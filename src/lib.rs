//! gmail-ingest copies Google Workspace mailboxes into SQL.
//!
//! A service account with domain-wide delegation impersonates each approved
//! mailbox, performs one full sync and then follows the mailbox's Gmail
//! history incrementally, writing normalized rows through one [`store::Store`]
//! API over SQLite or PostgreSQL.
//!
//! # Layout
//!
//! Modules from the bottom up; each uses only those above it in this list
//! (ARCHITECTURE.md, "Layers"; `tests/it/layers.rs` enforces it):
//!
//! - [`domain`]: newtypes parsed once at the edges; depends on nothing.
//! - [`secret_file`]: reading secret files, refusing ones others can read.
//! - [`config`] (which checks `database.password_file` through it), [`output`] (the only printer) and
//!   [`google::error`] (every Google failure classified once).
//! - [`store`]: the one persistence API (SQLite | PostgreSQL).
//! - [`events`], then [`telemetry`]: the metric vocabulary, logging.
//! - [`google`]: auth, Gmail and Directory clients, retry, quota; [`listener`]:
//!   the bounded HTTP serving both listeners use.
//! - [`oauth`] and [`subscriptions`]: consents; the operators' rules.
//! - [`groups`]: group subscriptions and their expansion through the Directory.
//! - [`sync`]: the shared context, the approved-OU gate, then the engine.
//! - [`http`], [`daemon`], [`app`]: the long-running service.
//! - `demo` (feature `emulator`): the offline demo over the `gmail-emulator`
//!   crate, the local Google that tests and benchmarks use directly.
//! - [`cli`]: the command line.
//!
//! RFC 822 parsing is the `gmail-normalize` crate (`crates/normalize`),
//! pure and total, which depends on nothing of ours.

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "emulator")]
pub mod demo;
pub mod domain;
pub mod events;
pub mod google;
pub mod groups;
pub mod http;
pub mod listener;
pub mod oauth;
pub mod output;
pub mod secret_file;
pub mod store;
pub mod subscriptions;
pub mod sync;
pub mod telemetry;
