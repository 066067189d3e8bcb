//! Google APIs.

pub mod auth;
pub mod directory;
pub mod error;
pub mod gmail;
pub mod quota;
pub mod retry;
