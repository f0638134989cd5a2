//! The chat hub end to end on the in-memory provider: the basics every later test builds on.

use std::time::Duration;

use examples::chat::{SayRequest, WhisperRequest};
use hub_server::HubConfig;
use tests::{TestServer, join_notice, joined, said};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn join_say_whisper_members() {
    let server = TestServer::memory(HubConfig::default()).await;
    let url = server.url();
    let (alice, alice_rx) = joined(&url, "lobby", "alice").await;
    let (bob, bob_rx) = joined(&url, "lobby", "bob").await;
    assert_eq!(
        alice_rx.wait_for(1, WAIT).await,
        vec![join_notice("lobby", "bob")]
    );

    bob.say(SayRequest {
        text: "hi all".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        alice_rx.wait_for(2, WAIT).await[1],
        said("lobby", "bob", "hi all")
    );

    alice
        .whisper(WhisperRequest {
            user: "bob".into(),
            text: "psst".into(),
        })
        .await
        .unwrap();
    let bob_seen = bob_rx.wait_for(1, WAIT).await;
    assert!(
        matches!(&bob_seen[0], tests::Seen::Whisper(m) if m.from == "alice" && m.text == "psst")
    );

    let members = alice.members().await.unwrap();
    assert_eq!(
        members.members,
        vec!["alice".to_string(), "bob".to_string()]
    );
    assert_eq!(members.count, 2);
    // Bob never hears his own message: nothing but the whisper before the barrier.
    assert_eq!(
        bob_rx
            .barrier(&server.handle, &bob.connection_id(), WAIT)
            .await
            .len(),
        1
    );
}
