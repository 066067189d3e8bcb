//! What both token endpoints hand out: opaque access tokens and the process key.
//!
//! The JWT-bearer grant (`oauth`) and the web client's grants (`consent`) issue access tokens
//! the same way, and the one RSA key of the process is both the service-account key and the
//! ID-token signing key. Below both endpoints; it must not import either. Tokens are never
//! logged.

use std::sync::OnceLock;

use anyhow::Context as _;
use rand::Rng as _;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use sha2::{Digest as _, Sha256};

use super::model::{IssuedToken, World};

/// Access tokens live an hour (Google reports `expires_in` 3599 or so).
pub(crate) const TOKEN_LIFETIME_S: i64 = 3600;

static PROCESS_KEY: OnceLock<RsaPrivateKey> = OnceLock::new();

/// The process-wide service-account key (2048-bit RSA, generated on first use).
pub(crate) fn process_key() -> anyhow::Result<&'static RsaPrivateKey> {
    if let Some(key) = PROCESS_KEY.get() {
        return Ok(key);
    }
    let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .context("generating the emulator's RSA key")?;
    Ok(PROCESS_KEY.get_or_init(|| key))
}

/// `n` random alphanumeric characters: the body of every opaque token and code.
pub(crate) fn random_string(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

/// Stores a new access token valid for [`TOKEN_LIFETIME_S`] from `now_ms` (the emulator's
/// clock), counts it for its subject and returns it. `issued.expires_at_ms` is overwritten.
pub(crate) fn issue_access_token(world: &mut World, now_ms: i64, issued: IssuedToken) -> String {
    let token = format!("ya29.emu.{}", random_string(64));
    if world.tokens.len() > 10_000 {
        world.tokens.retain(|_, t| t.expires_at_ms > now_ms);
    }
    if let Some(subject) = &issued.subject {
        *world
            .stats
            .tokens_issued
            .entry(subject.clone())
            .or_default() += 1;
    }
    world.tokens.insert(
        token.clone(),
        IssuedToken {
            expires_at_ms: now_ms + TOKEN_LIFETIME_S * 1000,
            ..issued
        },
    );
    token
}

/// The `kid` of the process key: the service-account key's `private_key_id`, and the key ID in
/// ID-token headers and `/oauth2/v3/certs`.
pub(crate) fn process_key_id() -> anyhow::Result<String> {
    let pem = process_key()?
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the emulator's key as PKCS#8")?;
    let digest = Sha256::digest(pem.as_bytes());
    Ok(digest.iter().take(20).map(|b| format!("{b:02x}")).collect())
}
