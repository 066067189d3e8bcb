//! The OAuth scope names the emulator knows, in the form Google reports them.
//!
//! Plain constants at the bottom of the crate: the token endpoints grant them, the consent flow
//! canonicalises to them and the pipeline checks them. This module imports nothing.

pub(crate) const GMAIL_READONLY: &str = "https://www.googleapis.com/auth/gmail.readonly";
pub(crate) const GMAIL_METADATA: &str = "https://www.googleapis.com/auth/gmail.metadata";
pub(crate) const GMAIL_MODIFY: &str = "https://www.googleapis.com/auth/gmail.modify";
pub(crate) const GMAIL_FULL: &str = "https://mail.google.com/";
pub(crate) const DIRECTORY_USER_READONLY: &str =
    "https://www.googleapis.com/auth/admin.directory.user.readonly";
pub(crate) const DIRECTORY_GROUP_READONLY: &str =
    "https://www.googleapis.com/auth/admin.directory.group.readonly";
/// The scopes that admit `groups.list` (Google's list; the member scopes admit `members.list` too).
pub(crate) const DIRECTORY_GROUP_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/admin.directory.group",
    DIRECTORY_GROUP_READONLY,
];
pub(crate) const DIRECTORY_MEMBER_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/admin.directory.group.member",
    "https://www.googleapis.com/auth/admin.directory.group.member.readonly",
];
/// Any Directory scope admits a Directory call.
pub(crate) const DIRECTORY_PREFIX: &str = "https://www.googleapis.com/auth/admin.directory.";
pub(crate) const OPENID: &str = "openid";
pub(crate) const USERINFO_EMAIL: &str = "https://www.googleapis.com/auth/userinfo.email";
pub(crate) const USERINFO_PROFILE: &str = "https://www.googleapis.com/auth/userinfo.profile";
