//! What the group history tests share: alice's raw view of the lobby (chat lines
//! and loss notices) and the checks on it.

use std::time::Duration;

use examples::chat::ChatResponse;
use examples::chat::SayRequest;
use examples::chat::chat_response::Event;
use hub_core::proto::PushesLost;
use hub_core::proto::server_control::Kind;

use crate::raw::{Frame, RawConn};

/// The longest wait for one frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// What alice's raw stream shows: chat lines and loss notices.
#[derive(Debug, PartialEq, Clone)]
pub enum Got {
    /// A chat line.
    Line(String),
    /// A loss notice and its count.
    Lost(u64),
}

/// The next chat line or loss notice of the lobby.
pub async fn next(conn: &mut RawConn<ChatResponse>) -> Got {
    loop {
        let frame = conn.next().await.expect("stream up").expect("stream open");
        if let Some(Kind::PushesLost(PushesLost {
            group,
            missed,
            reason,
        })) = Frame::of(&frame).control().cloned()
        {
            assert_eq!(group, "lobby");
            eprintln!("pushes_lost: {missed}: {reason}");
            return Got::Lost(missed);
        }
        if let Some(Event::OnMessage(m)) = frame.event {
            return Got::Line(m.text);
        }
    }
}

/// alice on `url`, raw (to see control frames), member of the lobby.
pub async fn alice(url: &str) -> RawConn<ChatResponse> {
    crate::resume::joined_raw(url, "alice", "lobby").await
}

/// What alice got up to and including the line `last`.
pub async fn until(alice: &mut RawConn<ChatResponse>, last: &str) -> Vec<Got> {
    let mut got = Vec::new();
    loop {
        let g = tokio::time::timeout(WAIT, next(alice))
            .await
            .unwrap_or_else(|_| panic!("{last:?} did not arrive; so far {got:?}"));
        let done = g == Got::Line(last.into());
        got.push(g);
        if done {
            return got;
        }
    }
}

/// Says `text` until it is accepted (the sender's link may be reconnecting).
pub async fn say_until_ok(c: &examples::chat::chat_hub_client::ChatHubClient, text: &str) {
    for _ in 0..200 {
        if c.say(SayRequest { text: text.into() }).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{text:?} was never accepted");
}

/// Every say accepted reaches alice once, in order; a say refused may or may not.
pub fn assert_exactly_once(got: &[Got], ok: &[String], all: usize) {
    let lines: Vec<&str> = got
        .iter()
        .filter_map(|g| match g {
            Got::Line(l) => Some(l.as_str()),
            Got::Lost(_) => None,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        assert!(seen.insert(*l), "{l} delivered twice: {lines:?}");
    }
    let accepted: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| ok.iter().any(|o| o == l))
        .collect();
    assert_eq!(
        accepted,
        ok.iter().map(String::as_str).collect::<Vec<_>>(),
        "accepted says missing or out of order (of {all})"
    );
}
