//! Real `redis-server` and `nats-server` processes for tests.
//!
//! Each server gets a free loopback port and its own temporary directory, is
//! waited for until it answers, and is killed when dropped. [`RedisServer::kill`]
//! and [`RedisServer::restart`] (likewise for NATS) simulate an outage on the same
//! port. Servers on the standard ports (6379, 4222) are never touched.
//!
//! The binaries must be installed (`scripts/test.sh` installs them); a missing
//! binary is a panic with a clear message, never a skipped test.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released), never one this process handed
/// out before: tests run in parallel threads, and two servers given one port would
/// share it unnoticed (the second fails to bind, the first answers for both, and the
/// first test's end kills the other's server).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // Something answers: the server, unless it failed to bind and another
            // process holds the port (then it exits at once: say so).
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{what} on port {port} exited with {status} (port taken?): {err}");
            }
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} on port {port} exited with {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 15 s");
}

fn binary(name: &str, candidates: &[&str]) -> PathBuf {
    for c in candidates {
        let p = Path::new(c);
        if p.exists() {
            return p.to_path_buf();
        }
    }
    if let Ok(out) = Command::new("which").arg(name).output()
        && out.status.success()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "{name} not found: run scripts/test.sh, which installs it (apt-get install -y redis-server nats-server)"
    )
}

/// Sends `signal` (`STOP`, `CONT`) to a child process with `kill`.
fn signal(child: &Option<Child>, signal: &str) {
    let Some(c) = child else {
        panic!("cannot send SIG{signal}: the server is not running");
    };
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(c.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {} failed", c.id());
}

/// Stops a server with `SIGSTOP` (it hangs: connections stay open, nothing is
/// answered) and lets it go on with `SIGCONT` when dropped, so a failing test never
/// leaves a stopped process behind.
#[derive(Debug)]
#[must_use = "the server resumes when the pause is dropped"]
pub struct Paused<'a> {
    child: &'a Option<Child>,
}

impl Paused<'_> {
    /// Resumes the server now.
    pub fn resume(self) {}
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        signal(self.child, "CONT");
    }
}

fn pause(child: &Option<Child>) -> Paused<'_> {
    signal(child, "STOP");
    Paused { child }
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A server's TLS files (PEM): its certificate chain and key, and the CA that
/// signed the clients' certificates (for mutual TLS; with Redis also what
/// `redis-cli` trusts).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate (chain), PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM.
    pub key: PathBuf,
    /// The CA certificate, PEM.
    pub ca: PathBuf,
}

/// Where and how a redis-server runs.
#[derive(Debug, Clone, Default)]
struct RedisArgs {
    cluster: bool,
    /// TLS only: `--port 0 --tls-port PORT`, clients not asked for certificates.
    tls: Option<TlsFiles>,
}

/// A `redis-server` process on a free port.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: RedisArgs,
}

impl RedisServer {
    /// Starts one server (no persistence).
    pub fn start() -> Self {
        Self::start_with(RedisArgs::default(), free_port())
    }

    /// Starts one server that speaks TLS only (`--port 0 --tls-port PORT`) with the
    /// certificate and key of `tls`; clients need no certificate of their own.
    pub fn start_tls(tls: TlsFiles) -> Self {
        let args = RedisArgs {
            tls: Some(tls),
            ..Default::default()
        };
        Self::start_with(args, free_port())
    }

    fn start_with(args: RedisArgs, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = RedisServer {
            child: None,
            port,
            dir,
            args,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = binary(
            "redis-server",
            &["/usr/bin/redis-server", "/usr/local/bin/redis-server"],
        );
        let mut cmd = Command::new(bin);
        match &self.args.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.args.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"));
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        wait_for_port(self.port, "redis-server", &mut child);
        self.child = Some(child);
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.args.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage). [`RedisServer::restart`] brings it back on the same port.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Stalls the server (`SIGSTOP`) until the returned guard is dropped or resumed.
    pub fn pause(&self) -> Paused<'_> {
        pause(&self.child)
    }

    /// Starts the server again on the same port (empty: nothing persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`), or `None` if the answer cannot be
    /// read (the server is down).
    pub fn numsub(&self, channel: &str) -> Option<u64> {
        self.cli(&["PUBSUB", "NUMSUB", channel])
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(binary("redis-cli", &["/usr/bin/redis-cli"]));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.args.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// A Redis Cluster of three masters on free ports, slots assigned.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    RedisArgs {
                        cluster: true,
                        tls: None,
                    },
                    free_port(),
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(binary("redis-cli", &["/usr/bin/redis-cli"]))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok();
        c
    }

    /// Waits until every node reports `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let info = node.cli(&["cluster", "info"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster did not become ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills every node (an outage of the whole cluster).
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Stalls every node (`SIGSTOP`) until the returned guards are dropped.
    pub fn pause(&self) -> Vec<Paused<'_>> {
        self.nodes.iter().map(RedisServer::pause).collect()
    }

    /// Starts every node again on its port with its cluster configuration (the slots
    /// are kept, the data is not) and waits until the cluster is ok.
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_ok();
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

/// Options of a `nats-server`.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Require this user and password.
    pub user: Option<(String, String)>,
    /// Require this token.
    pub token: Option<String>,
    /// The largest message the server takes (`max_payload`; NATS' default is 1 MiB).
    pub max_payload: Option<u32>,
    /// Require TLS (`--tls --tlscert --tlskey`), with this certificate and key;
    /// clients need no certificate of their own.
    pub tls: Option<TlsFiles>,
    /// Start without JetStream (by default it runs with `-js`, its store in the
    /// server's temp dir).
    pub no_jetstream: bool,
}

/// A `nats-server` process on a free port.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: NatsOptions,
    /// Cluster: (name, this node's route port, every node's route port).
    cluster: Option<(String, u16, Vec<u16>)>,
}

impl NatsServer {
    /// Starts one server without auth.
    pub fn start() -> Self {
        Self::start_with(NatsOptions::default())
    }

    /// Starts one server with `options`.
    pub fn start_with(options: NatsOptions) -> Self {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            options,
            cluster: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = binary(
            "nats-server",
            &[
                "/usr/sbin/nats-server",
                "/usr/bin/nats-server",
                "/usr/local/bin/nats-server",
            ],
        );
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-l")
            .arg(self.dir.path().join("nats.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !self.options.no_jetstream {
            cmd.arg("-js")
                .arg("--store_dir")
                .arg(self.dir.path().join("jetstream"));
        }
        if let Some((user, pass)) = &self.options.user {
            cmd.args(["--user", user, "--pass", pass]);
        }
        if let Some(token) = &self.options.token {
            cmd.args(["--auth", token]);
        }
        if let Some(tls) = &self.options.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(&tls.cert)
                .arg("--tlskey")
                .arg(&tls.key);
        }
        if let Some(max) = self.options.max_payload {
            // No command-line flag for it: a config file.
            let conf = self.dir.path().join("nats.conf");
            std::fs::write(&conf, format!("max_payload: {max}\n")).expect("write nats.conf");
            cmd.arg("-c").arg(conf);
        }
        if let Some((name, route_port, all)) = &self.cluster {
            let routes: Vec<String> = all
                .iter()
                .filter(|p| *p != route_port)
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            // JetStream in a cluster needs a name per server.
            cmd.args(["--server_name", &format!("{name}-{route_port}")])
                .args(["--cluster_name", name])
                .args(["--cluster", &format!("nats://127.0.0.1:{route_port}")])
                .args(["--routes", &routes.join(",")]);
        }
        let mut child = cmd.spawn().expect("spawn nats-server");
        wait_for_port(self.port, "nats-server", &mut child);
        self.child = Some(child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stalls the server (`SIGSTOP`) until the returned guard is dropped or resumed.
    pub fn pause(&self) -> Paused<'_> {
        pause(&self.child)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Three `nats-server`s routed into one cluster.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes and waits until their routes are up.
    pub fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<NatsServer> = routes
            .iter()
            .map(|r| {
                let mut s = NatsServer {
                    child: None,
                    port: free_port(),
                    dir: tempfile::tempdir().expect("temp dir"),
                    options: NatsOptions::default(),
                    cluster: Some(("hub-test".into(), *r, routes.clone())),
                };
                s.spawn();
                s
            })
            .collect();
        let c = NatsCluster { nodes };
        c.wait_for_routes(&[0, 0, 0]);
        c
    }

    /// How many routes each node's log says were created.
    fn routes_created(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                std::fs::read_to_string(n.dir.path().join("nats.log"))
                    .map(|log| log.matches("Route connection created").count())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Waits until each node's log has two more routes created than `before`.
    fn wait_for_routes(&self, before: &[usize]) {
        // Routes connect asynchronously: poll the logs (appended to across restarts).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.routes_created();
            if now.iter().zip(before).all(|(n, b)| *n >= b + 2) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS cluster routes did not come up: {now:?} created, {before:?} before"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every node (an outage of the whole cluster).
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Stalls every node (`SIGSTOP`) until the returned guards are dropped.
    pub fn pause(&self) -> Vec<Paused<'_>> {
        self.nodes.iter().map(NatsServer::pause).collect()
    }

    /// Starts every node again on its ports and waits until their routes are up.
    pub fn restart(&mut self) {
        let before = self.routes_created();
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_for_routes(&before);
    }

    /// The nodes' client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&mut self) -> &mut [NatsServer] {
        &mut self.nodes
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` if it does not
/// within `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The workspace's target directory (for finding built binaries such as `chat-server`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}

/// A built binary of the workspace (`chat-server`, `chat-client`), in the same
/// profile as the running test. Build it first (`cargo build --workspace --bins`;
/// `scripts/test.sh` does).
pub fn workspace_bin(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target_dir().join(profile).join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// A `chat-server` process on a free port.
#[derive(Debug)]
pub struct ChatServer {
    child: Option<Child>,
    addr: SocketAddr,
    /// `--groups` and the extra flags, to start it again.
    args: Vec<String>,
}

impl ChatServer {
    /// Starts `chat-server --groups GROUPS` plus `extra` flags, and waits until it listens.
    pub fn start(groups: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--groups".to_owned(), groups.to_owned()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let port = free_port();
        let child = Self::spawn(port, &args);
        ChatServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            args,
        }
    }

    fn spawn(port: u16, args: &[String]) -> Child {
        let mut child = Command::new(workspace_bin("chat-server"))
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chat-server");
        wait_for_port(port, "chat-server", &mut child);
        child
    }

    /// Stops it as a deploy does: `SIGTERM` (it says goodbye to its clients and
    /// shuts down), then waits for it to exit, at most 20 s (then `SIGKILL`).
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        signal(&self.child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_child(&mut self.child);
        panic!("chat-server did not exit within 20 s of SIGTERM");
    }

    /// Stops it ([`Self::stop`]) and starts it again on the same port with the same
    /// flags, waiting until it listens.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::spawn(self.addr.port(), &self.args));
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills it with SIGKILL (a crash: no cleanup).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_starts_restarts_and_stops() {
        let mut r = RedisServer::start();
        assert!(r.cli(&["ping"]).contains("PONG"));
        r.kill();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_err());
        r.restart();
        assert!(r.cli(&["ping"]).contains("PONG"));
    }

    #[test]
    fn paused_servers_do_not_answer_until_resumed() {
        let r = RedisServer::start();
        let paused = r.pause();
        let mut s = TcpStream::connect(("127.0.0.1", r.port())).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        std::io::Write::write_all(&mut s, b"PING\r\n").expect("write");
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf).is_err(), "a paused server answered");
        paused.resume();
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = s.read(&mut buf).expect("answer after resume");
        assert_eq!(&buf[..n], b"+PONG\r\n");
    }

    #[test]
    fn nats_starts_and_restarts() {
        let mut n = NatsServer::start();
        assert!(TcpStream::connect(("127.0.0.1", n.port())).is_ok());
        n.restart();
        assert!(TcpStream::connect(("127.0.0.1", n.port())).is_ok());
    }
}

/// A certificate authority made for one test, and a server certificate it signed for
/// `localhost` and `127.0.0.1`, written as PEM files in a temporary directory.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl TestCa {
    /// A new CA (its own key) and a server certificate signed by it.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hub test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("write ca.pem");
        std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("write server.pem");
        std::fs::write(dir.path().join("server.key"), key.serialize_pem())
            .expect("write server.key");
        TestCa { dir, ca_pem }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's files, for [`RedisServer::start_tls`] and [`NatsOptions::tls`].
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            ca: self.ca_file(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
