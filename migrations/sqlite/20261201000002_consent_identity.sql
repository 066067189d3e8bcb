-- Each stored consent gets its own id: the owner's disconnect link is signed
-- over it, so a link issued for an earlier consent acts on no later one.
-- Consents stored before this migration get a fresh id (links issued for
-- them before the upgrade carry none and are refused; `subscriptions
-- authorize-link` prints a current one).
ALTER TABLE oauth_tokens ADD COLUMN consent_id TEXT NOT NULL DEFAULT '';
UPDATE oauth_tokens SET consent_id = lower(hex(randomblob(16))) WHERE consent_id = '';
