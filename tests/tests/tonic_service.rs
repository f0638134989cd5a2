//! A hub is an ordinary tonic service: it serves next to other services, under tower
//! layers and interceptors, and its `Context` sees what they left in the request.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::task::{Context, Poll};

use hub_client::{ClientError, ConnectOptions};
use hub_server::HubConfig;
use tests::probe::proto::probe_hub_client::ProbeHubClient;
use tests::probe::{ProbeServer, Tag, channel, listener};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Status};

fn serve<F>(listener: tokio::net::TcpListener, serve: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(tokio_stream::wrappers::TcpListenerStream) -> tokio::task::JoinHandle<()>,
{
    serve(tokio_stream::wrappers::TcpListenerStream::new(listener))
}

#[tokio::test]
async fn the_hub_serves_next_to_other_services() {
    let (probe, _hubs, _) = ProbeServer::service(HubConfig::default());
    // The chat hub needs its login next to it: `joined` logs in first.
    let secret = examples::auth::TokenSecret::random();
    let chat = examples::chat_service(&hub_server::Hubs::new(), &secret).unwrap();
    let login = examples::login_service(&secret, examples::DEFAULT_TOKEN_TTL);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<tests::probe::proto::probe_hub_server::ProbeHubServer<tests::probe::Probe>>()
        .await;
    let (listener, addr) = listener().await;
    let task = serve(listener, |incoming| {
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(chat)
                .add_service(login)
                .add_service(probe)
                .serve_with_incoming(incoming)
                .await;
        })
    });
    let url = format!("http://{addr}");
    let ch = channel(&url).await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "test.v1.ProbeHub".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Both hubs on the same channel.
    let probe = ProbeHubClient::connect(ch.clone(), ()).await.unwrap();
    assert_eq!(
        probe.whoami().await.unwrap().connection_id,
        probe.connection_id()
    );
    let (chat, _) = tests::joined(&url, "lobby", "alice").await;
    assert_eq!(
        chat.members().await.unwrap().members,
        vec!["alice".to_string()]
    );
    task.abort();
}

/// An auth check as users write it: refuses a `Connect` without the token, and
/// tells the hub who the caller is through the request extensions.
#[allow(clippy::result_large_err)]
fn check_token(mut req: Request<()>) -> Result<Request<()>, Status> {
    match req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some("Bearer let-me-in") => {
            req.extensions_mut().insert(Tag("from-interceptor".into()));
            Ok(req)
        }
        _ => Err(Status::unauthenticated("no valid token")),
    }
}

#[tokio::test]
async fn an_interceptor_can_refuse_and_annotate_connections() {
    let (probe, _hubs, _) = ProbeServer::service(HubConfig::default());
    let (listener, addr) = listener().await;
    let task = serve(listener, |incoming| {
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(InterceptedService::new(probe, check_token))
                .serve_with_incoming(incoming)
                .await;
        })
    });
    let url = format!("http://{addr}");

    let err = ProbeHubClient::connect(channel(&url).await, ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Connect(s) if s.code() == Code::Unauthenticated),
        "{err:?}"
    );

    // The token from connect options...
    let options = ConnectOptions::default()
        .metadata("authorization", "Bearer let-me-in")
        .unwrap();
    let c = ProbeHubClient::connect_with(channel(&url).await, options, ())
        .await
        .unwrap();
    assert_eq!(c.whoami().await.unwrap().extension_tag, "from-interceptor");

    // ...or from a client-side interceptor on the channel.
    #[allow(clippy::result_large_err)]
    fn add_token(mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert("authorization", "Bearer let-me-in".parse().expect("ascii"));
        Ok(req)
    }
    let intercepted = InterceptedService::new(channel(&url).await, add_token);
    let c = ProbeHubClient::connect_with(intercepted, ConnectOptions::default(), ())
        .await
        .unwrap();
    let me = c.whoami().await.unwrap();
    assert_eq!(me.extension_tag, "from-interceptor");
    assert_eq!(me.connection_id, c.connection_id());
    task.abort();
}

/// A tower layer that tags every request and counts them.
#[derive(Clone)]
struct Tagging<S> {
    inner: S,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S, B> tower::Service<http::Request<B>> for Tagging<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        req.extensions_mut().insert(Tag("from-layer".into()));
        self.inner.call(req)
    }
}

#[tokio::test]
async fn a_tower_layer_wraps_the_hub() {
    let (probe, _hubs, _) = ProbeServer::service(HubConfig::default());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer_seen = seen.clone();
    let (listener, addr) = listener().await;
    let task = serve(listener, |incoming| {
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .layer(tower::layer::layer_fn(move |inner| Tagging {
                    inner,
                    seen: layer_seen.clone(),
                }))
                .add_service(probe)
                .serve_with_incoming(incoming)
                .await;
        })
    });
    let c = ProbeHubClient::connect(channel(&format!("http://{addr}")).await, ())
        .await
        .unwrap();
    let me = c.whoami().await.unwrap();
    assert_eq!(me.extension_tag, "from-layer");
    assert!(me.has_remote_addr);
    // One HTTP request per connection, however many calls it carries.
    for _ in 0..5 {
        c.whoami().await.unwrap();
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn connecting_to_a_server_without_the_hub_is_a_clear_error() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (listener, addr) = listener().await;
    let task = serve(listener, |incoming| {
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await;
        })
    });
    let err = ProbeHubClient::connect(channel(&format!("http://{addr}")).await, ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Connect(s) if s.code() == Code::Unimplemented),
        "{err:?}"
    );
    task.abort();
}
