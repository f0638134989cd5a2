//! The wire: one connection to a Redis server or a Redis Cluster, RESP3, with pushes
//! (pub/sub messages, disconnection notices) handed to a sender.

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, Pipeline, ProtocolVersion, RedisFuture,
    RedisResult, TlsCertificates, Value,
};

use crate::keys::slot;

/// Where Redis is.
#[derive(Clone, Debug)]
pub(crate) enum Deployment {
    /// One server (or a proxy that looks like one).
    Single(ConnectionInfo),
    /// The seed nodes of a Redis Cluster, and the certificates given for TLS (the
    /// cluster client takes them apart from the addresses).
    Cluster(Vec<ConnectionInfo>, Option<TlsCertificates>),
}

impl Deployment {
    /// Whether the connections use TLS (`rediss://`).
    pub(crate) fn is_tls(&self) -> bool {
        let tls = |i: &ConnectionInfo| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. });
        match self {
            Deployment::Single(info) => tls(info),
            Deployment::Cluster(nodes, _) => nodes.iter().any(tls),
        }
    }

    /// For logs: the first address.
    pub(crate) fn describe(&self) -> String {
        match self {
            Deployment::Single(info) => info.addr().to_string(),
            Deployment::Cluster(nodes, _) => match nodes.first() {
                Some(n) => format!("cluster via {}", n.addr()),
                None => "an empty cluster".to_owned(),
            },
        }
    }
}

/// Forces RESP3 (pub/sub pushes on a multiplexed connection need it).
pub(crate) fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

/// A multiplexed connection: clones share it, concurrent requests are pipelined.
#[derive(Clone)]
pub(crate) enum Conn {
    /// To one server.
    Single(MultiplexedConnection),
    /// To every primary of a cluster, routed by key slot.
    Cluster(ClusterConnection),
}

/// Opens a connection whose pushes go to `push`. Requests carry no timeout of their
/// own: every caller bounds its wait with `tokio::time::timeout`.
pub(crate) async fn open(
    deployment: &Deployment,
    connect_timeout: Duration,
    push: impl AsyncPushSender,
) -> RedisResult<Conn> {
    match deployment {
        Deployment::Single(info) => {
            let client = redis::Client::open(info.clone())?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(None)
                .set_push_sender(push);
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok(Conn::Single(conn))
        }
        Deployment::Cluster(nodes, tls) => {
            let mut builder = ClusterClientBuilder::new(nodes.clone());
            if let Some(certs) = tls {
                builder = builder.certs(certs.clone());
            }
            let client = builder
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(connect_timeout)
                // The cluster client retries internally; our callers have deadlines of
                // their own and a reconnect loop, so keep its retries short.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .push_sender(push)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

impl Conn {
    /// Whether requests are routed by slot (pipelines must stay within one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Subscribes to `channels` (sharded: `SSUBSCRIBE`); resolves once Redis confirmed
    /// every one, so messages published afterwards arrive.
    pub(crate) async fn subscribe(&self, channels: &[String], sharded: bool) -> RedisResult<()> {
        self.subscription(channels, sharded, true).await
    }

    /// Unsubscribes from `channels`.
    pub(crate) async fn unsubscribe(&self, channels: &[String], sharded: bool) -> RedisResult<()> {
        self.subscription(channels, sharded, false).await
    }

    async fn subscription(&self, channels: &[String], sharded: bool, on: bool) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match self {
            Conn::Single(c) => {
                // Few hundred channels per command keep each frame small.
                for chunk in channels.chunks(256) {
                    let mut c = c.clone();
                    if on {
                        c.subscribe(chunk).await?;
                    } else {
                        c.unsubscribe(chunk).await?;
                    }
                }
                Ok(())
            }
            Conn::Cluster(c) => {
                // One command per channel, routed by the channel's slot: SSUBSCRIBE
                // takes channels of one slot only, and a classic SUBSCRIBE must always
                // land on the same node connection, or a channel subscribed twice on
                // two nodes would receive every message twice.
                try_join_all(channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move {
                        match (sharded, on) {
                            (true, true) => c.ssubscribe(ch).await,
                            (true, false) => c.sunsubscribe(ch).await,
                            (false, true) => c.subscribe(ch).await,
                            (false, false) => c.unsubscribe(ch).await,
                        }
                    }
                }))
                .await
                .map(|_| ())
            }
        }
    }

    /// `PING`.
    pub(crate) async fn ping(&self) -> RedisResult<()> {
        let mut c = self.clone();
        redis::cmd("PING")
            .query_async::<Value>(&mut c)
            .await
            .map(|_| ())
    }

    /// Runs `commands` (each `(routing key, command)`) as pipelines: one for a single
    /// server, one per slot for a cluster (a cluster pipeline must not cross slots).
    /// Replies are ignored; an error fails the pipeline it is in.
    pub(crate) async fn run_pipelined(
        &self,
        commands: Vec<(Vec<u8>, Cmd)>,
    ) -> Vec<(Vec<usize>, RedisResult<()>)> {
        if !self.is_cluster() {
            let n = commands.len();
            let mut pipe = Pipeline::with_capacity(n);
            for (_, cmd) in commands {
                pipe.add_command(cmd).ignore();
            }
            let mut c = self.clone();
            let r = pipe.exec_async(&mut c).await;
            return vec![((0..n).collect(), r)];
        }
        let mut by_slot: Vec<(u16, Vec<usize>, Pipeline)> = Vec::new();
        for (i, (key, cmd)) in commands.into_iter().enumerate() {
            let s = slot(&key);
            match by_slot.iter_mut().find(|(slot, ..)| *slot == s) {
                Some((_, idx, pipe)) => {
                    idx.push(i);
                    pipe.add_command(cmd).ignore();
                }
                None => {
                    let mut pipe = Pipeline::new();
                    pipe.add_command(cmd).ignore();
                    by_slot.push((s, vec![i], pipe));
                }
            }
        }
        futures_util::future::join_all(by_slot.into_iter().map(|(_, idx, pipe)| {
            let mut c = self.clone();
            async move {
                let r = pipe.exec_async(&mut c).await;
                (idx, r)
            }
        }))
        .await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
