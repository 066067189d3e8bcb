//! The secret that protects per-mailbox consent: seals refresh tokens at rest
//! and the consent flow's `state`, and signs disconnect links.
//!
//! The key file holds one base64-encoded 32-byte key per line (`#` comments
//! allowed). The first line is the current key: everything new is sealed
//! with it. Later lines are older keys, still accepted for opening, so a key
//! can be rotated without a flag day (docs/operations.md §6). A sealed value
//! names its key by `key_id` (a SHA-256 prefix of the key, not the key).
//!
//! Sealing is AES-256-GCM with a random 96-bit nonce; the associated data
//! binds a value to its purpose and mailbox, so a refresh-token ciphertext
//! copied onto another mailbox's row, or a `state` replayed as a link, does
//! not open.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// What a sealed value is for; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    RefreshToken,
    State,
    /// The result page of a consent, carried from the callback to
    /// `/oauth/result` in a cookie so that the URL the owner is left on holds
    /// no code and no state.
    ResultPage,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::RefreshToken => b"gmail-ingest/oauth/refresh-token/v1",
            Purpose::State => b"gmail-ingest/oauth/state/v1",
            Purpose::ResultPage => b"gmail-ingest/oauth/result-page/v1",
        }
    }
}

struct Key {
    id: String,
    aead: LessSafeKey,
    mac: hmac::Key,
}

/// The loaded keys. `Debug` shows key ids only.
pub struct TokenKeys {
    keys: Vec<Key>,
    rng: SystemRandom,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("TokenKeys").field("key_ids", &ids).finish()
    }
}

/// Why a sealed value did not open. Deliberately vague towards callers that
/// show it to a browser: which part failed is not the visitor's business.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "sealed under key {0}, which the key file no longer holds (was it rotated out too early?)"
    )]
    UnknownKey(String),
    #[error("not a sealed value, or tampered with")]
    Invalid,
}

fn key_id(raw: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, raw);
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenKeys {
    /// Reads the key file: it must be readable by its owner only.
    pub fn load(path: &Path) -> anyhow::Result<TokenKeys> {
        crate::secret_file::check_private(path, "oauth.token_encryption_key_file")?;
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("reading oauth.token_encryption_key_file {}", path.display())
        })?;
        Self::parse(&text)
            .with_context(|| format!("oauth.token_encryption_key_file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<TokenKeys> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let raw = STANDARD
                .decode(line)
                .ok()
                .filter(|r| r.len() == 32)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "line {} is not a base64-encoded 32-byte key (make one with: head -c 32 /dev/urandom | base64)",
                        n + 1
                    )
                })?;
            keys.push(Self::key(&raw)?);
        }
        if keys.is_empty() {
            bail!("no key found (make one with: head -c 32 /dev/urandom | base64)");
        }
        Ok(TokenKeys {
            keys,
            rng: SystemRandom::new(),
        })
    }

    fn key(raw: &[u8]) -> anyhow::Result<Key> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| anyhow::anyhow!("not an AES-256 key"))?;
        // The MAC key is derived, so one secret serves both uses independently.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, raw),
            b"gmail-ingest/oauth/link-signing/v1",
        );
        Ok(Key {
            id: key_id(raw),
            aead: LessSafeKey::new(unbound),
            mac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Random bytes from the OS, base64url without padding.
    pub fn random_token(&self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        // SystemRandom only fails when the OS has no randomness at all.
        if self.rng.fill(&mut buf).is_err() {
            panic!("the operating system's random number generator failed");
        }
        URL_SAFE_NO_PAD.encode(buf)
    }

    fn aad(purpose: Purpose, context: &str) -> Vec<u8> {
        let mut aad = purpose.label().to_vec();
        aad.push(0);
        aad.extend_from_slice(context.as_bytes());
        aad
    }

    /// Seals `plaintext` for `purpose` and `context` (the mailbox) under the
    /// current key: `<key_id>.<base64url(nonce ‖ ciphertext ‖ tag)>`.
    pub fn seal(&self, purpose: Purpose, context: &str, plaintext: &[u8]) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        if self.rng.fill(&mut nonce).is_err() {
            panic!("the operating system's random number generator failed");
        }
        let mut buf = plaintext.to_vec();
        // Sealing cannot fail for inputs below GCM's 64 GiB limit.
        if key
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(purpose, context)),
                &mut buf,
            )
            .is_err()
        {
            panic!("AES-GCM sealing failed");
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{}.{}", key.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value sealed by [`seal`](Self::seal) with any loaded key.
    pub fn open(
        &self,
        purpose: Purpose,
        context: &str,
        sealed: &str,
    ) -> Result<Vec<u8>, OpenError> {
        let (id, body) = sealed.split_once('.').ok_or(OpenError::Invalid)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.chars().take(16).collect()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Invalid)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Invalid);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Invalid)?;
        let mut buf = ct.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(Self::aad(purpose, context)), &mut buf)
            .map_err(|_| OpenError::Invalid)?;
        Ok(plain.to_vec())
    }

    /// The key id a sealed value names, if it is well-formed.
    pub fn sealed_key_id(sealed: &str) -> Option<&str> {
        sealed.split_once('.').map(|(id, _)| id)
    }

    /// A MAC over `message` with the current key: `<key_id>.<base64url tag>`.
    pub fn sign(&self, message: &[u8]) -> String {
        let key = &self.keys[0];
        let tag = hmac::sign(&key.mac, message);
        format!("{}.{}", key.id, URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks a [`sign`](Self::sign) tag in constant time, with any loaded key.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        let Some((id, tag)) = signature.split_once('.') else {
            return false;
        };
        let Some(key) = self.keys.iter().find(|k| k.id == id) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        hmac::verify(&key.mac, message, &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn sealed_values_open_only_for_their_purpose_and_mailbox() {
        let keys = TokenKeys::parse(K1).unwrap();
        let sealed = keys.seal(Purpose::RefreshToken, "a@example.com", b"1//secret-refresh");
        assert!(!sealed.contains("secret"), "{sealed}");
        assert_eq!(
            keys.open(Purpose::RefreshToken, "a@example.com", &sealed)
                .unwrap(),
            b"1//secret-refresh"
        );
        assert_eq!(
            keys.open(Purpose::RefreshToken, "b@example.com", &sealed),
            Err(OpenError::Invalid)
        );
        assert_eq!(
            keys.open(Purpose::State, "a@example.com", &sealed),
            Err(OpenError::Invalid)
        );
        // Two seals of the same token differ (random nonce).
        assert_ne!(
            sealed,
            keys.seal(Purpose::RefreshToken, "a@example.com", b"1//secret-refresh")
        );
    }

    #[test]
    fn a_flipped_bit_is_refused() {
        let keys = TokenKeys::parse(K1).unwrap();
        let sealed = keys.seal(Purpose::State, "", b"payload");
        let (id, body) = sealed.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!("{id}.{}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(
            keys.open(Purpose::State, "", &tampered),
            Err(OpenError::Invalid)
        );
        assert_eq!(
            keys.open(Purpose::State, "", "garbage"),
            Err(OpenError::Invalid)
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_new_key() {
        let old = TokenKeys::parse(K1).unwrap();
        let sealed = old.seal(Purpose::RefreshToken, "a@example.com", b"tok");
        let rotated = TokenKeys::parse(&format!("# new key first\n{K2}\n{K1}\n")).unwrap();
        assert_eq!(
            rotated
                .open(Purpose::RefreshToken, "a@example.com", &sealed)
                .unwrap(),
            b"tok"
        );
        assert_ne!(rotated.current_id(), old.current_id());
        let resealed = rotated.seal(Purpose::RefreshToken, "a@example.com", b"tok");
        assert_eq!(
            TokenKeys::sealed_key_id(&resealed),
            Some(rotated.current_id())
        );
        let only_new = TokenKeys::parse(K2).unwrap();
        assert!(matches!(
            only_new.open(Purpose::RefreshToken, "a@example.com", &sealed),
            Err(OpenError::UnknownKey(_))
        ));
        let sig = old.sign(b"link");
        assert!(rotated.verify(b"link", &sig));
        assert!(!rotated.verify(b"other", &sig));
        assert!(!only_new.verify(b"link", &sig));
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line_and_without_echoing_it() {
        let err = TokenKeys::parse("# c\nnot-a-key-SECRET\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        assert!(TokenKeys::parse("# only comments\n").is_err());
        assert!(TokenKeys::parse("AAAA").is_err(), "3 bytes is not a key");
        assert!(!format!("{:?}", TokenKeys::parse(K1).unwrap()).contains(K1));
    }
}
