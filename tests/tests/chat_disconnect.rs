//! The chat hub when a member goes away: the room is told, counts drop, and
//! nothing more is sent to the gone connection.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use examples::chat::{ChatMessage, SayRequest, UserEvent, WhisperRequest};
use hub_client::ClientError;
use hub_server::HubConfig;
use tests::{Seen, TestServer, join_notice, joined, said};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_disconnected_member_leaves_its_room() {
    let server = TestServer::memory(HubConfig::default()).await;
    let url = server.url();
    let (alice, alice_rx) = joined(&url, "lobby", "alice").await;
    let (bob, bob_rx) = joined(&url, "lobby", "bob").await;
    let (carol, carol_rx) = joined(&url, "lobby", "carol").await;
    assert_eq!(
        alice_rx.wait_for(2, WAIT).await,
        vec![join_notice("lobby", "bob"), join_notice("lobby", "carol")]
    );
    assert_eq!(server.handle.member_count("lobby").await.unwrap(), 3);

    let bob_id = bob.connection_id().to_owned();
    drop(bob);
    let leave = Seen::Leave(UserEvent {
        room: "lobby".into(),
        user: "bob".into(),
    });
    assert_eq!(alice_rx.wait_for(3, WAIT).await[2], leave);
    assert_eq!(carol_rx.wait_for(1, WAIT).await[0], leave);

    let members = alice.members().await.unwrap();
    assert_eq!(
        (members.count, members.members),
        (2, vec!["alice".to_string(), "carol".to_string()])
    );
    assert_eq!(server.handle.member_count("lobby").await.unwrap(), 2);
    assert_eq!(server.handle.connection_count(), 2);
    assert_eq!(server.handle.user_connections("bob").await.unwrap(), 0);

    // The room goes on without bob, who gets nothing more.
    let seen_by_bob = bob_rx.seen().len();
    carol
        .say(SayRequest {
            text: "still here".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        alice_rx.wait_for(4, WAIT).await[3],
        said("lobby", "carol", "still here")
    );
    let err = alice
        .whisper(WhisperRequest {
            user: "bob".into(),
            text: "hello?".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == Code::NotFound),
        "{err:?}"
    );
    // Nothing can reach bob: the server has no connection of his left to push to (a
    // push to his id is refused), so what he saw is what he saw before leaving.
    let to_bob = server
        .handle
        .connection(bob_id.parse().unwrap())
        .on_message(ChatMessage {
            room: "lobby".into(),
            from: "carol".into(),
            text: "are you there?".into(),
        })
        .await;
    assert!(
        matches!(to_bob, Err(hub_server::PushError::NotConnected(_))),
        "{to_bob:?}"
    );
    assert_eq!(bob_rx.seen().len(), seen_by_bob);
    let m = server.handle.metrics();
    assert_eq!((m.connections_opened, m.connections_closed), (3, 1));
}

#[tokio::test]
async fn leaving_a_room_tells_the_others() {
    let server = TestServer::memory(HubConfig::default()).await;
    let url = server.url();
    let (alice, alice_rx) = joined(&url, "lobby", "alice").await;
    let (bob, _) = joined(&url, "lobby", "bob").await;
    bob.leave().await.unwrap();
    let leave = Seen::Leave(UserEvent {
        room: "lobby".into(),
        user: "bob".into(),
    });
    assert_eq!(alice_rx.wait_for(2, WAIT).await[1], leave);
    assert_eq!(alice.members().await.unwrap().count, 1);
    // Not in a room any more.
    let err = bob.say(SayRequest { text: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}
