//! Connection and subscription tokens (JWT).
//!
//! Algorithms follow the configured keys: HS256/384/512 with
//! `client.token_hmac_secret`, RS256/384/512 with `client.token_rsa_public_key`,
//! ES256/384 with `client.token_ecdsa_public_key`. A token whose algorithm has
//! no configured key is invalid (this also closes HS/RS confusion and
//! `alg: none`). `exp` and `nbf` are checked without leeway; `aud` and `iss`
//! when configured.
//!
//! Outcomes map to the protocol in the session (`session/connect.rs`, `session/expiry.rs`): an expired (or not yet
//! valid, `nbf`) connection token answers error 109 (the SDK fetches a new
//! one); any other invalid connection token disconnects with 3500, and so does
//! a subscription token used as a connection token (it has a `channel`
//! claim). A subscription token that expired answers 109 on `subscribe` and
//! 110 on `sub_refresh`; an invalid one answers 103.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::config::ClientConfig;

/// Tokens longer than this are rejected before parsing (`token_max_length`).
pub const TOKEN_MAX_LENGTH: usize = 16 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, Error)]
#[error("client.{key}: {reason}")]
pub struct KeyError {
    key: &'static str,
    reason: String,
}

/// Claims of a connection token.
#[derive(Debug, Deserialize)]
pub struct ConnectClaims {
    /// User id; empty means anonymous.
    #[serde(default)]
    pub sub: String,
    /// Expiry (Unix seconds); absent: never.
    pub exp: Option<i64>,
    /// Connection info visible in presence, join/leave and publications.
    pub info: Option<Box<RawValue>>,
    /// Server-side subscriptions made at connect.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Only subscription tokens have it: such a token is refused here.
    pub channel: Option<String>,
    /// Relay routes to a backend: the target the connection is bound to.
    pub target: Option<String>,
    /// Relay routes to a backend: metadata sent with each event.
    pub meta: Option<Box<RawValue>>,
}

/// Claims of a subscription token.
#[derive(Debug, Deserialize)]
pub struct SubscribeClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub channel: String,
    pub exp: Option<i64>,
    /// Channel info for this subscriber (presence, join/leave, publications).
    pub info: Option<Box<RawValue>>,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    audience: String,
    issuer: String,
}

/// A configured PEM public key; `None` when the setting is empty.
fn pem_key(
    key: &'static str,
    pem: &str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<Option<DecodingKey>, KeyError> {
    if pem.is_empty() {
        return Ok(None);
    }
    parse(pem.as_bytes()).map(Some).map_err(|e| KeyError {
        key,
        reason: e.to_string(),
    })
}

impl Verifier {
    pub fn from_config(c: &ClientConfig) -> Result<Verifier, KeyError> {
        let rsa = pem_key(
            "token_rsa_public_key",
            &c.token_rsa_public_key,
            DecodingKey::from_rsa_pem,
        )?;
        let ec = pem_key(
            "token_ecdsa_public_key",
            &c.token_ecdsa_public_key,
            DecodingKey::from_ec_pem,
        )?;
        let hmac = (!c.token_hmac_secret.is_empty())
            .then(|| DecodingKey::from_secret(c.token_hmac_secret.as_bytes()));
        Ok(Verifier {
            hmac,
            rsa,
            ec,
            audience: c.token_audience.clone(),
            issuer: c.token_issuer.clone(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        if token.len() > TOKEN_MAX_LENGTH {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ec.as_ref(),
            _ => None,
        }
        .ok_or_else(|| TokenError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::new();
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.audience]);
            v.required_spec_claims.insert("aud".into());
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&[&self.issuer]);
            v.required_spec_claims.insert("iss".into());
        }
        jsonwebtoken::decode::<T>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let claims: ConnectClaims = self.decode(token)?;
        if claims.channel.is_some() {
            return Err(TokenError::Invalid(
                "a subscription token is not a connection token".into(),
            ));
        }
        Ok(claims)
    }

    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.decode(token)
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Mint an HS256 token from arbitrary claims (for `groupcast token`, the dev
/// banner and tests).
pub fn mint_hs256(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding of JSON claims cannot fail")
}

/// Does the request carry the API key (`X-API-Key: KEY` or
/// `Authorization: apikey KEY`)? Never with no key configured.
pub fn api_key_ok(key: &str, headers: &HeaderMap) -> bool {
    let expected = key.as_bytes();
    if expected.is_empty() {
        return false;
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
        })
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), expected)
}

/// Is `given` the API key? Never with no key configured. In constant time
/// (for commands over NATS, which carry the key in their body).
pub fn api_key_matches(key: &str, given: &str) -> bool {
    !key.is_empty() && constant_time_eq(given.as_bytes(), key.as_bytes())
}

/// Compare `given` with `expected` in time that depends only on the length
/// of `expected` (not on where they differ, nor on `given`'s length).
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
    use serde_json::json;

    fn verifier(aud: &str, iss: &str) -> Verifier {
        Verifier::from_config(&ClientConfig {
            token_hmac_secret: "secret".into(),
            token_audience: aud.into(),
            token_issuer: iss.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn accepts_valid_and_reports_claims() {
        let t = mint_hs256(
            "secret",
            &json!({"sub":"42","exp":now_unix()+60,"info":{"name":"a"},"channels":["news"]}),
        );
        let c = verifier("", "").verify_connect(&t).unwrap();
        assert_eq!(c.sub, "42");
        assert_eq!(c.channels, ["news"]);
        assert_eq!(c.info.unwrap().get(), r#"{"name":"a"}"#);
        let t = mint_hs256("secret", &json!({"sub":"42"}));
        assert!(
            verifier("", "").verify_connect(&t).is_ok(),
            "exp is optional"
        );
    }

    #[test]
    fn rejects_bad_tokens() {
        let v = verifier("", "");
        let expired = mint_hs256("secret", &json!({"sub":"1","exp":now_unix()-5}));
        assert_eq!(v.verify_connect(&expired).unwrap_err(), TokenError::Expired);
        let wrong = mint_hs256("other", &json!({"sub":"1"}));
        assert!(matches!(
            v.verify_connect(&wrong),
            Err(TokenError::Invalid(_))
        ));
        let nbf = mint_hs256("secret", &json!({"sub":"1","nbf":now_unix()+600}));
        assert_eq!(
            v.verify_connect(&nbf).unwrap_err(),
            TokenError::Expired,
            "not yet valid: the client gets a new token"
        );
        let sub_token = mint_hs256("secret", &json!({"sub":"1","channel":"news"}));
        assert!(matches!(
            v.verify_connect(&sub_token),
            Err(TokenError::Invalid(_))
        ));
        assert!(v.verify_subscribe(&sub_token).is_ok());
        // alg none: header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIn0.";
        assert!(matches!(
            v.verify_connect(none),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify_connect("a.b.c"),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify_connect(&"x".repeat(TOKEN_MAX_LENGTH + 1)),
            Err(TokenError::Invalid(_))
        ));
        // RS256 header with no RSA key configured.
        let rs = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2ln";
        assert!(matches!(v.verify_connect(rs), Err(TokenError::Invalid(_))));
    }

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn rs256_and_es256_with_configured_public_keys() {
        let rsa_public = fixture("rsa_public.pem");
        let v = Verifier::from_config(&ClientConfig {
            token_hmac_secret: "secret".into(),
            token_rsa_public_key: rsa_public.clone(),
            token_ecdsa_public_key: fixture("ec_public.pem"),
            ..Default::default()
        })
        .unwrap();
        let claims = json!({"sub":"7","exp":now_unix()+60});
        let rs = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify_connect(&rs).unwrap().sub, "7");
        let es = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify_connect(&es).unwrap().sub, "7");
        // A tampered signature fails.
        let mut bad = rs.clone();
        bad.truncate(bad.len() - 4);
        bad.push_str("AAAA");
        assert!(matches!(
            v.verify_connect(&bad),
            Err(TokenError::Invalid(_))
        ));
        // Algorithm confusion: HS256 "signed" with the RSA public key as the
        // HMAC secret must not verify, with or without an HMAC key configured.
        let confused = mint_hs256(&rsa_public, &claims);
        assert!(matches!(
            v.verify_connect(&confused),
            Err(TokenError::Invalid(_))
        ));
        let rsa_only = Verifier::from_config(&ClientConfig {
            token_rsa_public_key: rsa_public,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            rsa_only.verify_connect(&confused),
            Err(TokenError::Invalid(_))
        ));
        assert!(rsa_only.verify_connect(&rs).is_ok());
        assert!(
            matches!(rsa_only.verify_connect(&es), Err(TokenError::Invalid(_))),
            "no EC key configured"
        );
    }

    #[test]
    fn audience_and_issuer() {
        let v = verifier("app", "auth");
        let good = mint_hs256("secret", &json!({"sub":"1","aud":"app","iss":"auth"}));
        assert!(v.verify_connect(&good).is_ok());
        for claims in [
            json!({"sub":"1","aud":"other","iss":"auth"}),
            json!({"sub":"1","aud":"app","iss":"other"}),
            json!({"sub":"1"}),
        ] {
            let t = mint_hs256("secret", &claims);
            assert!(
                matches!(v.verify_connect(&t), Err(TokenError::Invalid(_))),
                "{claims}"
            );
        }
    }

    #[test]
    fn bad_pem_names_the_key() {
        let e = Verifier::from_config(&ClientConfig {
            token_rsa_public_key: "not a pem".into(),
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("client.token_rsa_public_key"));
        let e = Verifier::from_config(&ClientConfig {
            token_ecdsa_public_key: "not a pem".into(),
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("client.token_ecdsa_public_key"));
    }
}
