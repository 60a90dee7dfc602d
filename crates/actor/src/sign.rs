//! Standard Webhooks signing: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
//! The HMAC and base64 primitives are the ones `reflex_core::signing` uses for event signatures.

use reflex_core::signing::{base64_decode, base64_encode, hmac_sha256};

pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The key bytes of a secret: `whsec_<base64>` as Standard Webhooks issues them, else the text.
pub fn secret_bytes(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64_decode(b64)
            .map_err(|e| format!("a `whsec_` secret must be base64 after the prefix: {e}")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` value for one message.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", base64_encode(&mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // The vector of the Standard Webhooks reference libraries.
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(secret_bytes("whsec_***").is_err());
        assert_eq!(secret_bytes("plain").unwrap(), b"plain");
    }
}
