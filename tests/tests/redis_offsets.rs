//! Loss detection on Redis (`RedisProviderBuilder::group_offsets`): group pushes carry
//! a per-group offset and epoch assigned in the same script as the publish; a server
//! that sees a group's offsets skip, or restart, tells its members of the group
//! (`ServerControl.pushes_lost`) and counts it.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_response::Event;
use examples::chat::{ChatResponse, SayRequest};
use hub_core::proto::PushesLost;
use hub_core::proto::server_control::Kind;
use hub_redis::RedisProvider;
use hub_server::{GroupProvider, HubConfig};
use test_support::RedisServer;
use tests::raw::{Frame, RawConn};
use tests::{TestServer, joined};

const WAIT: Duration = Duration::from_secs(10);
const OFFSETS: &str = "hub:chat.v1.ChatHub:offset:{g:lobby}";

fn provider(url: &str) -> Arc<dyn GroupProvider> {
    Arc::new(
        RedisProvider::builder()
            .url(url)
            .group_offsets(true)
            .presence_ttl(Duration::from_secs(1))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .build()
            .expect("provider"),
    )
}

/// What alice's raw stream shows: chat lines and loss notices.
#[derive(Debug, PartialEq)]
enum Got {
    Line(String),
    Lost(u64),
}

async fn next(conn: &mut RawConn<ChatResponse>) -> Got {
    loop {
        let frame = conn.next().await.expect("stream up").expect("stream open");
        if let Some(Kind::PushesLost(PushesLost { group, missed, .. })) =
            Frame::of(&frame).control().cloned()
        {
            assert_eq!(group, "lobby");
            return Got::Lost(missed);
        }
        if let Some(Event::OnMessage(m)) = frame.event {
            return Got::Line(m.text);
        }
    }
}

async fn say(c: &examples::chat::chat_hub_client::ChatHubClient, text: &str) {
    c.say(SayRequest { text: text.into() }).await.expect("say");
}

#[tokio::test]
async fn skipped_and_restarted_offsets_are_told_to_the_members() {
    let mut redis = RedisServer::start();
    let a = TestServer::start(provider(&redis.url()), HubConfig::default()).await;
    let b = TestServer::start(provider(&redis.url()), HubConfig::default()).await;
    // alice (raw, to see control frames) and carol on B; bob on A.
    let mut alice = tests::resume::joined_raw(&b.url(), "alice", "lobby").await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    let (carol, _) = joined(&b.url(), "lobby", "carol").await;
    // Pushes from the other server and from alice's own (carol's, delivered locally
    // and skipped when Redis sends them back) share the group's offsets: no gap.
    say(&bob, "m1").await;
    say(&carol, "m2").await;
    say(&bob, "m3").await;
    for want in ["m1", "m2", "m3"] {
        assert_eq!(
            tokio::time::timeout(WAIT, next(&mut alice))
                .await
                .expect("in time"),
            Got::Line(want.into())
        );
    }
    assert_eq!(b.handle.metrics().backplane_gaps, 0);
    let offset = redis.cli(&["HGET", OFFSETS, "o"]);
    assert!(
        offset.trim().parse::<u64>().is_ok_and(|o| o >= 3),
        "{offset:?}"
    );

    // Two pushes Redis took offsets for and never delivered (as a publish lost between
    // the broker's acknowledgement and the subscribers would be).
    redis.cli(&["HINCRBY", OFFSETS, "o", "2"]);
    say(&bob, "m4").await;
    assert_eq!(next(&mut alice).await, Got::Lost(2));
    assert_eq!(next(&mut alice).await, Got::Line("m4".into()));
    let m = b.handle.metrics();
    assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (1, 2));

    // Redis restarts empty: what was published meanwhile is gone, and the offsets
    // start again under a new epoch, which alice is told of (how many: unknown).
    redis.restart();
    test_support::eventually("both servers subscribed again", WAIT, async || {
        redis.numsub("hub:chat.v1.ChatHub:g:lobby") == Some(2)
    })
    .await;
    let mut said = false;
    for _ in 0..100 {
        if bob.say(SayRequest { text: "m5".into() }).await.is_ok() {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said, "bob could not say m5 after the restart");
    assert_eq!(next(&mut alice).await, Got::Lost(0));
    assert_eq!(next(&mut alice).await, Got::Line("m5".into()));
    assert_eq!(b.handle.metrics().backplane_gaps, 2);
}
