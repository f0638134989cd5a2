//! Out of file descriptors, `chat-server` (served through `hub_server::transport`)
//! does not spin on `accept`, and serves new clients once descriptors are free.
//!
//! Runs the real binary under `ulimit -n` in a child process, so the limit and the
//! CPU time measured are the server's alone. Build it first:
//! `cargo build -p examples --bins` (`scripts/test.sh` does).

// Test code: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

const FD_LIMIT: u32 = 64;
const SOCKETS: usize = 120;
const BOUND: Duration = Duration::from_secs(15);
const MEASURE: Duration = Duration::from_secs(2);

/// User plus system CPU time of a process, from `/proc/PID/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 of `rest`.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    let port = test_support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let bin = test_support::workspace_bin("chat-server");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(&bin)
        .args(["--addr", &addr, "--groups", "memory"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let child = Child(child);

    // Wait until it listens.
    let deadline = Instant::now() + BOUND;
    while TcpStream::connect(&addr).await.is_err() {
        assert!(Instant::now() < deadline, "chat-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // More idle sockets than it has descriptors: the rest wait in the backlog (or, once
    // that is full, in the SYN queue: those connects are given up on).
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let connect = TcpStream::connect(&addr);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
            sockets.push(s);
        }
    }
    assert!(
        sockets.len() > FD_LIMIT as usize + 8,
        "{} connected",
        sockets.len()
    );
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let deadline = Instant::now() + BOUND;
    while open_fds() < FD_LIMIT as usize - 1 {
        assert!(
            Instant::now() < deadline,
            "the server never ran out of file descriptors ({} open)",
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // While exhausted, it does not spin.
    let before = cpu_ticks(pid);
    tokio::time::sleep(MEASURE).await;
    let used = (cpu_ticks(pid) - before) as f64 / clock_ticks_per_second() as f64;
    let share = used / MEASURE.as_secs_f64();
    println!(
        "chat-server CPU while out of descriptors: {:.1}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.2,
        "the accept loop spins: {:.0}% of a core",
        share * 100.0
    );

    // Descriptors come free: a new client is served.
    drop(sockets);
    let served = tokio::time::timeout(BOUND, async {
        loop {
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                if let Ok(r) = health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                {
                    return r.into_inner().status;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no client was served after descriptors came free");
    assert_eq!(
        served,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(child);
}
