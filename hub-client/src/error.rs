//! Errors: why a call failed ([`ClientError`]) and why a connection ended
//! ([`CloseStatus`]).

use std::time::Duration;

/// Why a call (or the connection) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The hub answered the call with an error: its status code and message.
    #[error("hub returned {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The connection could not be opened (transport error, or refused by the server).
    #[error("could not connect: {0}")]
    Connect(tonic::Status),
    /// No reply within the call's timeout. The call may still run on the server.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection is gone for good; the reason says why.
    #[error("disconnected: {0}")]
    Disconnected(CloseStatus),
    /// The stream dropped while the call waited for its reply (the reason says why),
    /// and the client reconnects ([`ConnectOptions::reconnect`](crate::ConnectOptions::reconnect)).
    /// The server may or may not have run the call: the client never sends it again.
    /// Retry it only if running it twice is harmless. `code()` is `UNAVAILABLE`.
    #[error("connection lost while the call was in flight: {0}")]
    ConnectionLost(CloseStatus),
    /// The server answered with a frame of a different kind than the call expects.
    #[error("unexpected reply to `{0}`")]
    UnexpectedReply(&'static str),
}

impl ClientError {
    /// The gRPC status code behind the error. Never `Ok`: a call cut short by a
    /// connection that ended cleanly (status `Ok`) did not complete, which is `Unavailable`.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::Status(s) | ClientError::Connect(s) => s.code(),
            ClientError::Timeout(_) => tonic::Code::DeadlineExceeded,
            ClientError::Disconnected(r) if r.code == tonic::Code::Ok => tonic::Code::Unavailable,
            ClientError::Disconnected(r) => r.code,
            ClientError::ConnectionLost(_) => tonic::Code::Unavailable,
            ClientError::UnexpectedReply(_) => tonic::Code::Internal,
        }
    }
}

/// How a connection ended, as the client saw it: the status its stream ended with.
/// (The server side's view, with the cause, is `hub_server::DisconnectReason`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseStatus {
    /// The status the stream ended with (`Ok` for a clean close).
    pub code: tonic::Code,
    /// The reason: the server's goodbye, the status message, or the client's own.
    pub message: String,
}

impl std::fmt::Display for CloseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// The reason given when the connection is gone and nothing more precise is known.
pub(crate) fn gone() -> CloseStatus {
    CloseStatus {
        code: tonic::Code::Unavailable,
        message: "connection closed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn reason(code: Code, message: &str) -> CloseStatus {
        CloseStatus {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn error_codes() {
        let cases = [
            (
                ClientError::Status(tonic::Status::not_found("x")),
                Code::NotFound,
            ),
            (
                ClientError::Status(tonic::Status::internal("panicked")),
                Code::Internal,
            ),
            (
                ClientError::Connect(tonic::Status::permission_denied("no")),
                Code::PermissionDenied,
            ),
            (
                ClientError::Connect(tonic::Status::unavailable("refused")),
                Code::Unavailable,
            ),
            (
                ClientError::Timeout(Duration::from_millis(5)),
                Code::DeadlineExceeded,
            ),
            (
                ClientError::Disconnected(reason(Code::ResourceExhausted, "outbound queue full")),
                Code::ResourceExhausted,
            ),
            (
                ClientError::Disconnected(reason(Code::Unavailable, "server shutting down")),
                Code::Unavailable,
            ),
            (ClientError::UnexpectedReply("join"), Code::Internal),
            (
                ClientError::ConnectionLost(reason(Code::Unknown, "connection reset")),
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn an_error_is_never_ok() {
        // The server ended the stream cleanly while a call waited for its reply.
        let err = ClientError::Disconnected(reason(Code::Ok, "the server closed the stream"));
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[test]
    fn errors_say_what_happened() {
        let shown = ClientError::Status(tonic::Status::not_found("no such room")).to_string();
        assert!(
            shown.contains("NotFound") && shown.contains("no such room"),
            "{shown}"
        );
        let shown = ClientError::Disconnected(reason(Code::Unavailable, "maintenance")).to_string();
        assert!(shown.contains("maintenance"), "{shown}");
        let shown = ClientError::Timeout(Duration::from_secs(2)).to_string();
        assert!(shown.contains("2s"), "{shown}");
    }
}
