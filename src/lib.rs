//! gmail-ingest copies Google Workspace mailboxes into SQL.
//!
//! A service account with domain-wide delegation impersonates each approved
//! mailbox, performs one full sync and then follows the mailbox's Gmail
//! history incrementally, writing normalized rows through one [`store::Store`]
//! API over SQLite or PostgreSQL.
//!
//! # Layout
//!
//! - [`domain`]: newtypes parsed once at the edges; depends on nothing.
//! - [`config`]: layered, strict settings.
//! - [`telemetry`] and [`events`]: logging and the metric vocabulary.
//! - [`store`]: the one persistence API (SQLite | PostgreSQL).
//! - [`google`]: auth, Gmail and Directory clients, error classes, retry, quota.
//! - [`sync`]: the sync engine and the pure MIME normalizer.
//! - [`daemon`], [`app`], [`http`]: the long-running service.
//! - [`cli`] and [`output`]: the command line; `output` is the only printer.
//! - `demo` (feature `emulator`): the offline demo over the `gmail-emulator` crate, the local
//!   Google that tests and benchmarks use directly.

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "emulator")]
pub mod demo;
pub mod domain;
pub mod events;
pub mod google;
pub mod http;
pub mod oauth;
pub mod output;
pub mod secret_file;
pub mod store;
pub mod subscriptions;
pub mod sync;
pub mod telemetry;
