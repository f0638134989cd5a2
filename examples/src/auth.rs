//! Who a chat connection is: signed bearer tokens and the development login.
//!
//! `chat.v1.ChatHub/Connect` needs `authorization: Bearer <token>` metadata. The user
//! name is the token's, never a call argument, so a connection can only be the user its
//! token names. Tokens come from the development login (`chat.v1.ChatLogin/Login`,
//! [`Login`]), or from whatever identity provider fronts the server, as long as it signs
//! them the same way with the same secret.
//!
//! # The token format
//!
//! `v1.<payload>.<signature>`, where `<payload>` is the base64url (no padding) of the
//! JSON object `{"sub": "<user>", "exp": <expiry, seconds since the Unix epoch>}` and
//! `<signature>` the base64url (no padding) of HMAC-SHA256(secret, `v1.<payload>`).
//! A token is accepted if its signature verifies (compared in constant time), it has
//! not expired, and its user name follows the rules of [`valid_user`].
//!
//! The development login asks for no password: whoever can reach it can log in under
//! any valid name. It stands in for a real identity provider; run `chat-server
//! --login off --token-secret ...` where that matters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use hub_server::{BearerToken, Identity};
use sha2::Sha256;
use tonic::{Request, Response, Status};

use crate::login::chat_login_server::ChatLogin;
use crate::login::{LoginReply, LoginRequest};

/// The longest user name, in bytes.
pub const MAX_USER_NAME: usize = 64;

/// The shortest secret [`TokenSecret::new`] accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The longest token [`TokenSecret::verify`] looks at, in bytes (a 64-byte name makes
/// one of about 200).
const MAX_TOKEN_BYTES: usize = 1024;

const PREFIX: &str = "v1.";

type HmacSha256 = Hmac<Sha256>;

/// Why a token or a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `v1.<payload>.<signature>` with base64url parts and a JSON payload.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match (another secret, or a changed payload).
    #[error("token signature does not verify")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("token expired")]
    Expired,
    /// The user name breaks the rules of [`valid_user`].
    #[error("user name must be 1 to {MAX_USER_NAME} bytes with no spaces or control characters")]
    BadUser,
    /// A secret shorter than [`MIN_SECRET_BYTES`].
    #[error("a token secret needs at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
}

/// Whether `user` may be a chat user name: 1 to [`MAX_USER_NAME`] bytes, no whitespace
/// or control characters.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_NAME
        && !user.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user name.
    pub user: String,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// The HMAC key that signs and verifies tokens. Servers that must accept each other's
/// tokens (behind one load balancer) need the same one.
#[derive(Clone)]
pub struct TokenSecret {
    /// The keyed MAC, cloned for each token.
    mac: HmacSha256,
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenSecret {
    /// A secret from these bytes (at least [`MIN_SECRET_BYTES`]).
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::WeakSecret)?;
        Ok(TokenSecret { mac })
    }

    /// A fresh random secret (32 bytes from the OS's generator): tokens it signs are
    /// good on this process only.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::new(&bytes).expect("32 bytes is long enough")
    }

    fn sign(&self, signed: &str) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `user`, good until `now + ttl`.
    pub fn issue(
        &self,
        user: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, u64), TokenError> {
        if !valid_user(user) {
            return Err(TokenError::BadUser);
        }
        let expires_at = unix(now).saturating_add(ttl.as_secs());
        let payload = serde_json::json!({ "sub": user, "exp": expires_at }).to_string();
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
        let signature = URL_SAFE_NO_PAD.encode(self.sign(&signed));
        Ok((format!("{signed}.{signature}"), expires_at))
    }

    /// What `token` says, if it was signed with this secret and is still good at `now`.
    /// The signature is checked (in constant time) before the payload is read.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (payload, signature) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.is_empty() || signature.is_empty() || signature.contains('.') {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(&token.as_bytes()[..PREFIX.len() + payload.len()]);
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let user = claims["sub"].as_str().ok_or(TokenError::Malformed)?;
        let expires_at = claims["exp"].as_u64().ok_or(TokenError::Malformed)?;
        if unix(now) >= expires_at {
            return Err(TokenError::Expired);
        }
        if !valid_user(user) {
            return Err(TokenError::BadUser);
        }
        Ok(Claims {
            user: user.to_owned(),
            expires_at,
        })
    }

    /// The hub's identity provider: the user of a valid `authorization: Bearer <token>`,
    /// `UNAUTHENTICATED` for a token that does not verify.
    pub fn identity_provider(
        &self,
    ) -> BearerToken<impl Fn(&str) -> Result<Identity, Status> + Send + Sync + 'static> {
        let secret = self.clone();
        BearerToken::new(move |token: &str| {
            let claims = secret
                .verify(token, SystemTime::now())
                .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?;
            Identity::new(&claims.user)
                .map(|id| id.with_claims(claims))
                .map_err(|_| Status::unauthenticated("invalid token: bad user name"))
        })
    }
}

/// The development login, `chat.v1.ChatLogin/Login`: signs a token for any valid user
/// name, no password asked. Serve it only where that is acceptable.
#[derive(Debug, Clone)]
pub struct Login {
    /// Signs the tokens.
    secret: TokenSecret,
    /// How long a token is good for.
    ttl: Duration,
}

impl Login {
    /// A login that signs with `secret` tokens good for `ttl`.
    pub fn new(secret: TokenSecret, ttl: Duration) -> Self {
        Login { secret, ttl }
    }
}

#[tonic::async_trait]
impl ChatLogin for Login {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let user = req.into_inner().user;
        let (token, expires_at) = self
            .secret
            .issue(&user, self.ttl, SystemTime::now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(LoginReply {
            token,
            user,
            expires_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn secret(byte: u8) -> TokenSecret {
        TokenSecret::new(&[byte; 32]).expect("secret")
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let s = secret(1);
        let now = SystemTime::now();
        let (token, exp) = s.issue("alice", HOUR, now).expect("issue");
        assert_eq!(exp, unix(now) + 3600);
        assert_eq!(
            s.verify(&token, now),
            Ok(Claims {
                user: "alice".into(),
                expires_at: exp
            })
        );
        assert_eq!(s.verify(&token, now + HOUR), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_of_another_secret_or_changed_ones_are_refused() {
        let now = SystemTime::now();
        let (token, _) = secret(1).issue("alice", HOUR, now).expect("issue");
        assert_eq!(secret(2).verify(&token, now), Err(TokenError::BadSignature));
        // Swap in a payload naming someone else, keeping alice's signature.
        let (mallory, _) = secret(1).issue("mallory", HOUR, now).expect("issue");
        let forged = format!(
            "{}.{}",
            mallory.rsplit_once('.').expect("dot").0,
            token.rsplit_once('.').expect("dot").1
        );
        assert_eq!(
            secret(1).verify(&forged, now),
            Err(TokenError::BadSignature)
        );
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","exp":99999999999}"#);
        assert_eq!(
            secret(1).verify(&format!("v1.{payload}.AAAA"), now),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "v1.",
            "v1..",
            "v2.a.b",
            "alice",
            "v1.!!!.$$$",
            &"v1.a".repeat(500),
        ] {
            assert_eq!(
                secret(1).verify(bad, now),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_and_secrets_are_checked() {
        let now = SystemTime::now();
        for bad in ["", "a b", "tab\t", "nul\0", &"x".repeat(MAX_USER_NAME + 1)] {
            assert_eq!(
                secret(1).issue(bad, HOUR, now),
                Err(TokenError::BadUser),
                "{bad:?}"
            );
        }
        assert!(
            secret(1)
                .issue(&"x".repeat(MAX_USER_NAME), HOUR, now)
                .is_ok()
        );
        assert_eq!(
            TokenSecret::new(&[0; 31]).unwrap_err(),
            TokenError::WeakSecret
        );
        // Two random secrets differ.
        let (token, _) = TokenSecret::random().issue("a", HOUR, now).expect("issue");
        assert_eq!(
            TokenSecret::random().verify(&token, now),
            Err(TokenError::BadSignature)
        );
    }
}
