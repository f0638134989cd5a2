//! Other servers' subjects this server listens on: while it holds a connection whose
//! id names another server (a session restored here from that server's record), the
//! sends, asks and commands routed to that server's subject by the id must reach it
//! here. Subscribed on the first such connection, dropped with the last (the count
//! is the inbox's, `Inbox::adopt_node`).

use async_nats::Subscriber;
use futures_util::StreamExt;
use hub_core::remote::{Inbox, Via};
use hub_core::{GroupError, NodeId};
use tokio_util::sync::CancellationToken;

use crate::BACKPLANE;
use crate::state::Inner;

/// Reads another server's subject until stopped: only the connections held here
/// are served (the inbox leaves the others alone).
async fn read_adopted(mut sub: Subscriber, inbox: Inbox, stop: CancellationToken) {
    loop {
        tokio::select! {
            // Stopped first: nothing more of it is read once released.
            biased;
            _ = stop.cancelled() => return,
            msg = sub.next() => match msg {
                Some(msg) => {
                    inbox.receive(msg.payload, Via::Node);
                }
                None => return,
            },
        }
    }
}

impl Inner {
    /// Subscribes to server `node`'s subject unless it already is, and waits until our
    /// NATS server has registered the subscription.
    pub(crate) async fn listen_to_node(&self, node: NodeId) -> Result<(), GroupError> {
        let mut adopted = self.adopted.lock().await;
        if adopted.contains_key(&node) {
            return Ok(());
        }
        self.wait_ready().await?;
        self.check_connected("restore")?;
        let subject = self.subjects.node(node);
        let sub = self
            .bounded("subscribe", self.config.op_timeout, async {
                self.client.subscribe(subject.clone()).await.map_err(|e| {
                    GroupError::unavailable(BACKPLANE, format!("subscribe to {subject} failed"), e)
                })
            })
            .await?;
        let stop = self.cancel.child_token();
        tokio::spawn(read_adopted(sub, self.inbox.clone(), stop.clone()));
        let guard = stop.drop_guard();
        // On error the guard is dropped here, which ends the reader and unsubscribes.
        self.round_trip("subscribe", self.config.op_timeout).await?;
        adopted.insert(node, guard);
        tracing::debug!(hub = self.hub, %node, %subject, "listening on another server's subject");
        Ok(())
    }

    /// Drops the subscription to server `node`'s subject, unless a connection naming
    /// it was restored here meanwhile.
    pub(crate) async fn stop_listening_to_node(&self, node: NodeId) {
        let mut adopted = self.adopted.lock().await;
        if self.inbox.is_adopted(node) {
            return;
        }
        // Dropping the guard stops the reader, whose subscriber unsubscribes.
        if adopted.remove(&node).is_some() {
            tracing::debug!(hub = self.hub, %node, "stopped listening on another server's subject");
        }
    }
}
