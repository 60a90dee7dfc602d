//! The one way every Reflex component talks to Redis: enricher lookups, the runtime's parked
//! keys (`runtime.state_url`), the actor's claims, rate limit, blast-radius counters and kill
//! switch, and `reflexctl dlq replay` checkpoints. Why this strategy and not redis-rs'
//! `ConnectionManager`: ARCHITECTURE.md, "One Redis connection strategy".
//!
//! [`RedisConn`] is one multiplexed connection shared by every caller (cheap to clone; commands
//! from concurrent tasks are pipelined on it), opened lazily again after a failure:
//! - every request, connecting included, is bounded by one timeout;
//! - a request that fails without an answer from the server (I/O error, no answer in time)
//!   drops the connection it went out on; the next request opens a new one (one connect at a
//!   time), so a Redis restart, failover or half-open socket costs the requests in flight, not a
//!   worker restart;
//! - while Redis is down a request fails at once with an I/O error naming the server, which
//!   [`error_class`] calls [`ErrorClass::Transient`]: the runtime retries the event with backoff.
//!
//! `rediss://` URLs speak TLS through OpenSSL (the `redis` crate's native-tls backend; OpenSSL is
//! linked for librdkafka anyway). The server certificate is verified against OpenSSL's default
//! trust store, which honours `SSL_CERT_FILE` / `SSL_CERT_DIR`: that is how a private CA is
//! trusted. `rediss://...#insecure` turns verification off (the crate's own switch; not for
//! production).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
};

use crate::ErrorClass;

/// Credentials given apart from the URL (from a secret reference): optional ACL user, password.
pub type Auth = Option<(Option<String>, String)>;

/// Bound of one request (connecting included) unless the caller chooses one: long enough for a
/// loaded Redis, short enough that a stuck one turns into a retry instead of a stalled lane.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url` with [`DEFAULT_TIMEOUT`]. Fails when Redis cannot be reached now, so a
/// wrong URL stops start-up; after that the connection comes back by itself.
pub async fn connect(url: &str) -> Result<RedisConn, RedisError> {
    connect_with(url, None, DEFAULT_TIMEOUT).await
}

/// Like [`connect`]; `auth` overrides credentials in the URL (Redis AUTH / ACL users), so the
/// URL in a config file can hold none, and `timeout` bounds each request.
pub async fn connect_with(
    url: &str,
    auth: Auth,
    timeout: Duration,
) -> Result<RedisConn, RedisError> {
    let mut info = url.into_connection_info()?;
    if let Some((username, password)) = auth {
        if username.is_some() {
            info.redis.username = username;
        }
        info.redis.password = Some(password);
    }
    let db = info.redis.db;
    let client = redis::Client::open(info)?;
    let conn = RedisConn(Arc::new(Shared {
        client,
        // Only connecting gets the crate's own timeout; a whole request is bounded in
        // `request`, which also drops the connection when it runs out.
        config: AsyncConnectionConfig::new().set_connection_timeout(timeout),
        timeout,
        shown: redact_url(url),
        db,
        current: RwLock::default(),
        connecting: tokio::sync::Mutex::default(),
    }));
    conn.connection().await?;
    Ok(conn)
}

/// What a failed Redis request means for the event: only an answer about the data itself
/// (a key of the wrong type, a reply that does not fit the expected type) is permanent;
/// everything else (Redis down, slow, loading, failing over, out of memory) is transient.
pub fn error_class(error: &RedisError) -> ErrorClass {
    if error.code() == Some("WRONGTYPE") || error.kind() == redis::ErrorKind::TypeError {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    }
}

/// One multiplexed Redis connection, reconnected lazily (see the module docs). Use it like any
/// redis-rs async connection (`AsyncCommands`, `Script`, `pipe().query_async`); clones share it.
#[derive(Clone)]
pub struct RedisConn(Arc<Shared>);

struct Shared {
    client: redis::Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    /// The URL without its password, for errors.
    shown: String,
    db: i64,
    /// (generation, connection): a failure drops only the connection it happened on, not a
    /// newer one another task opened meanwhile.
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting (one connect at a time); the last generation handed out.
    connecting: tokio::sync::Mutex<u64>,
}

impl RedisConn {
    /// The bound of one request.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.0.current.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let mut generation = self.0.connecting.lock().await;
        if let Some(c) = self.0.current.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let conn = self
            .0
            .client
            .get_multiplexed_async_connection_with_config(&self.0.config)
            .await
            .map_err(|e| self.unreachable(e))?;
        *generation += 1;
        let entry = (*generation, conn);
        if let Ok(mut current) = self.0.current.write() {
            *current = Some(entry.clone());
        }
        Ok(entry)
    }

    fn drop_connection(&self, generation: u64) {
        if let Ok(mut current) = self.0.current.write() {
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                *current = None;
            }
        }
    }

    /// A connect that failed on I/O: says which server and that it is tried again.
    fn unreachable(&self, e: RedisError) -> RedisError {
        self.io_error(e, "is unreachable")
    }

    /// A request that failed on I/O (the connection broke under it): says which server and that
    /// the next request reconnects.
    fn lost(&self, e: RedisError) -> RedisError {
        self.io_error(e, "lost the connection")
    }

    /// An I/O error naming the server, with the original error's kind where redis-rs tells it
    /// (callers and [`error_class`] still see an I/O error); other errors pass unchanged.
    fn io_error(&self, e: RedisError, what: &str) -> RedisError {
        if !e.is_io_error() {
            return e;
        }
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else if e.is_connection_refusal() {
            io::ErrorKind::ConnectionRefused
        } else if e.is_connection_dropped() {
            io::ErrorKind::ConnectionReset
        } else {
            io::ErrorKind::NotConnected
        };
        let message = format!(
            "Redis at {} {what} ({e}); the next request connects again",
            self.0.shown
        );
        io::Error::new(kind, message).into()
    }

    /// Runs one request on the shared connection within the timeout (see the module docs).
    async fn request<'a, T>(
        &'a self,
        send: impl FnOnce(MultiplexedConnection) -> RedisFuture<'a, T>,
    ) -> RedisResult<T> {
        // Generation of the connection the request went out on (0: still connecting).
        let used = AtomicU64::new(0);
        let attempt = async {
            let (generation, conn) = self.connection().await?;
            used.store(generation, Ordering::Relaxed);
            send(conn).await.map_err(|e| {
                if e.code().is_some() {
                    return e;
                }
                // Not an answer from the server: the connection is suspect.
                self.drop_connection(generation);
                self.lost(e)
            })
        };
        match tokio::time::timeout(self.0.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.drop_connection(used.load(Ordering::Relaxed));
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Redis at {}: no answer within {:?}; the next request connects again",
                        self.0.shown, self.0.timeout
                    ),
                )
                .into())
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.request(|mut conn| Box::pin(async move { conn.req_packed_command(cmd).await }))
                .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.request(|mut conn| {
                Box::pin(async move { conn.req_packed_commands(cmd, offset, count).await })
            })
            .await
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}

/// What to do about a failed connection to `url`, to append to the error (empty when nothing
/// specific applies). A TLS failure on `rediss://` is almost always a certificate this process
/// does not trust, and the error from OpenSSL alone does not say how to fix that.
pub fn connect_hint(url: &str, error: &RedisError) -> &'static str {
    let tls = url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("rediss://");
    if tls && error.to_string().contains("TLS") {
        " (TLS: the server's certificate is not trusted or does not name this host; to trust a \
         private CA, set SSL_CERT_FILE to a PEM file holding it, see SECURITY.md)"
    } else {
        ""
    }
}

/// The URL with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{}{masked}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_in_a_url() {
        assert_eq!(
            redact_url("redis://app:s3cret@redis:6379/0"),
            "redis://app:***@redis:6379/0"
        );
        assert_eq!(redact_url("rediss://s3cret@redis"), "rediss://***@redis");
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
        assert_eq!(
            redact_url("rediss://default:s3cret@cache.internal:6380/#insecure"),
            "rediss://default:***@cache.internal:6380/#insecure"
        );
    }

    #[test]
    fn tls_urls_are_accepted() {
        // Without a TLS feature in the redis crate this is "can't connect with TLS".
        let info = "rediss://cache.internal:6380/2"
            .into_connection_info()
            .unwrap();
        assert!(matches!(
            info.addr,
            redis::ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
        let tls = RedisError::from((redis::ErrorKind::IoError, "TLS error", "x".to_string()));
        assert!(connect_hint("rediss://h:6380", &tls).contains("SSL_CERT_FILE"));
        assert_eq!(connect_hint("redis://h:6379", &tls), "");
    }

    /// A `redis-server` of this test's own on `port` (so it can be killed and started again on
    /// the same address); killed on drop.
    struct Server(std::process::Child);

    impl Server {
        fn start(port: u16) -> Server {
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect(
                    "redis-server must be installed for this test (apt-get install redis-server)",
                );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not listen"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Server(child)
        }

        fn kill(mut self) {
            self.0.kill().unwrap();
            self.0.wait().unwrap();
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn set_get(conn: &mut RedisConn, value: &str) -> RedisResult<String> {
        redis::cmd("SET")
            .arg("k")
            .arg(value)
            .exec_async(conn)
            .await?;
        redis::cmd("GET").arg("k").query_async(conn).await
    }

    /// Redis killed and started again on the same port: while it is down a request fails at once
    /// with a transient error naming the server, and the first request after it is back is
    /// served, on the same `RedisConn` (no worker restart, no reconnect backoff to sit out).
    #[tokio::test]
    async fn serves_again_after_redis_restarts() {
        let port = free_port();
        let server = Server::start(port);
        let url = format!("redis://127.0.0.1:{port}/0");
        let mut conn = connect_with(&url, None, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(set_get(&mut conn, "before").await.unwrap(), "before");

        server.kill();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let error = set_get(&mut conn, "down").await.unwrap_err();
            assert_eq!(error_class(&error), ErrorClass::Transient, "{error}");
            assert!(error.is_io_error(), "{error}");
            assert!(
                error.to_string().contains(&format!("127.0.0.1:{port}")),
                "the error names the server: {error}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "fails without waiting"
            );
        }

        let _server = Server::start(port);
        assert_eq!(set_get(&mut conn, "after").await.unwrap(), "after");
    }

    /// A TCP proxy to `upstream` whose connections can be silenced: a silenced connection stays
    /// open but forwards nothing more either way, as a half-open socket does after a network
    /// partition or a host lost without a reset. New connections forward normally.
    async fn silenceable_proxy(upstream: u16) -> (u16, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(AtomicU64::new(0));
        let current = epoch.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let mine = current.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                    let current = current.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if current.load(Ordering::SeqCst) != mine {
                                // Silenced: hold both sockets open, forward nothing.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        (port, epoch)
    }

    /// A connection that stops answering without closing (no FIN, no RST) is given up after one
    /// timed-out request and the next request opens a new one. (redis-rs 0.32's
    /// `ConnectionManager` reconnects only on errors it deems unrecoverable; a response timeout
    /// is not one, so it kept sending into the dead socket: ARCHITECTURE.md, "One Redis
    /// connection strategy".)
    #[tokio::test]
    async fn a_silent_connection_is_replaced_after_one_timeout() {
        let port = free_port();
        let _server = Server::start(port);
        let (proxy, epoch) = silenceable_proxy(port).await;
        let url = format!("redis://127.0.0.1:{proxy}");
        let mut conn = connect_with(&url, None, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(set_get(&mut conn, "before").await.unwrap(), "before");

        epoch.fetch_add(1, Ordering::SeqCst);
        let error = set_get(&mut conn, "lost").await.unwrap_err();
        assert!(error.is_timeout(), "{error}");
        assert_eq!(error_class(&error), ErrorClass::Transient);
        assert!(error.to_string().contains("no answer within"), "{error}");

        assert_eq!(set_get(&mut conn, "after").await.unwrap(), "after");
    }

    #[test]
    fn only_answers_about_the_data_are_permanent() {
        let wrongtype = redis::make_extension_error("WRONGTYPE".into(), Some("Operation".into()));
        assert_eq!(error_class(&wrongtype), ErrorClass::Permanent);
        let conversion = RedisError::from((redis::ErrorKind::TypeError, "not a map"));
        assert_eq!(error_class(&conversion), ErrorClass::Permanent);
        for transient in [
            RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused)),
            RedisError::from((redis::ErrorKind::BusyLoadingError, "loading")),
            redis::make_extension_error("OOM".into(), None),
            RedisError::from((redis::ErrorKind::ReadOnly, "failover")),
        ] {
            assert_eq!(
                error_class(&transient),
                ErrorClass::Transient,
                "{transient}"
            );
        }
    }
}
