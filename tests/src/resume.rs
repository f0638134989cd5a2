//! A raw chat stream that opens and resumes sessions by hand (`hub-resume` and
//! `hub-resume-seq` metadata), for the sessions tests: the frames as the server
//! writes them, with their `seq`.

use examples::chat::chat_request::Call;
use examples::chat::chat_response::Event;
use examples::chat::{ChatRequest, ChatResponse};
use hub_core::proto::server_control::Kind;
use hub_core::proto::{ConnectionInfo, Position, ResumeOutcome, ResumePositions};
use prost::Message as _;

use crate::channel;
use crate::raw::{Frame, RawConn};

/// The chat hub's one method.
pub const CONNECT: &str = "/chat.v1.ChatHub/Connect";

/// A raw chat stream as `token`'s user, and its hello.
pub async fn open(
    url: &str,
    token: &str,
    resume: Option<(&str, u64)>,
) -> (RawConn<ChatResponse>, ConnectionInfo) {
    open_at(url, token, resume, &[]).await
}

/// [`open`], presenting the last position seen of each group
/// (`hub-resume-positions-bin`) with the resume.
pub async fn open_at(
    url: &str,
    token: &str,
    resume: Option<(&str, u64)>,
    positions: &[Position],
) -> (RawConn<ChatResponse>, ConnectionInfo) {
    let encoded = ResumePositions {
        positions: positions.to_vec(),
    }
    .encode_to_vec();
    let raw = (!positions.is_empty()).then_some(encoded.as_slice());
    open_with_positions_bytes(url, token, resume, raw).await
}

/// [`open`], with `positions` (any bytes, well-formed or not) as the
/// `hub-resume-positions-bin` metadata, if given.
pub async fn open_with_positions_bytes(
    url: &str,
    token: &str,
    resume: Option<(&str, u64)>,
    positions: Option<&[u8]>,
) -> (RawConn<ChatResponse>, ConnectionInfo) {
    try_open_on(channel(url).await, token, resume, positions)
        .await
        .expect("stream opened")
}

/// [`open_with_positions_bytes`] on `channel`: the status if the server refused the
/// stream (no hello).
pub async fn try_open_on(
    channel: tonic::transport::Channel,
    token: &str,
    resume: Option<(&str, u64)>,
    positions: Option<&[u8]>,
) -> Result<(RawConn<ChatResponse>, ConnectionInfo), tonic::Status> {
    let auth = format!("Bearer {token}");
    let binary: Vec<(&'static str, &[u8])> = positions
        .map(|p| ("hub-resume-positions-bin", p))
        .into_iter()
        .collect();
    let seq;
    let mut metadata = vec![("authorization", auth.as_str())];
    if let Some((credential, last)) = resume {
        seq = last.to_string();
        metadata.push(("hub-resume", credential));
        metadata.push(("hub-resume-seq", seq.as_str()));
    }
    let mut conn =
        RawConn::<ChatResponse>::open_with_bin(channel, CONNECT, &metadata, &binary, 64).await?;
    let first = conn.next().await?.expect("hello");
    let Some(Kind::Hello(hello)) = Frame::of(&first).control().cloned() else {
        panic!("first frame is not a hello: {first:?}");
    };
    Ok((conn, hello))
}

/// `user` logged in on `url` (a raw stream, to see control frames as written),
/// a member of `room` once it returns: the join's reply came, within 10 s.
pub async fn joined_raw(url: &str, user: &str, room: &str) -> RawConn<ChatResponse> {
    let token = crate::login(url, user).await;
    let (mut conn, _) = open(url, &token, None).await;
    send(
        &conn,
        1,
        Call::Join(examples::chat::JoinRequest { room: room.into() }),
    )
    .await;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        until_reply(&mut conn, 1),
    )
    .await
    .expect("joined in time");
    conn
}

/// The outcome of the resume a hello answers (`UNSPECIFIED` if none was asked for).
pub fn outcome(hello: &ConnectionInfo) -> ResumeOutcome {
    hello
        .resumption
        .as_ref()
        .map_or(ResumeOutcome::Unspecified, |r| r.outcome())
}

/// Sends call `id`.
pub async fn send(conn: &RawConn<ChatResponse>, id: u64, call: Call) {
    conn.send_msg(&ChatRequest {
        id,
        control: None,
        call: Some(call),
        answer: None,
    })
    .await;
}

/// The next frame that is a reply to `id` (pushes before it are returned too).
pub async fn until_reply(conn: &mut RawConn<ChatResponse>, id: u64) -> Vec<(u64, String)> {
    let mut pushes = Vec::new();
    loop {
        let frame = next_frame(conn).await;
        if frame.id == id {
            return pushes;
        }
        if let Some(Event::OnMessage(m)) = frame.event {
            pushes.push((frame.seq, m.text));
        }
    }
}

/// The next frame that is not a heartbeat.
pub async fn next_frame(conn: &mut RawConn<ChatResponse>) -> ChatResponse {
    loop {
        let frame = conn.next().await.expect("stream up").expect("stream open");
        if !Frame::of(&frame).is_chatter() {
            return frame;
        }
    }
}

/// The next `n` chat lines, with their seq.
pub async fn lines(conn: &mut RawConn<ChatResponse>, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = next_frame(conn).await;
        if let Some(Event::OnMessage(m)) = frame.event {
            got.push((frame.seq, m.text));
        }
    }
    got
}
