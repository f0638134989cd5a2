//! A tonic server and its clients joined in memory (`tokio::io::duplex`), with no socket.
//!
//! Tests of timers run on paused time (`tokio::time::pause()`): the runtime moves the
//! clock to the next timer as soon as every task waits. Over a socket, a task that waits
//! for bytes still in the kernel looks idle, so the clock would jump past a heartbeat
//! that is on its way. In memory, writing the bytes wakes the reader at once, so time
//! moves only when nothing is left to do, and a test can assert exact virtual times.

use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// The bytes each direction of a connection may hold before the writer waits.
const BUFFER: usize = 64 * 1024;

/// A server reached through [`MemoryServer::channel`]; stopped on drop.
pub struct MemoryServer {
    connect: mpsc::UnboundedSender<DuplexStream>,
    task: JoinHandle<()>,
}

impl MemoryServer {
    /// Serves `router` (e.g. `Server::builder().add_service(svc)`) in memory.
    pub fn serve(router: tonic::transport::server::Router) -> Self {
        let (connect, incoming) = mpsc::unbounded_channel::<DuplexStream>();
        let incoming = futures_util::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(incoming),
            Ok::<_, std::io::Error>,
        );
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        MemoryServer { connect, task }
    }

    /// A channel to the server: each connection it opens is a new in-memory pipe.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_static("http://in-memory.invalid")
            .connect_with_connector(Connector(self.connect.clone()))
            .await
            .expect("in-memory connect")
    }
}

impl Drop for MemoryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a pipe and hands the server its end.
#[derive(Clone)]
struct Connector(mpsc::UnboundedSender<DuplexStream>);

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<DuplexStream>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client, server) = tokio::io::duplex(BUFFER);
        let sent = self
            .0
            .send(server)
            .map(|()| TokioIo::new(client))
            .map_err(|_| std::io::Error::other("the in-memory server is gone"));
        std::future::ready(sent)
    }
}
