//! Run with: `cargo run -p examples --bin chat-client -- --user alice --room lobby --say "hello"`
//!
//! A typed client of the chat hub: logs in (`chat.v1.ChatLogin/Login`, or `--token`
//! from an identity provider), connects with the token as `authorization: Bearer`,
//! joins a room, says and whispers what it is told to, and prints what it receives. Scriptable: `--json` prints one JSON object per
//! line, `--wait-for N` exits after N pushes, `--listen SECS` bounds the wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use examples::chat::chat_hub_client::{ChatHubClient, ChatHubReceiver};
use examples::chat::{
    ChatMessage, CheckReadyRequest, JoinRequest, MembersReply, ReadyAnswer, ReadyCheck, ReadyState,
    SayRequest, UserEvent, WhisperRequest,
};
use examples::login::LoginRequest;
use examples::login::chat_login_client::ChatLoginClient;
use hub_client::ConnectOptions;
use serde_json::json;
use tokio::sync::Notify;

#[derive(Parser, Debug)]
#[command(about = "The reference chat hub client")]
struct Args {
    /// Server address (`http://HOST:PORT` or `HOST:PORT`).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// User name to log in under (with the server's development login).
    #[arg(long, required_unless_present = "token")]
    user: Option<String>,
    /// A bearer token from your identity provider, instead of logging in.
    #[arg(
        long,
        env = "CHAT_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    token: Option<String>,
    /// Room to join.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Something to say to the room (repeatable).
    #[arg(long)]
    say: Vec<String>,
    /// `USER:TEXT` to whisper (repeatable).
    #[arg(long)]
    whisper: Vec<String>,
    /// Print the room's members after the messages.
    #[arg(long)]
    members: bool,
    /// Seconds to stay connected for pushes after sending (the upper bound with --wait-for).
    #[arg(long, default_value_t = 1.0)]
    listen: f64,
    /// Exit as soon as this many pushes arrived.
    #[arg(long)]
    wait_for: Option<usize>,
    /// Seconds to wait before sending (lets other clients join first).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// How to answer a ready check: `yes`, `no`, `late` (yes after --late-ms),
    /// `never` (no answer: the asker times out) or `error` (fails the ask).
    #[arg(long, default_value = "yes")]
    answer: Answer,
    /// The delay of `--answer late`, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    late_ms: u64,
    /// Start a ready check of the room (after the messages) and print each member's
    /// outcome; the value is the timeout in milliseconds (0: the server's default).
    #[arg(long)]
    ready_check: Option<u64>,
}

/// How the client answers a ready check.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Yes,
    No,
    Late,
    Never,
    Error,
}

struct Printer {
    json: bool,
    answer: Answer,
    late: Duration,
    received: AtomicUsize,
    notify: Notify,
}

impl Printer {
    fn out(&self, value: serde_json::Value, text: String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    fn got(&self) {
        self.received.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl ChatHubReceiver for Printer {
    fn on_join(&self, m: UserEvent) {
        self.out(
            json!({"push": "on_join", "room": m.room, "user": m.user}),
            format!("* {} joined {}", m.user, m.room),
        );
        self.got();
    }

    fn on_leave(&self, m: UserEvent) {
        self.out(
            json!({"push": "on_leave", "room": m.room, "user": m.user}),
            format!("* {} left {}", m.user, m.room),
        );
        self.got();
    }

    fn on_message(&self, m: ChatMessage) {
        self.out(
            json!({"push": "on_message", "room": m.room, "from": m.from, "text": m.text}),
            format!("[{}] {}: {}", m.room, m.from, m.text),
        );
        self.got();
    }

    fn on_whisper(&self, m: ChatMessage) {
        self.out(
            json!({"push": "on_whisper", "room": m.room, "from": m.from, "text": m.text}),
            format!("(whisper) {}: {}", m.from, m.text),
        );
        self.got();
    }

    async fn ready_check(&self, m: ReadyCheck) -> Result<ReadyAnswer, tonic::Status> {
        self.out(
            json!({"ask": "ready_check", "room": m.room, "from": m.from, "answer": format!("{:?}", self.answer)}),
            format!("? {} asks {}: ready? ({:?})", m.from, m.room, self.answer),
        );
        match self.answer {
            Answer::Yes => Ok(ReadyAnswer { ready: true }),
            Answer::No => Ok(ReadyAnswer { ready: false }),
            Answer::Late => {
                tokio::time::sleep(self.late).await;
                Ok(ReadyAnswer { ready: true })
            }
            Answer::Never => std::future::pending().await,
            Answer::Error => Err(tonic::Status::failed_precondition("not at the keyboard")),
        }
    }

    fn on_error(&self, code: tonic::Code, message: &str) {
        self.out(
            json!({"error": format!("{code:?}"), "message": message}),
            format!("! {code:?}: {message}"),
        );
    }
}

fn members_out(p: &Printer, what: &str, r: &MembersReply) {
    p.out(
        json!({"reply": what, "room": r.room, "members": r.members, "count": r.count}),
        format!(
            "{what} {}: {} member(s): {}",
            r.room,
            r.count,
            r.members.join(", ")
        ),
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let printer = Arc::new(Printer {
        json: args.json,
        answer: args.answer,
        late: Duration::from_millis(args.late_ms),
        received: AtomicUsize::new(0),
        notify: Notify::new(),
    });
    let token = match (&args.token, &args.user) {
        (Some(token), _) => token.clone(),
        (None, Some(user)) => {
            let reply = ChatLoginClient::new(channel.clone())
                .login(LoginRequest { user: user.clone() })
                .await?
                .into_inner();
            printer.out(
                json!({"logged_in": reply.user, "expires_at": reply.expires_at}),
                format!("logged in as {}", reply.user),
            );
            reply.token
        }
        (None, None) => return Err("--user or --token is required".into()),
    };
    let options =
        ConnectOptions::default().metadata("authorization", &format!("Bearer {token}"))?;
    let client = ChatHubClient::connect_with(channel, options, printer.clone()).await?;
    printer.out(
        json!({"connected": client.connection_id()}),
        format!("connected as connection {}", client.connection_id()),
    );

    let joined = client
        .join(JoinRequest {
            room: args.room.clone(),
        })
        .await?;
    members_out(&printer, "joined", &joined);

    if args.delay > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.delay)).await;
    }
    for text in &args.say {
        client.say(SayRequest { text: text.clone() }).await?;
        printer.out(json!({"said": text}), format!("> {text}"));
    }
    for w in &args.whisper {
        let (user, text) = w.split_once(':').ok_or("--whisper takes USER:TEXT")?;
        match client
            .whisper(WhisperRequest {
                user: user.into(),
                text: text.into(),
            })
            .await
        {
            Ok(()) => printer.out(
                json!({"whispered": user, "text": text}),
                format!("> (to {user}) {text}"),
            ),
            Err(e) => printer.out(
                json!({"error": format!("{:?}", e.code()), "message": e.to_string()}),
                format!("! {e}"),
            ),
        }
    }
    if args.members {
        let m = client.members().await?;
        members_out(&printer, "members", &m);
    }
    if let Some(timeout_ms) = args.ready_check {
        let report = client.check_ready(CheckReadyRequest { timeout_ms }).await?;
        for m in &report.members {
            let state = ReadyState::try_from(m.state).unwrap_or(ReadyState::Unspecified);
            let name = state
                .as_str_name()
                .trim_start_matches("READY_STATE_")
                .to_lowercase();
            printer.out(
                json!({"ready": m.user, "connection": m.connection, "state": name, "detail": m.detail}),
                format!("ready check: {} ({}) {name} {}", m.user, m.connection, m.detail),
            );
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.listen.max(0.0));
    loop {
        if let Some(n) = args.wait_for
            && printer.received.load(Ordering::SeqCst) >= n
        {
            break;
        }
        let notified = printer.notify.notified();
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => break,
            reason = client.closed() => {
                printer.out(json!({"closed": reason.message}), format!("connection closed: {reason}"));
                std::process::exit(2);
            }
        }
    }
    if let Some(n) = args.wait_for {
        let got = printer.received.load(Ordering::SeqCst);
        if got < n {
            eprintln!("expected {n} pushes, got {got}");
            std::process::exit(3);
        }
    }
    Ok(())
}
