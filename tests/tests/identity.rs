//! Who a connection is: the chat hub takes the user from the bearer token of `Connect`
//! (never from a call), refuses `Connect` without a valid token with `UNAUTHENTICATED`
//! before the hello, and the framework's identity hooks (an interceptor's `Identity`
//! in the request extensions, `require_identity`, user pushes) work for any hub.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use examples::auth::TokenSecret;
use examples::chat::chat_hub_server::ChatHubServer;
use examples::chat::{ChatMessage, ChatResponse, JoinRequest, SayRequest, WhisperRequest};
use examples::chat_hub::Chat;
use hub_server::{HubConfig, Hubs, Identity};
use prost::Message;
use tests::raw::{Frame, RawConn};
use tests::{
    Seen, TestServer, channel, connect_with_token, join_notice, joined, login, said, test_secret,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Status};

const WAIT: Duration = Duration::from_secs(10);
const CONNECT: &str = "/chat.v1.ChatHub/Connect";

fn whisper(from: &str, text: &str) -> Seen {
    Seen::Whisper(ChatMessage {
        room: "lobby".into(),
        from: from.into(),
        text: text.into(),
    })
}

/// A `join` frame as a client built from the old proto sends it: `JoinRequest.user`
/// (field 2, now reserved) set to `user`.
fn old_join_frame(id: u8, room: &str, user: &str) -> Vec<u8> {
    let mut join = JoinRequest { room: room.into() }.encode_to_vec();
    join.extend([0x12, user.len() as u8]);
    join.extend(user.as_bytes());
    // ChatRequest: id (field 1, varint), join (field 16, length-delimited: key 0x82 0x01).
    let mut frame = vec![0x08, id, 0x82, 0x01, join.len() as u8];
    frame.extend(join);
    frame
}

#[tokio::test]
async fn a_second_connection_cannot_be_alice() {
    let server = TestServer::memory(HubConfig::default()).await;
    let url = server.url();
    let (alice, alice_rx) = joined(&url, "lobby", "alice").await;
    let (bob, bob_rx) = joined(&url, "lobby", "bob").await;

    // mallory logs in as herself, then joins saying she is alice (the old `user` field).
    let token = login(&url, "mallory").await;
    let auth = format!("Bearer {token}");
    let mut mallory =
        RawConn::<ChatResponse>::open(channel(&url).await, CONNECT, &[("authorization", &auth)])
            .await
            .unwrap();
    mallory.send(old_join_frame(1, "lobby", "alice")).await;
    let reply = tests::raw::next_event(&mut mallory).await;
    let Some(examples::chat::chat_response::Event::Join(members)) = reply.event else {
        panic!("not a join reply: {reply:?}");
    };
    assert_eq!(members.members, ["alice", "bob", "mallory"]);
    assert_eq!(members.count, 3);
    for (rx, n) in [(&alice_rx, 2), (&bob_rx, 1)] {
        assert_eq!(
            rx.wait_for(n, WAIT).await.get(n - 1),
            Some(&join_notice("lobby", "mallory"))
        );
    }

    // Her says and whispers are from mallory.
    let say = examples::chat::ChatRequest {
        id: 2,
        control: None,
        call: Some(examples::chat::chat_request::Call::Say(SayRequest {
            text: "it is me, alice".into(),
        })),
        answer: None,
    };
    mallory.send_msg(&say).await;
    let whisper_bob = examples::chat::ChatRequest {
        id: 3,
        control: None,
        call: Some(examples::chat::chat_request::Call::Whisper(
            WhisperRequest {
                user: "bob".into(),
                text: "alice here, psst".into(),
            },
        )),
        answer: None,
    };
    mallory.send_msg(&whisper_bob).await;
    for id in [2, 3] {
        assert_eq!(
            Frame::of(&tests::raw::next_event(&mut mallory).await).id,
            id
        );
    }
    assert_eq!(
        bob_rx.wait_for(3, WAIT).await[1..],
        [
            said("lobby", "mallory", "it is me, alice"),
            whisper("mallory", "alice here, psst")
        ]
    );

    // bob's whisper to alice reaches alice and not mallory: mallory's next push is the
    // line bob says after it.
    bob.whisper(WhisperRequest {
        user: "alice".into(),
        text: "for alice only".into(),
    })
    .await
    .unwrap();
    bob.say(SayRequest {
        text: "barrier".into(),
    })
    .await
    .unwrap();
    let next = tests::raw::next_event(&mut mallory).await;
    assert_eq!(
        next.event,
        Some(examples::chat::chat_response::Event::OnMessage(
            ChatMessage {
                room: "lobby".into(),
                from: "bob".into(),
                text: "barrier".into(),
            }
        ))
    );
    let seen = alice_rx.wait_for(5, WAIT).await;
    assert_eq!(
        seen[3..],
        [
            whisper("bob", "for alice only"),
            said("lobby", "bob", "barrier")
        ]
    );
    // alice is one connection, mallory another user.
    assert_eq!(server.handle.user_connections("alice").await.unwrap(), 1);
    assert_eq!(server.handle.user_connections("mallory").await.unwrap(), 1);

    // Her leave announces mallory, and alice is still there.
    mallory.close_send();
    let _ = tests::raw::drain(&mut mallory).await;
    assert_eq!(
        bob_rx.wait_for(4, WAIT).await[3],
        Seen::Leave(examples::chat::UserEvent {
            room: "lobby".into(),
            user: "mallory".into()
        })
    );
    assert_eq!(alice.members().await.unwrap().members, ["alice", "bob"]);
}

#[tokio::test]
async fn connect_without_a_valid_token_is_unauthenticated() {
    let server = TestServer::memory(HubConfig::default()).await;
    let url = server.url();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let good = login(&url, "alice").await;
    let (mallory, _) = test_secret().issue("mallory", hour, now).unwrap();
    // mallory's payload under alice's signature.
    let forged = format!(
        "{}.{}",
        mallory.rsplit_once('.').unwrap().0,
        good.rsplit_once('.').unwrap().1
    );
    let (expired, _) = test_secret().issue("alice", hour, now - 2 * hour).unwrap();
    let (other_secret, _) = TokenSecret::random().issue("alice", hour, now).unwrap();
    let cases: [(&str, Option<String>); 7] = [
        ("no authorization", None),
        ("not bearer", Some(format!("Basic {good}"))),
        ("garbage", Some("Bearer v1.bm90.dG9rZW4".into())),
        ("forged", Some(format!("Bearer {forged}"))),
        ("expired", Some(format!("Bearer {expired}"))),
        ("another secret", Some(format!("Bearer {other_secret}"))),
        ("empty bearer", Some("Bearer ".into())),
    ];
    for (what, auth) in &cases {
        let metadata: Vec<(&'static str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        // Refused before the hello: the stream never opens.
        let err = RawConn::<ChatResponse>::open(channel(&url).await, CONNECT, &metadata)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: the stream opened"));
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(!err.message().contains(&good), "{what}: echoes the token");
    }
    let err = connect_with_token(&url, Some(&expired))
        .await
        .err()
        .expect("expired token refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.to_string().contains("expired"), "{err}");
    let m = server.handle.metrics();
    assert_eq!(m.connections_unauthenticated, cases.len() as u64 + 1);
    assert_eq!(m.connections_opened, 0);

    // The real token works.
    let (c, _) = connect_with_token(&url, Some(&good)).await.unwrap();
    assert_eq!(
        c.join(JoinRequest {
            room: "lobby".into()
        })
        .await
        .unwrap()
        .members,
        ["alice"]
    );
}

#[tokio::test]
async fn servers_accept_each_others_tokens_only_with_the_same_secret() {
    let a = TestServer::memory(HubConfig::default()).await;
    let same = TestServer::memory(HubConfig::default()).await;
    let other = TestServer::start_with_secret(
        std::sync::Arc::new(hub_server::MemoryProvider),
        HubConfig::default(),
        TokenSecret::random(),
    )
    .await;
    let token = login(&a.url(), "alice").await;
    let (c, _) = connect_with_token(&same.url(), Some(&token)).await.unwrap();
    assert_eq!(
        c.join(JoinRequest { room: "r".into() })
            .await
            .unwrap()
            .members,
        ["alice"]
    );
    let err = connect_with_token(&other.url(), Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.to_string().contains("signature"), "{err}");
}

/// An auth interceptor as an application writes it: it checks the credentials (here a
/// fixed table) and hands the hub an `Identity` in the request extensions.
#[allow(clippy::result_large_err)]
fn authenticate(mut req: Request<()>) -> Result<Request<()>, Status> {
    let user = match req
        .metadata()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
    {
        Some("key-of-ann") => "ann",
        Some("key-of-ben") => "ben",
        Some(_) => return Err(Status::unauthenticated("unknown key")),
        None => return Ok(req), // anonymous: the hub decides
    };
    req.extensions_mut().insert(Identity::new(user).unwrap());
    Ok(req)
}

#[tokio::test]
async fn an_interceptor_supplies_the_identity_and_user_pushes_follow_it() {
    let hubs = Hubs::builder().require_identity(true).build();
    // No identity provider set: the default takes the interceptor's `Identity`.
    let svc = ChatHubServer::builder(Chat).hubs(&hubs).build().unwrap();
    let handle = svc.handle();
    let (listener, addr) = tests::probe::listener().await;
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(InterceptedService::new(svc, authenticate))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let url = format!("http://{addr}");
    let open = |key: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut options = hub_client::ConnectOptions::default();
            if let Some(key) = key {
                options = options.metadata("x-api-key", key).unwrap();
            }
            let rec = std::sync::Arc::new(tests::Recorder::default());
            examples::chat::chat_hub_client::ChatHubClient::connect_with(
                channel(&url).await,
                options,
                rec.clone(),
            )
            .await
            .map(|c| (c, rec))
        }
    };
    // Anonymous: refused by `require_identity`; a bad key: by the interceptor.
    for key in [None, Some("stolen")] {
        let err = open(key).await.err().expect("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{key:?}: {err:?}");
    }
    assert_eq!(handle.metrics().connections_unauthenticated, 1);

    let (ann1, ann1_rx) = open(Some("key-of-ann")).await.unwrap();
    let (ann2, ann2_rx) = open(Some("key-of-ann")).await.unwrap();
    let (ben, ben_rx) = open(Some("key-of-ben")).await.unwrap();
    for c in [&ann1, &ann2, &ben] {
        c.join(JoinRequest {
            room: "lobby".into(),
        })
        .await
        .unwrap();
    }
    assert_eq!(ben.members().await.unwrap().members, ["ann", "ann", "ben"]);
    assert_eq!(handle.user_connections("ann").await.unwrap(), 2);

    // A push from outside any call to every connection of ann.
    let note = ChatMessage {
        room: "lobby".into(),
        from: "server".into(),
        text: "for ann".into(),
    };
    handle
        .user("ann")
        .unwrap()
        .on_whisper(note.clone())
        .await
        .unwrap();
    // ben got nothing: his next push is the one sent to him after it.
    let barrier = ChatMessage {
        text: "for ben".into(),
        ..note.clone()
    };
    handle
        .user("ben")
        .unwrap()
        .on_whisper(barrier.clone())
        .await
        .unwrap();
    assert_eq!(ben_rx.wait_for(1, WAIT).await, [Seen::Whisper(barrier)]);
    // ann1 saw ann2 and ben join first, ann2 saw ben join.
    for (rx, n) in [(&ann1_rx, 3), (&ann2_rx, 2)] {
        let seen = rx.wait_for(n, WAIT).await;
        assert_eq!(
            seen.get(n - 1),
            Some(&Seen::Whisper(note.clone())),
            "{seen:?}"
        );
    }
    task.abort();
}
