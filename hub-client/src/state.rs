//! Where the connection stands: [`ConnectionState`].

use hub_core::proto::ResumeOutcome;

use crate::error::CloseStatus;

/// Where a [`HubClient`](crate::HubClient)'s connection stands
/// ([`HubClient::state`](crate::HubClient::state), watched with
/// [`HubClient::watch_state`](crate::HubClient::watch_state), and told to the receiver
/// in order with its pushes: [`PushHandler::on_state`](crate::PushHandler::on_state)).
///
/// ```text
/// Connected ──drop──> Reconnecting{1} ──> Reconnecting{2} ... ──> Resumed | ResyncNeeded
///     │                      │                                      │
///     └──goodbye, clean end, └──gave up, refused (auth) ──> Closed <─┘ (and so on)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first stream is up.
    Connected,
    /// The stream dropped and the client is opening a new one: this is attempt
    /// `attempt` (from 1). `cause` is why the last try failed: the drop itself for
    /// the first attempt, then the previous attempt's error. Calls in flight at the
    /// drop failed with [`ClientError::ConnectionLost`](crate::ClientError::ConnectionLost);
    /// calls made now wait for the new stream, within their timeout.
    Reconnecting {
        /// The attempt under way, from 1.
        attempt: u32,
        /// Why the previous try ended.
        cause: CloseStatus,
    },
    /// A new stream resumed the session: the same connection id, its groups kept,
    /// and the pushes missed while the stream was down delivered in order, once each,
    /// before any later one.
    Resumed,
    /// A new stream is up and pushes may have been missed. With `outcome`
    /// `Restored`, another server restored the session from the backplane's record:
    /// the same connection id and groups, push `seq` numbered on; reload what the app
    /// shows, no need to join again. Otherwise it is a *new* connection (a new id, no
    /// groups but its user's): the session could not be resumed (`outcome` says why:
    /// `Expired`, `Unknown`, `Gap`, ...; `Unspecified` when the server offered no
    /// session to resume). Join again and reload what the app shows. (It
    /// stays the state until the next drop; a later `Resumed` resumes the new
    /// connection, so watch changes or [`PushHandler::on_state`](crate::PushHandler::on_state)
    /// rather than only the latest state, or compare
    /// [`HubClient::connection_id`](crate::HubClient::connection_id).)
    ResyncNeeded {
        /// The server's answer to the resume.
        outcome: ResumeOutcome,
        /// Why, in words.
        reason: String,
    },
    /// The connection ended for good: calls fail with
    /// [`ClientError::Disconnected`](crate::ClientError::Disconnected) and this status.
    Closed(CloseStatus),
}

impl ConnectionState {
    /// Whether a stream is up (`Connected`, `Resumed` or `ResyncNeeded`).
    pub fn is_connected(&self) -> bool {
        matches!(
            self,
            ConnectionState::Connected
                | ConnectionState::Resumed
                | ConnectionState::ResyncNeeded { .. }
        )
    }

    /// Whether the client is between streams.
    pub fn is_reconnecting(&self) -> bool {
        matches!(self, ConnectionState::Reconnecting { .. })
    }

    /// Whether the connection ended for good.
    pub fn is_closed(&self) -> bool {
        matches!(self, ConnectionState::Closed(_))
    }
}
