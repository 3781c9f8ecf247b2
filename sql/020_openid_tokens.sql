-- OpenID tokens (spec: Client-Server API, OpenID): a user's short-lived proof of identity
-- for a third party, which asks GET /_matrix/federation/v1/openid/userinfo. Only a
-- hash of each token is kept.
CREATE TABLE openid_tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);

CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
