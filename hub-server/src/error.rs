use hub_core::{ConnectionId, Delivery, GroupError};

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The encoded push is larger than the largest frame the hub sends
    /// (`HubConfig::max_outbound_message_bytes`, by default `max_message_bytes`). As a
    /// status: `OUT_OF_RANGE`, since sending it again cannot succeed.
    #[error("push of {size} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// None of the target connections is connected (only with the in-memory provider,
    /// which knows every connection; with a backplane the push is published instead).
    #[error("connection {0} is not connected")]
    NotConnected(ConnectionId),
    /// Local members got it, but it could not be published to the other servers.
    #[error("delivered to {} local member(s), but not to other servers: {source}", delivery.local)]
    Backplane {
        /// What was delivered locally.
        delivery: Delivery,
        /// Why publishing failed.
        #[source]
        source: GroupError,
    },
    /// The group name is invalid.
    #[error(transparent)]
    Group(#[from] GroupError),
}

impl From<PushError> for tonic::Status {
    fn from(e: PushError) -> Self {
        match e {
            PushError::TooLarge { .. } => tonic::Status::out_of_range(e.to_string()),
            PushError::NotConnected(_) => tonic::Status::not_found(e.to_string()),
            // Too large for the backplane: sending it again cannot succeed.
            PushError::Backplane {
                source: GroupError::TooLarge { .. },
                ..
            } => tonic::Status::out_of_range(e.to_string()),
            PushError::Backplane { .. } => tonic::Status::unavailable(e.to_string()),
            PushError::Group(g) => g.into(),
        }
    }
}

/// Why a connection ended, as the `on_disconnect` hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed its side of the stream.
    ClientClosed,
    /// The stream broke (client gone, reset, transport error): the status tonic reported.
    Transport(String),
    /// The server closed it: slow consumer, heartbeat timeout, shutdown, bad stream.
    Server {
        /// The status code the stream ended with.
        code: tonic::Code,
        /// Why.
        message: String,
    },
    /// On a hub with sessions: the stream broke (the message says how) and no resume
    /// came within the session's grace period, or too many sessions were detached.
    SessionExpired(String),
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::ClientClosed => f.write_str("client closed the stream"),
            DisconnectReason::Transport(m) => write!(f, "stream broke: {m}"),
            DisconnectReason::Server { code, message } => {
                write!(f, "closed by server ({code:?}): {message}")
            }
            DisconnectReason::SessionExpired(m) => {
                write!(f, "session expired without a resume after: {m}")
            }
        }
    }
}
