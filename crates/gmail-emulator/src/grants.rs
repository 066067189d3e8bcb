//! Per-user OAuth state of the emulator's one registered web client: the admin's policy,
//! each user's grant, pending authorization codes, and the token sessions codes turn into.
//!
//! A *grant* is a user's authorization of the client (what Google lists under "Third-party apps
//! with account access"); revoking it kills every token issued under it. A *session* is what
//! one code redemption produced: an access token, maybe a refresh token, and every access token
//! refreshed from it; a reused code revokes only its own session, as RFC 6749 §4.1.2 asks.
//! Codes and tokens are opaque random strings; nothing here logs or prints them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::scopes::{
    GMAIL_FULL, GMAIL_METADATA, GMAIL_MODIFY, GMAIL_READONLY, OPENID, USERINFO_EMAIL,
    USERINFO_PROFILE,
};
use super::util::{SplitMix, URL_SAFE_LENIENT, hash};

/// An authorization code is good for ten minutes of the emulator's clock.
pub(crate) const CODE_LIFETIME_MS: i64 = 10 * 60 * 1000;

/// The scope names the consent flow accepts, in the canonical form Google reports them in:
/// `email` and `profile` come back as their `userinfo.*` URLs.
pub(crate) fn canonical_scope(scope: &str) -> Option<&'static str> {
    Some(match scope {
        OPENID => OPENID,
        "email" | USERINFO_EMAIL => USERINFO_EMAIL,
        "profile" | USERINFO_PROFILE => USERINFO_PROFILE,
        GMAIL_READONLY => GMAIL_READONLY,
        GMAIL_METADATA => GMAIL_METADATA,
        GMAIL_MODIFY => GMAIL_MODIFY,
        GMAIL_FULL => GMAIL_FULL,
        _ => return None,
    })
}

/// The emulator's registered OAuth web client (see [`Emulator::oauth_client`]).
///
/// [`Emulator::oauth_client`]: crate::Emulator::oauth_client
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClientInfo {
    /// `<12 digits>-emulator.apps.googleusercontent.com`.
    pub client_id: String,
    /// `GOCSPX-` and 28 URL-safe characters; a secret, so `Debug` leaves it out.
    pub client_secret: String,
}

impl std::fmt::Debug for OAuthClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClientInfo")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// The web client registered at start: `<12 digits>-emulator.apps.googleusercontent.com` and a
/// `GOCSPX-` secret, both derived from the seed so that a restart with the same seed keeps them.
pub(crate) fn client_for_seed(seed: u64) -> OAuthClientInfo {
    const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let number = 100_000_000_000 + hash(&[seed, 0x4f41_7574_6843]) % 900_000_000_000;
    let mut rng = SplitMix::new(hash(&[seed, 0x5365_6372_6574]));
    let secret: String = (0..28)
        .map(|_| char::from(URL_SAFE[rng.below(URL_SAFE.len() as u64) as usize]))
        .collect();
    OAuthClientInfo {
        client_id: format!("{number}-emulator.apps.googleusercontent.com"),
        client_secret: format!("GOCSPX-{secret}"),
    }
}

/// How the client derived `code_challenge` from its verifier (RFC 7636).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChallengeMethod {
    Plain,
    S256,
}

impl ChallengeMethod {
    /// Google's default, like RFC 7636's, is `plain`.
    pub(crate) fn parse(value: Option<&str>) -> Option<ChallengeMethod> {
        match value {
            None | Some("plain") => Some(ChallengeMethod::Plain),
            Some("S256") => Some(ChallengeMethod::S256),
            Some(_) => None,
        }
    }
}

/// A PKCE challenge remembered with its code.
#[derive(Debug, Clone)]
pub(crate) struct Pkce {
    pub(crate) challenge: String,
    pub(crate) method: ChallengeMethod,
}

impl Pkce {
    /// Whether `verifier` is the one the challenge was made from.
    pub(crate) fn verifies(&self, verifier: &str) -> bool {
        match self.method {
            ChallengeMethod::Plain => verifier == self.challenge,
            ChallengeMethod::S256 => {
                URL_SAFE_LENIENT.encode(Sha256::digest(verifier.as_bytes())) == self.challenge
            }
        }
    }
}

/// RFC 7636 §4.1/§4.2: 43 to 128 unreserved characters.
pub(crate) fn valid_pkce_string(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An authorization code and everything the token endpoint must check it against.
#[derive(Debug, Clone)]
pub(crate) struct AuthCode {
    pub(crate) client_id: String,
    /// Exactly as sent to the authorization endpoint: the token request must repeat it.
    pub(crate) redirect_uri: String,
    /// The consenting user, lower case.
    pub(crate) user: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) pkce: Option<Pkce>,
    pub(crate) offline: bool,
    /// Whether redeeming it yields a refresh token (offline, and the consent screen was shown
    /// or the grant has none yet).
    pub(crate) issue_refresh: bool,
    pub(crate) nonce: Option<String>,
    pub(crate) expires_at_ms: i64,
    /// Set when the user's grant was revoked before the code was redeemed.
    pub(crate) revoked: bool,
    /// The session its one redemption created; a second redemption revokes that session.
    pub(crate) redeemed: Option<u64>,
}

/// The tokens from one code redemption, and every refresh of them.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user: String,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) offline: bool,
    pub(crate) nonce: Option<String>,
    pub(crate) revoked: bool,
}

/// One user's authorization of the client.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// Every scope granted since the grant became active, in first-granted order.
    pub(crate) scopes: Vec<String>,
    pub(crate) active: bool,
    /// Whether a refresh token was issued since the grant became active: Google issues one on
    /// the first offline consent and afterwards only when the consent screen is shown again.
    pub(crate) refresh_issued: bool,
}

/// Everything the consent flow remembers. `POST /reset` empties it but keeps `next_session`,
/// so that an access token from before the reset can never name a session created after it.
#[derive(Debug, Default)]
pub(crate) struct OAuthState {
    /// The account that consents on every authorization request (overrides `login_hint`);
    /// with `consent_screen`, the account the page proposes.
    pub(crate) consent_user: Option<String>,
    /// Show a sign-in and consent page instead of consenting at once (as Google does). Kept
    /// across `POST /reset`, like the command-line flag that may have set it.
    pub(crate) consent_screen: bool,
    /// Users the admin has blocked from this app (lower case).
    pub(crate) blocked_users: BTreeSet<String>,
    /// The admin blocked the app for the whole domain.
    pub(crate) app_blocked: bool,
    /// By lower-case user email.
    pub(crate) grants: BTreeMap<String, Grant>,
    pub(crate) codes: HashMap<String, AuthCode>,
    pub(crate) sessions: HashMap<u64, Session>,
    /// Refresh token → session.
    pub(crate) refresh_tokens: HashMap<String, u64>,
    next_session: u64,
}

impl OAuthState {
    /// Forgets grants, codes, sessions and policy; session numbers keep growing, and the
    /// consent screen stays as it was.
    pub(crate) fn reset(&mut self) {
        let next_session = self.next_session;
        let consent_screen = self.consent_screen;
        *self = OAuthState {
            next_session,
            consent_screen,
            ..OAuthState::default()
        };
    }

    /// Whether tokens of this session still authorize anything.
    pub(crate) fn session_live(&self, id: u64) -> bool {
        self.sessions.get(&id).is_some_and(|s| !s.revoked)
    }

    pub(crate) fn new_session(&mut self, session: Session) -> u64 {
        self.next_session += 1;
        self.sessions.insert(self.next_session, session);
        self.next_session
    }

    /// Records a consent: the grant becomes active with `scopes` added (or only `scopes` when
    /// it was not active). Returns the scopes the grant now holds.
    pub(crate) fn consent(&mut self, user: &str, scopes: &[String]) -> Vec<String> {
        let grant = self.grants.entry(user.to_owned()).or_insert(Grant {
            scopes: Vec::new(),
            active: false,
            refresh_issued: false,
        });
        if !grant.active {
            grant.scopes.clear();
            grant.refresh_issued = false;
            grant.active = true;
        }
        for scope in scopes {
            if !grant.scopes.contains(scope) {
                grant.scopes.push(scope.clone());
            }
        }
        grant.scopes.clone()
    }

    /// Revokes a user's grant: every session and pending code of the user dies. Returns
    /// whether there was an active grant.
    pub(crate) fn revoke_user(&mut self, user: &str) -> bool {
        let user = user.to_ascii_lowercase();
        for session in self.sessions.values_mut().filter(|s| s.user == user) {
            session.revoked = true;
        }
        for code in self.codes.values_mut().filter(|c| c.user == user) {
            code.revoked = true;
        }
        match self.grants.get_mut(&user) {
            Some(grant) if grant.active => {
                grant.active = false;
                grant.refresh_issued = false;
                true
            }
            _ => false,
        }
    }

    /// Revokes every user's grant; returns how many were active.
    pub(crate) fn revoke_all(&mut self) -> usize {
        let users: Vec<String> = self.grants.keys().cloned().collect();
        let mut revoked = 0;
        for user in users {
            revoked += usize::from(self.revoke_user(&user));
        }
        // Sessions and codes of users without a grant entry cannot exist, but be thorough.
        self.sessions.values_mut().for_each(|s| s.revoked = true);
        self.codes.values_mut().for_each(|c| c.revoked = true);
        revoked
    }

    /// Whether the admin's policy forbids `user` from using the app.
    pub(crate) fn blocked(&self, user: &str) -> bool {
        self.app_blocked || self.blocked_users.contains(&user.to_ascii_lowercase())
    }

    /// Drops codes that expired long ago once there are many, so a long run stays small.
    pub(crate) fn prune_codes(&mut self, now_ms: i64) {
        if self.codes.len() > 10_000 {
            self.codes
                .retain(|_, c| c.expires_at_ms + CODE_LIFETIME_MS > now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_verifies_the_rfc_7636_example_and_nothing_else() {
        let pkce = Pkce {
            challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
            method: ChallengeMethod::S256,
        };
        assert!(pkce.verifies("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!pkce.verifies("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl"));
        let plain = Pkce {
            challenge: "a".repeat(43),
            method: ChallengeMethod::Plain,
        };
        assert!(plain.verifies(&"a".repeat(43)));
        assert!(!plain.verifies(&"b".repeat(43)));
    }

    #[test]
    fn pkce_strings_are_43_to_128_unreserved_characters() {
        assert!(valid_pkce_string(&"a".repeat(43)));
        assert!(valid_pkce_string(&"-._~".repeat(32)));
        assert!(!valid_pkce_string(&"a".repeat(42)));
        assert!(!valid_pkce_string(&"a".repeat(129)));
        assert!(!valid_pkce_string(&format!("{}+", "a".repeat(42))));
        assert_eq!(ChallengeMethod::parse(None), Some(ChallengeMethod::Plain));
        assert_eq!(
            ChallengeMethod::parse(Some("S256")),
            Some(ChallengeMethod::S256)
        );
        assert_eq!(ChallengeMethod::parse(Some("s256")), None);
    }

    #[test]
    fn short_scope_names_become_googles_urls_and_unknown_ones_are_refused() {
        assert_eq!(canonical_scope("email"), Some(USERINFO_EMAIL));
        assert_eq!(canonical_scope("profile"), Some(USERINFO_PROFILE));
        assert_eq!(canonical_scope(OPENID), Some(OPENID));
        assert_eq!(canonical_scope(GMAIL_READONLY), Some(GMAIL_READONLY));
        assert_eq!(canonical_scope("gmail.readonly"), None);
        assert_eq!(
            canonical_scope("https://www.googleapis.com/auth/drive"),
            None
        );
    }

    #[test]
    fn the_client_is_deterministic_per_seed_and_has_googles_shape() {
        let a = client_for_seed(7);
        assert_eq!(a, client_for_seed(7));
        assert_ne!(a.client_id, client_for_seed(8).client_id);
        let (digits, rest) = a.client_id.split_once('-').unwrap();
        assert_eq!(digits.len(), 12);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(rest, "emulator.apps.googleusercontent.com");
        let secret = a.client_secret.strip_prefix("GOCSPX-").unwrap();
        assert_eq!(secret.len(), 28);
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(!format!("{a:?}").contains(secret), "Debug hides the secret");
    }

    fn session(user: &str) -> Session {
        Session {
            user: user.to_owned(),
            client_id: "c".to_owned(),
            scopes: vec![GMAIL_READONLY.to_owned()],
            offline: true,
            nonce: None,
            revoked: false,
        }
    }

    #[test]
    fn revoking_a_user_kills_only_that_users_sessions_and_a_reset_never_reuses_ids() {
        let mut state = OAuthState::default();
        state.consent("a@x.com", &[GMAIL_READONLY.to_owned()]);
        state.consent("b@x.com", &[GMAIL_READONLY.to_owned()]);
        let a = state.new_session(session("a@x.com"));
        let b = state.new_session(session("b@x.com"));

        assert!(state.revoke_user("A@x.com"));
        assert!(!state.revoke_user("a@x.com"), "already revoked");

        assert!(!state.session_live(a));
        assert!(state.session_live(b));
        state.reset();
        assert!(!state.session_live(b));
        let c = state.new_session(session("b@x.com"));
        assert!(c > b);
    }

    #[test]
    fn a_new_consent_after_revocation_starts_from_the_new_scopes_only() {
        let mut state = OAuthState::default();
        state.consent("a@x.com", &[GMAIL_READONLY.to_owned()]);
        let both = state.consent("a@x.com", &[USERINFO_EMAIL.to_owned()]);
        assert_eq!(both, [GMAIL_READONLY, USERINFO_EMAIL]);
        state.revoke_user("a@x.com");
        assert_eq!(state.consent("a@x.com", &[OPENID.to_owned()]), [OPENID]);
    }
}
