//! A transport over several hub servers: each connection (the first, and each one a
//! reconnect opens) dials the servers' addresses in order and takes the first that
//! accepts. With sessions shared through the backplane, a client whose server died
//! reconnects to the next one and resumes there (`RESTORED`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// How long one address may take to accept before the next is tried (a host that
/// drops packets instead of refusing).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// A connector dialling hub servers in order, taking the first that accepts (a dead
/// server refuses at once, so the next one is tried without waiting).
#[derive(Clone, Debug)]
pub struct Failover(Arc<[SocketAddr]>);

impl Failover {
    /// Dials `addrs` in this order.
    pub fn new(addrs: impl Into<Arc<[SocketAddr]>>) -> Self {
        Failover(addrs.into())
    }

    /// A channel (plain HTTP/2 over TCP, `TCP_NODELAY`) whose connections this
    /// connector dials; `connect_timeout` bounds each dial in all. Connects once now.
    pub async fn channel(
        self,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let first = self
            .0
            .first()
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        Endpoint::from_shared(format!("http://{first}"))
            .expect("a socket address is a valid URI")
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .connect_with_connector(self)
            .await
    }
}

impl tower::Service<http::Uri> for Failover {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addrs = self.0.clone();
        Box::pin(async move {
            let mut last = None;
            for addr in addrs.iter() {
                match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        s.set_nodelay(true)?;
                        return Ok(TokioIo::new(s));
                    }
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => last = Some(std::io::ErrorKind::TimedOut.into()),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no server addresses")))
        })
    }
}
