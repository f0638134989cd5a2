//! Who a connection is: the authenticated identity, taken from the `Connect` request.
//!
//! # The trust boundary
//!
//! A connection's identity comes from what was *authenticated* when its `Connect` stream
//! opened: a verified token in the request metadata, or what an authentication layer in
//! front of the hub put into the request extensions. It never comes from a call
//! argument: anything in a call is what the client chose to send.
//!
//! An [`IdentityProvider`] reads the request once, before the hello frame, and answers
//! with an [`Identity`] (authenticated), nothing (anonymous) or a status that refuses
//! the stream (bad credentials: `UNAUTHENTICATED`). A hub that requires an identity
//! ([`HubServiceBuilder::require_identity`](crate::HubServiceBuilder::require_identity))
//! refuses anonymous streams with `UNAUTHENTICATED` as well. Once accepted, the
//! connection's user id is fixed for its whole life: handlers read it with
//! [`Context::user_id`](crate::Context::user_id), member lists show it, and pushes to
//! [`HubHandle::user`](crate::HubHandle::user) reach every connection authenticated as
//! that user, on every server.
//!
//! Three ways to plug in authentication:
//!
//! - A tonic interceptor or tower layer that verifies the request and inserts an
//!   [`Identity`] into its extensions. The default provider, [`FromExtensions`], takes
//!   it from there (a client cannot set extensions; only server-side layers can).
//! - [`BearerToken`]: reads `authorization: Bearer <token>` and hands the token to a
//!   verifier function.
//! - Any [`IdentityProvider`] (a closure of the same shape works), like SignalR's
//!   user-id provider.
//!
//! ```
//! use hub_server::{BearerToken, Identity, Hubs};
//! // Every hub built with `hubs` takes its user from a verified bearer token and
//! // refuses streams without one.
//! let hubs = Hubs::builder()
//!     .identity(BearerToken::new(|token: &str| {
//!         // Verify the signature and expiry here (a JWT library, an HMAC...).
//!         let user = token.strip_prefix("valid:").ok_or_else(|| tonic::Status::unauthenticated("bad token"))?;
//!         Identity::new(user).map_err(|e| tonic::Status::unauthenticated(e.to_string()))
//!     }))
//!     .require_identity(true)
//!     .build();
//! # let _ = hubs;
//! ```

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use hub_core::{GroupError, GroupName, InvalidGroupName};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::{HubServiceBuilder, HubsBuilder};

/// The authenticated identity of a connection: a user id, and optionally what the
/// authenticator knows besides (roles, a tenant...), as a typed value.
///
/// Made by an [`IdentityProvider`] or an authentication layer from verified
/// credentials; see the [module docs](self) for where it comes from.
#[derive(Clone)]
pub struct Identity {
    /// The user id: member lists show it, user pushes target it.
    user_id: Arc<str>,
    /// What else the authenticator attached ([`Identity::with_claims`]).
    claims: Option<Arc<dyn Any + Send + Sync>>,
}

impl Identity {
    /// An identity for `user_id`. The id must be usable as a group name part (not
    /// empty, `$user/<id>` at most [`hub_core::MAX_GROUP_NAME_BYTES`] bytes, no
    /// whitespace or control characters), since every connection of a user is
    /// reachable as one group.
    pub fn new(user_id: &str) -> Result<Self, InvalidGroupName> {
        if user_id.is_empty() {
            return Err(InvalidGroupName::Empty);
        }
        GroupName::reserved("user", user_id)?;
        Ok(Identity {
            user_id: Arc::from(user_id),
            claims: None,
        })
    }

    /// Attaches what the authenticator knows besides the id, for handlers to read with
    /// [`Identity::claims`].
    pub fn with_claims<T: Any + Send + Sync>(mut self, claims: T) -> Self {
        self.claims = Some(Arc::new(claims));
        self
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The claims attached with [`Identity::with_claims`], if they are a `T`.
    pub fn claims<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.claims.as_deref()?.downcast_ref()
    }

    pub(crate) fn user_arc(&self) -> Arc<str> {
        self.user_id.clone()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user_id", &self.user_id)
            .field("claims", &self.claims.is_some())
            .finish()
    }
}

impl PartialEq for Identity {
    /// Two identities are the same user when their ids are equal.
    fn eq(&self, other: &Self) -> bool {
        self.user_id == other.user_id
    }
}

impl Eq for Identity {}

/// What an [`IdentityProvider`] sees of a `Connect` request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    /// The request metadata (`authorization`, ...).
    pub metadata: &'a MetadataMap,
    /// The request extensions, as tower layers and interceptors left them.
    pub extensions: &'a http::Extensions,
    /// The peer's address, when the transport knows it.
    pub remote_addr: Option<SocketAddr>,
}

/// Takes the authenticated identity from a `Connect` request, before the hello frame.
///
/// - `Ok(Some(identity))`: authenticated as `identity`.
/// - `Ok(None)`: no credentials. The connection is anonymous, or refused with
///   `UNAUTHENTICATED` if the hub requires an identity.
/// - `Err(status)`: the stream is refused with `status` (credentials that do not
///   verify: `UNAUTHENTICATED`). Keep the message short and free of the credentials.
///
/// Runs on the request's task for every `Connect`: keep it quick (verify a signature,
/// look in a cache). Checks that must await something belong in a tower layer that
/// inserts the [`Identity`] into the request extensions ([`FromExtensions`]).
///
/// A closure `Fn(&ConnectRequest<'_>) -> Result<Option<Identity>, Status>` is one.
pub trait IdentityProvider: Send + Sync + 'static {
    /// The identity of this request, if it has one.
    fn identify(&self, request: &ConnectRequest<'_>) -> Result<Option<Identity>, Status>;
}

impl<F> IdentityProvider for F
where
    F: Fn(&ConnectRequest<'_>) -> Result<Option<Identity>, Status> + Send + Sync + 'static,
{
    fn identify(&self, request: &ConnectRequest<'_>) -> Result<Option<Identity>, Status> {
        self(request)
    }
}

/// The default provider: the [`Identity`] an authentication layer or interceptor
/// inserted into the request extensions, if any.
///
/// ```
/// // A tonic interceptor in front of the hub (check the token for real there).
/// fn auth(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
///     let user = req.metadata().get("x-verified-user").and_then(|v| v.to_str().ok())
///         .ok_or_else(|| tonic::Status::unauthenticated("no credentials"))?;
///     let identity = hub_server::Identity::new(user)
///         .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
///     req.extensions_mut().insert(identity);
///     Ok(req)
/// }
/// # let _ = auth;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtensions;

impl IdentityProvider for FromExtensions {
    fn identify(&self, request: &ConnectRequest<'_>) -> Result<Option<Identity>, Status> {
        Ok(request.extensions.get::<Identity>().cloned())
    }
}

/// Reads `authorization: Bearer <token>` and asks a verifier who the token is for.
///
/// No `authorization` entry: no identity (anonymous, or refused if the hub requires
/// one). An entry that is not `Bearer <token>` (the scheme is case-insensitive) is
/// refused with `UNAUTHENTICATED`; a token is refused with whatever the verifier
/// returns. The verifier is any `Fn(&str) -> Result<Identity, Status>`.
pub struct BearerToken<V> {
    /// Checks a token and says whose it is.
    verify: V,
}

impl<V> BearerToken<V>
where
    V: Fn(&str) -> Result<Identity, Status> + Send + Sync + 'static,
{
    /// A provider that verifies bearer tokens with `verify`.
    pub fn new(verify: V) -> Self {
        BearerToken { verify }
    }
}

impl<V> std::fmt::Debug for BearerToken<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken").finish_non_exhaustive()
    }
}

impl<V> IdentityProvider for BearerToken<V>
where
    V: Fn(&str) -> Result<Identity, Status> + Send + Sync + 'static,
{
    fn identify(&self, request: &ConnectRequest<'_>) -> Result<Option<Identity>, Status> {
        let Some(value) = request.metadata.get("authorization") else {
            return Ok(None);
        };
        let token = bearer_token(value.as_encoded_bytes())
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        (self.verify)(token).map(Some)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, one or more spaces).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// How a hub finds out who a connection is.
#[derive(Clone)]
pub(crate) struct IdentityConfig {
    /// Reads the identity from the request.
    pub(crate) provider: Arc<dyn IdentityProvider>,
    /// Refuse streams without an identity (`UNAUTHENTICATED`).
    pub(crate) required: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            provider: Arc::new(FromExtensions),
            required: false,
        }
    }
}

impl IdentityConfig {
    /// The identity of a `Connect` request, or the status that refuses it.
    pub(crate) fn identify(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Option<Identity>, Status> {
        match self.provider.identify(request)? {
            None if self.required => Err(Status::unauthenticated(
                "this hub requires authentication: no credentials in the Connect request",
            )),
            found => Ok(found),
        }
    }
}

/// Why [`Context::set_user_id`](crate::Context::set_user_id) failed.
#[derive(Debug, thiserror::Error)]
pub enum SetUserError {
    /// The connection was authenticated when it opened; its user id cannot change.
    #[error("the connection is authenticated; its user id cannot change")]
    Authenticated,
    /// Joining or leaving the user's group failed.
    #[error(transparent)]
    Group(#[from] GroupError),
}

impl From<SetUserError> for Status {
    fn from(e: SetUserError) -> Self {
        match e {
            SetUserError::Authenticated => Status::failed_precondition(e.to_string()),
            SetUserError::Group(g) => g.into(),
        }
    }
}

/// A hub's own identity settings, each overriding the server-wide one when set.
#[derive(Default)]
pub(crate) struct IdentityOverride {
    /// [`HubServiceBuilder::identity`].
    provider: Option<Arc<dyn IdentityProvider>>,
    /// [`HubServiceBuilder::require_identity`].
    required: Option<bool>,
}

impl IdentityOverride {
    /// The hub's settings: its own where it set them, else the server-wide ones.
    pub(crate) fn over(self, server: &IdentityConfig) -> IdentityConfig {
        IdentityConfig {
            provider: self.provider.unwrap_or_else(|| server.provider.clone()),
            required: self.required.unwrap_or(server.required),
        }
    }
}

impl<D> HubServiceBuilder<D> {
    /// How this hub learns who a connection is, overriding the server-wide provider
    /// ([`HubsBuilder::identity`]). Default: [`FromExtensions`].
    pub fn identity(mut self, provider: impl IdentityProvider) -> Self {
        self.identity.provider = Some(Arc::new(provider));
        self
    }

    /// Whether this hub refuses `Connect` streams without an identity, with
    /// `UNAUTHENTICATED` before the hello frame. Overrides the server-wide setting
    /// ([`HubsBuilder::require_identity`]). Default: no.
    pub fn require_identity(mut self, required: bool) -> Self {
        self.identity.required = Some(required);
        self
    }
}

impl HubsBuilder {
    /// How every hub that does not choose its own learns who a connection is.
    /// Default: [`FromExtensions`].
    pub fn identity(mut self, provider: impl IdentityProvider) -> Self {
        self.identity.provider = Arc::new(provider);
        self
    }

    /// Whether hubs that do not say otherwise refuse `Connect` streams without an
    /// identity (`UNAUTHENTICATED`, before the hello frame). Default: no.
    pub fn require_identity(mut self, required: bool) -> Self {
        self.identity.required = required;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<Option<String>, Status> {
        let provider = BearerToken::new(|t: &str| {
            Identity::new(t).map_err(|e| Status::unauthenticated(e.to_string()))
        });
        let req = ConnectRequest {
            metadata,
            extensions,
            remote_addr: None,
        };
        provider
            .identify(&req)
            .map(|i| i.map(|i| i.user_id().to_owned()))
    }

    fn auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().expect("ascii"));
        m
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let ext = http::Extensions::new();
        assert_eq!(request(&MetadataMap::new(), &ext).unwrap(), None);
        assert_eq!(
            request(&auth("Bearer abc"), &ext).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            request(&auth("bearer  abc"), &ext).unwrap().as_deref(),
            Some("abc")
        );
        for bad in [
            "abc",
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearerabc",
        ] {
            let err = request(&auth(bad), &ext).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn a_required_identity_refuses_anonymous_requests() {
        let metadata = MetadataMap::new();
        let mut extensions = http::Extensions::new();
        let req = ConnectRequest {
            metadata: &metadata,
            extensions: &extensions,
            remote_addr: None,
        };
        let optional = IdentityConfig::default();
        assert_eq!(optional.identify(&req).unwrap(), None);
        let required = IdentityConfig {
            required: true,
            ..IdentityConfig::default()
        };
        assert_eq!(
            required.identify(&req).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        extensions.insert(Identity::new("ann").expect("valid").with_claims(7u32));
        let req = ConnectRequest {
            metadata: &metadata,
            extensions: &extensions,
            remote_addr: None,
        };
        let found = required.identify(&req).unwrap().expect("identity");
        assert_eq!(found.user_id(), "ann");
        assert_eq!(found.claims::<u32>(), Some(&7));
        assert_eq!(found.claims::<String>(), None);
    }

    #[test]
    fn user_ids_must_make_a_group_name() {
        assert!(Identity::new("").is_err());
        assert!(Identity::new("a b").is_err());
        assert!(Identity::new("a\u{0}").is_err());
        assert!(Identity::new(&"x".repeat(10_000)).is_err());
        assert!(Identity::new("alice").is_ok());
    }
}
