//! State shared by the [`HubClient`](crate::HubClient) handles and the connection's
//! reader task.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::error::{ClientError, DisconnectReason};
use crate::spec::ClientSpec;

/// Calls waiting for their reply, by call id.
pub(crate) type Pending<E> = HashMap<u64, oneshot::Sender<Result<E, ClientError>>>;

pub(crate) struct Shared<S: ClientSpec> {
    /// Calls waiting for their reply, by id; `None` once the connection is gone.
    pub(crate) pending: Mutex<Option<Pending<S::Event>>>,
    /// Why the connection ended, once it has.
    pub(crate) closed: watch::Sender<Option<DisconnectReason>>,
    /// The last measured round trip.
    pub(crate) latency: Mutex<Option<Duration>>,
}
