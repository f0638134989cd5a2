//! TLS and authentication between hub servers and their backplane: a `redis-server`
//! speaking TLS only (`--port 0 --tls-port`) and a `nats-server --tls`, with a CA and
//! a server certificate the test makes (`test_support::TestCa`, rcgen). Two chat
//! servers and an emitter reach each other through them; a client trusting another CA
//! is refused. A Redis ACL user with a password (`redis://user:pass@`) is accepted,
//! a wrong password and the disabled default user are refused.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_hub_emitter::ChatHubEmitter;
use examples::chat::{ChatMessage, SayRequest};
use hub_nats::NatsProvider;
use hub_nats::async_nats::ConnectOptions;
use hub_redis::{ConnectError, RedisEmitter, RedisProvider, RedisProviderBuilder};
use hub_server::{GroupProvider, HubConfig};
use test_support::{NatsOptions, NatsServer, RedisServer, TestCa};
use tests::{Recorder, TestServer, joined, said};

/// Generous: the machine is shared and slow at times.
const WAIT: Duration = Duration::from_secs(15);

/// Waits until `rx` saw `what`.
async fn arrives(rx: &Recorder, what: &tests::Seen) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if rx.seen().contains(what) {
            return;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "{what:?} did not arrive: {:?}", rx.seen());
        rx.wait_for(rx.seen().len() + 1, deadline - now).await;
    }
}

/// Alice on `a`, bob on `b`, in one room: what alice says reaches bob, and what the
/// emitter pushes reaches both.
async fn chat_crosses(
    a: Arc<dyn GroupProvider>,
    b: Arc<dyn GroupProvider>,
    em: Option<ChatHubEmitter>,
) {
    let a = TestServer::start(a, HubConfig::default()).await;
    let b = TestServer::start(b, HubConfig::default()).await;
    let (alice, arx) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, brx) = joined(&b.url(), "lobby", "bob").await;
    alice
        .say(SayRequest {
            text: "over TLS".into(),
        })
        .await
        .unwrap();
    arrives(&brx, &said("lobby", "alice", "over TLS")).await;
    assert_eq!(a.handle.member_count("lobby").await.unwrap(), 2);
    if let Some(em) = em {
        let msg = ChatMessage {
            room: "lobby".into(),
            from: "game".into(),
            text: "tick".into(),
        };
        em.group("lobby").unwrap().on_message(msg).await.unwrap();
        em.flush().await.unwrap();
        arrives(&arx, &said("lobby", "game", "tick")).await;
        arrives(&brx, &said("lobby", "game", "tick")).await;
    }
}

fn redis_options(url: String) -> RedisProviderBuilder {
    RedisProvider::builder()
        .url(url)
        .presence_ttl(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn redis_over_tls_with_the_deployments_ca() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(ca.server_files());
    assert!(redis.url().starts_with("rediss://"));
    // redis-cli over TLS answers: the server does speak TLS only.
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
    let provider = || async {
        Arc::new(
            redis_options(redis.url())
                .tls_root_certificate(ca.ca_pem())
                .connect()
                .await
                .unwrap(),
        ) as Arc<dyn GroupProvider>
    };
    let em =
        RedisEmitter::connect_with(redis_options(redis.url()).tls_root_certificate(ca.ca_pem()))
            .await
            .unwrap();
    chat_crosses(
        provider().await,
        provider().await,
        Some(ChatHubEmitter::new(em)),
    )
    .await;
}

#[tokio::test]
async fn redis_over_tls_refuses_a_server_another_ca_signed() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = RedisServer::start_tls(ca.server_files());
    let err = redis_options(redis.url())
        .tls_root_certificate(other.ca_pem())
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    // The system's roots do not know the test's CA either.
    let err = redis_options(redis.url()).connect().await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. }
        ),
        "{err}"
    );
    // Certificates need a rediss:// address.
    let plain = format!("redis://127.0.0.1:{}", redis.port());
    let err = redis_options(plain)
        .tls_root_certificate(ca.ca_pem())
        .build()
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidOption(_)), "{err}");
}

#[tokio::test]
async fn redis_acl_user_and_password() {
    let redis = RedisServer::start();
    // What the crate docs say the provider needs, no more.
    let ok = redis.cli(&[
        "ACL",
        "SETUSER",
        "hub",
        "on",
        ">s3cret-pass",
        "~hub:*",
        "&hub:*",
        "+@pubsub",
        "+@scripting",
        "+@hash",
        "+@set",
        "+@sortedset",
        "+@string",
        "+@keyspace",
        "+@connection",
        "+time",
    ]);
    assert_eq!(ok.trim(), "OK");
    // Nobody gets in without the password from now on.
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "off"]).trim(),
        "OK"
    );
    let port = redis.port();
    let url = format!("redis://hub:s3cret-pass@127.0.0.1:{port}");

    let err = RedisProvider::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    let err = RedisProvider::connect(&format!("redis://hub:wrong@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    // Credentials stay out of what the provider shows.
    let provider = redis_options(url.clone()).connect().await.unwrap();
    assert!(!format!("{provider:?}").contains("s3cret"));
    assert!(!hub_server::GroupProvider::describe(&provider).contains("s3cret"));

    let em = RedisEmitter::connect_with(redis_options(url.clone()))
        .await
        .unwrap();
    chat_crosses(
        Arc::new(provider),
        Arc::new(redis_options(url).connect().await.unwrap()),
        Some(ChatHubEmitter::new(em)),
    )
    .await;
}

fn nats_tls(ca: &TestCa) -> ConnectOptions {
    ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.ca_file())
        .connection_timeout(Duration::from_secs(3))
}

#[tokio::test]
async fn nats_over_tls_with_the_deployments_ca() {
    let ca = TestCa::new();
    let nats = NatsServer::start_with(NatsOptions {
        tls: Some(ca.server_files()),
        ..Default::default()
    });
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let provider = || async {
        Arc::new(
            NatsProvider::builder()
                .options(nats_tls(&ca))
                .connect(&url)
                .await
                .unwrap(),
        ) as Arc<dyn GroupProvider>
    };
    let em =
        hub_nats::NatsEmitter::connect_with(NatsProvider::builder().options(nats_tls(&ca)), &url)
            .await
            .unwrap();
    chat_crosses(
        provider().await,
        provider().await,
        Some(ChatHubEmitter::new(em)),
    )
    .await;
}

#[tokio::test]
async fn nats_over_tls_refuses_a_server_another_ca_signed() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let nats = NatsServer::start_with(NatsOptions {
        tls: Some(ca.server_files()),
        ..Default::default()
    });
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let connect = NatsProvider::builder()
        .options(nats_tls(&other))
        .connect(&url);
    let r = tokio::time::timeout(WAIT, connect).await.expect("bounded");
    assert!(r.is_err(), "a server signed by another CA was trusted");
    // A client that does not speak TLS is refused too.
    let plain = format!("nats://127.0.0.1:{}", nats.port());
    let connect = NatsProvider::builder()
        .options(ConnectOptions::new().connection_timeout(Duration::from_secs(3)))
        .connect(&plain);
    let r = tokio::time::timeout(WAIT, connect).await.expect("bounded");
    assert!(r.is_err(), "a plain client got in");
}
