//! Child processes of the bench (hub servers, raw servers, idle-connection clients)
//! and what `/proc` says about them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::BoxError;

/// A child running `hub-bench <args>`, killed on drop. Children exit by themselves
/// when their stdin closes, so none outlives the bench even if it is killed.
pub struct BenchChild {
    /// The process.
    child: Child,
    /// Held open so the child keeps running; closed to ask it to exit.
    stdin: Option<ChildStdin>,
    /// Where the child prints its status lines.
    stdout: BufReader<ChildStdout>,
}

impl BenchChild {
    /// Starts `hub-bench <args>` (this same executable).
    pub fn spawn(args: &[String]) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(BenchChild {
            child,
            stdin,
            stdout,
        })
    }

    /// Reads the next status line from the child, giving up after `within`.
    pub fn line(&mut self, within: Duration) -> Result<String, BoxError> {
        // A blocking read bounded by a watchdog thread that kills the child on timeout.
        let pid = self.child.id();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(within).is_err() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        });
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line);
        let _ = done_tx.send(());
        let _ = watchdog.join();
        match n {
            Ok(0) => Err(format!(
                "child {pid} exited (or timed out after {within:?}) before printing a line"
            )
            .into()),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), BoxError> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("the child's stdin is closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for a line `LISTEN <addr>` and returns the address.
    pub fn listening(&mut self, within: Duration) -> Result<SocketAddr, BoxError> {
        let line = self.line(within)?;
        let addr = line
            .strip_prefix("LISTEN ")
            .ok_or_else(|| format!("unexpected line from server: {line:?}"))?;
        Ok(addr.parse()?)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time of the process so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Kills the child at once (SIGKILL: no goodbye, no clean-up, its sockets reset by
    /// the kernel) and reaps it.
    pub fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Closes the child's stdin (it exits) and waits up to `within` before killing it.
    pub fn stop(mut self, within: Duration) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BenchChild {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, usually 100).
pub fn clock_ticks() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process in seconds, from `/proc/PID/stat` (fields 14 and 15),
/// the way `shared/peers/run.sh` reads it. 0 if the process is gone.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; fields after it start at 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Field 14 (utime) is index 11 after the ')', field 15 (stime) index 12.
    (tick(11) + tick(12)) as f64 / clock_ticks()
}

/// utime + stime of this process (every thread) in seconds, as [`cpu_secs`] reads it.
pub fn self_cpu_secs() -> f64 {
    cpu_secs(std::process::id())
}

/// `VmRSS` of a process in KiB, from `/proc/PID/status`. 0 if the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Exits this process when its stdin reaches end of file: how a child learns that
/// the bench is done (or gone).
pub fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut sink = String::new();
        let stdin = std::io::stdin();
        loop {
            sink.clear();
            match stdin.lock().read_line(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

/// Raises the soft limit of open files to the hard limit (10,000 connections need
/// 10,000 sockets on the server).
pub fn raise_nofile_limit() -> u64 {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
            hard
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}
