//! TLS to Redis (`rediss://`) and to HTTPS action targets, end to end, with a private CA:
//! - the test makes a CA and a server certificate for 127.0.0.1 with the `openssl` CLI, starts a
//!   `redis-server` that speaks only TLS and a Python HTTPS server (both with that certificate);
//! - an actor with `REFLEX_ACTOR__REDIS_URL=rediss://...` and `SSL_CERT_FILE=<ca.pem>` applies
//!   an action through `https://` once, and its done record is in the TLS Redis (read back with
//!   `redis-cli --tls`);
//! - the same actor without the CA trusted stops at start-up with an error naming the (redacted)
//!   Redis URL and `SSL_CERT_FILE`, not a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reflex_testkit::{create_topics, read_topic_until, stack, unique, ChildGuard};

const URL_SECRET: &str = "tls-url-S3CR3T-9876";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not open port {port}");
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate it signed for IP 127.0.0.1 (`server.pem`,
/// `server.key`), in a fresh directory.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tls-certs"));
    std::fs::create_dir_all(&dir).unwrap();
    run(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=reflex-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    run(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    dir
}

/// A `redis-server` speaking only TLS (no plaintext port), clients not asked for certificates.
fn tls_redis(certs: &Path) -> (ChildGuard, u16) {
    let port = free_port();
    let mut command = Command::new("redis-server");
    command
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .args(["--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(certs.join("server.pem"))
        .arg("--tls-key-file")
        .arg(certs.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(certs.join("ca.pem"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guard = ChildGuard::spawn("redis-server", &mut command);
    wait_port(port, "redis-server (TLS)");
    (guard, port)
}

/// `redis-cli --tls` against the TLS Redis, trusting the test CA.
fn redis_cli(certs: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const HTTPS_TARGET: &str = r#"
import http.server, json, ssl, sys
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "key": self.headers.get("idempotency-key")}) + "\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A Python HTTPS server (the test certificate) that answers every POST with 200 and appends
/// `{"path", "key"}` (the Idempotency-Key) per request to the returned log file.
fn https_target(certs: &Path) -> (ChildGuard, u16, PathBuf) {
    let port = free_port();
    let log = certs.join("https-requests.jsonl");
    let mut command = Command::new("python3");
    command
        .args(["-c", HTTPS_TARGET, &port.to_string()])
        .arg(certs.join("server.pem"))
        .arg(certs.join("server.key"))
        .arg(&log)
        .stdout(Stdio::null());
    let guard = ChildGuard::spawn("https-target", &mut command);
    wait_port(port, "python https target");
    (guard, port, log)
}

fn actor_config(prefix: &str, outcomes: &str, held: &str, https_port: u16) -> PathBuf {
    let path = std::env::temp_dir()
        .join(unique("tls-actor"))
        .with_extension("toml");
    std::fs::write(
        &path,
        format!(
            r#"[actor]
state_backend = "redis"
redis_prefix = "{prefix}"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
allowed_hosts = ["127.0.0.1:{https_port}"]
allowed_schemes = ["https"]

[[actor.action]]
name = "restart"
kind = "http"
url = "https://127.0.0.1:{https_port}/act/{{{{ params.pod }}}}"
timeout = "5s"
max_attempts = 1
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_uses_rediss_and_https_with_a_private_ca() {
    let stack = stack();
    let certs = certificates();
    let (_redis, redis_port) = tls_redis(&certs);
    let (_target, https_port, requests) = https_target(&certs);
    let input = unique("tls-req");
    let outcomes = unique("tls-out");
    let held = unique("tls-held");
    let dlq = format!("{input}.dlq");
    create_topics(
        &stack.bootstrap,
        &[(&input, 1), (&outcomes, 1), (&held, 1), (&dlq, 1)],
    )
    .await;
    let prefix = unique("tls");
    let config = actor_config(&prefix, &outcomes, &held, https_port);
    let log = certs.join("actor.log");
    let ca = certs.join("ca.pem");
    let redis_url = format!("rediss://127.0.0.1:{redis_port}");
    let _actor = spawn_actor(
        &stack,
        &unique("tls-group"),
        "",
        &input,
        &config,
        &log,
        &[
            ("REFLEX_ACTOR__REDIS_URL", &redis_url),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ],
    );

    let codec = action_request_codec(&stack, &input).await;
    let request = action_request("tls-1", "pod-a");
    publish_requests(&stack, &input, &codec, std::slice::from_ref(&request)).await;
    let done = read_topic_until(
        &stack.bootstrap,
        &outcomes,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| !got.is_empty(),
    )
    .await;
    let text = read_log(&log);
    assert_eq!(done.len(), 1, "one outcome: {text}");
    assert!(
        text.contains(r#""state_backend":"redis""#) || text.contains("state_backend=redis"),
        "the actor keeps its state in the TLS Redis: {text}"
    );

    // The HTTPS target got exactly one request, with the request's Idempotency-Key.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&requests)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}; log: {text}");
    assert_eq!(lines[0]["path"], "/act/pod-a");
    assert_eq!(lines[0]["key"], request.idempotency_key.as_str());

    // Its done record is in the TLS Redis.
    let done_key = format!("{prefix}:done:{}", request.idempotency_key);
    assert_eq!(redis_cli(&certs, redis_port, &["EXISTS", &done_key]), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_stops_at_start_when_the_redis_certificate_is_not_trusted() {
    let stack = stack();
    let certs = certificates();
    let (_redis, redis_port) = tls_redis(&certs);
    let input = unique("tls-untrusted");
    let config = actor_config(&unique("tls-untrusted"), &unique("o"), &unique("p"), 443);
    let log = certs.join("actor-untrusted.log");
    // A password in the URL, to check it is redacted in the error.
    let redis_url = format!("rediss://default:{URL_SECRET}@127.0.0.1:{redis_port}");
    let mut command = worker_command(
        "reflex-actor",
        &stack,
        &unique("tls-untrusted"),
        "",
        &input,
        &log,
    );
    command
        .arg("--config")
        .arg(&config)
        .env("REFLEX_ACTOR__REDIS_URL", &redis_url)
        // The default trust store only: the test CA is not in it.
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    let mut actor = ChildGuard::spawn("reflex-actor", &mut command);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = actor.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the actor is still running with an untrusted Redis certificate: {}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = read_log(&log);
    assert!(!status.success(), "{status:?}: {text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains(&format!("rediss://default:***@127.0.0.1:{redis_port}")),
        "the error names the redacted URL: {text}"
    );
    assert!(text.contains("SSL_CERT_FILE"), "and the fix: {text}");
    assert!(!text.contains(URL_SECRET), "{text}");
}
