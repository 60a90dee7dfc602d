//! One way to open Redis for every Reflex component (actor dedup store, runtime parking state,
//! `reflexctl dlq replay` checkpoints), with bounds that fit an event loop.
//!
//! `rediss://` URLs speak TLS through OpenSSL (the `redis` crate's native-tls backend; OpenSSL is
//! linked for librdkafka anyway). The server certificate is verified against OpenSSL's default
//! trust store, which honours `SSL_CERT_FILE` / `SSL_CERT_DIR`: that is how a private CA is
//! trusted. `rediss://...#insecure` turns verification off (the crate's own switch; not for
//! production).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError};

/// Credentials given apart from the URL (from a secret reference): optional ACL user, password.
pub type Auth = Option<(Option<String>, String)>;

/// A reconnecting connection. A command waits at most 5 s (callers treat that as transient) and
/// reconnects back off up to 2 s: the crate's default backoff factor waits 100 s between retries
/// in this version (it multiplies a 1 s base), which would hang start-up, so it is set here.
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    connect_with_auth(url, None).await
}

/// Like [`connect`]; `auth` overrides credentials in the URL (Redis AUTH / ACL users), so the
/// URL in a config file can hold none.
pub async fn connect_with_auth(url: &str, auth: Auth) -> Result<ConnectionManager, RedisError> {
    let mut info = url.into_connection_info()?;
    if let Some((username, password)) = auth {
        if username.is_some() {
            info.redis.username = username;
        }
        info.redis.password = Some(password);
    }
    let client = redis::Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_factor(2)
        .set_max_delay(2000)
        .set_number_of_retries(2)
        .set_connection_timeout(Duration::from_secs(3))
        .set_response_timeout(Duration::from_secs(5));
    ConnectionManager::new_with_config(client, config).await
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
}
