//! How to connect: [`ConnectOptions`].

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::error::ClientError;

/// How to connect.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Metadata sent with the `Connect` request (e.g. `authorization`).
    pub metadata: MetadataMap,
    /// Default time limit of each call. `None`: wait forever. Default 30 s.
    pub call_timeout: Option<Duration>,
    /// How long to wait for the server's hello. Default 10 s.
    pub connect_timeout: Duration,
    /// How often the client pings the server (measures latency). `None`: never. Default 10 s.
    pub ping_interval: Option<Duration>,
    /// The server is considered gone after this long without a frame from it.
    /// `None`: three times the server's heartbeat interval (from its hello), or never
    /// if it sends none. Default `None`.
    pub dead_after: Option<Duration>,
    /// Frames the client may queue for sending before calls wait. Default 256.
    pub send_queue: usize,
    /// The largest frame the client accepts from the server, in bytes. A larger one
    /// ends the connection (`OUT_OF_RANGE`), so make it at least the server's
    /// `max_message_bytes` (its hello says it). Default 4 MiB, tonic's default, four
    /// times the server's default.
    pub max_message_bytes: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            metadata: MetadataMap::new(),
            call_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(10)),
            dead_after: None,
            send_queue: 256,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl ConnectOptions {
    /// Adds an ASCII metadata entry (an invalid value is refused).
    pub fn metadata(mut self, key: &'static str, value: &str) -> Result<Self, ClientError> {
        let v: AsciiMetadataValue = value.parse().map_err(|_| {
            ClientError::Connect(tonic::Status::invalid_argument(format!(
                "invalid metadata value for {key}"
            )))
        })?;
        self.metadata.insert(key, v);
        Ok(self)
    }

    /// Sets [`ConnectOptions::call_timeout`].
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::ping_interval`].
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`ConnectOptions::dead_after`].
    pub fn dead_after(mut self, after: Option<Duration>) -> Self {
        self.dead_after = after;
        self
    }

    /// Sets [`ConnectOptions::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn invalid_metadata_is_refused() {
        let err = ConnectOptions::default()
            .metadata("x-user", "caf\u{e9}\n")
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let ok = ConnectOptions::default()
            .metadata("x-user", "alice")
            .unwrap();
        assert_eq!(ok.metadata.get("x-user").unwrap(), "alice");
    }
}
