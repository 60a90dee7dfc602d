//! One way to open Redis for every Reflex component (actor dedup store, runtime parking state,
//! `reflexctl dlq replay` checkpoints), with bounds that fit an event loop.

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
    }
}
