//! Signed events: HMAC-SHA256 with key ids, so keys can rotate.
//!
//! **What is signed** (version 1): the bytes
//! `"reflex-sig-v1"`, then for each of `ce_id`, `ce_source`, `ce_type`, `ce_time` and the record
//! value, its length as a big-endian u64 followed by its bytes (an absent header or value counts
//! as empty). Length prefixes make the encoding unambiguous: no header value can be shifted into
//! its neighbour. The key, other headers (`reflex-hops`, trace context) and the topic are not
//! signed, so routing and retries do not break signatures.
//!
//! **Where the signature goes**: the header `reflex-signature` =
//! `keyid=<id>,sig=<base64 (standard, padded) of the 32-byte MAC>`.
//!
//! **Rotation**: the verifier holds several keys, each with an id; a producer signs with one.
//! Add the new key to every verifier, switch producers to it, then drop the old key.
//!
//! **Keys** come only from the environment or files ([`crate::secrets`]), as `<id>=env:NAME` or
//! `<id>=file:PATH`. A key's bytes are the value as is, or base64 after a `base64:` prefix; at
//! least 16 bytes.
//!
//! The same HMAC primitive backs the actor's Standard Webhooks signatures ([`hmac_sha256`]).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::headers::{ce, reflex as rh};
use crate::secrets::{self, Secret, SecretError};
use crate::Headers;

/// Domain separation tag of the version-1 signed bytes.
pub const SIGNATURE_CONTEXT_V1: &[u8] = b"reflex-sig-v1";
/// Shortest key accepted.
pub const MIN_KEY_BYTES: usize = 16;

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Standard base64 (with padding), as the signature headers carry it.
pub fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    STANDARD.decode(text).map_err(|e| e.to_string())
}

/// One signing key.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub id: String,
    secret: Secret,
}

impl SigningKey {
    /// A key from its id and bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(id: &str, bytes: &[u8]) -> Result<Self, SigningError> {
        check_id(id)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(SigningError::KeyTooShort {
                id: id.to_string(),
                len: bytes.len(),
            });
        }
        Ok(Self {
            id: id.to_string(),
            secret: Secret::new(bytes),
        })
    }

    /// A key from `<id>=env:NAME` or `<id>=file:PATH`.
    pub fn from_spec(spec: &str) -> Result<Self, SigningError> {
        Self::from_spec_with(spec, &|n| std::env::var(n).ok())
    }

    pub fn from_spec_with(
        spec: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SigningError> {
        let (id, reference) = spec
            .split_once('=')
            .ok_or_else(|| SigningError::Spec(spec.to_string()))?;
        let id = id.trim();
        check_id(id)?;
        let secret = secrets::resolve_with(reference, env).map_err(|error| SigningError::Key {
            id: id.to_string(),
            error,
        })?;
        Self::from_material(id, secret.expose())
    }

    /// A key from a secret's content: `base64:<...>` is decoded, anything else is used as is.
    pub fn from_material(id: &str, material: &[u8]) -> Result<Self, SigningError> {
        match material.strip_prefix(b"base64:") {
            Some(b64) => {
                let text = std::str::from_utf8(b64).map_err(|_| SigningError::KeyBase64 {
                    id: id.to_string(),
                    error: "not UTF-8".into(),
                })?;
                let bytes =
                    base64_decode(text.trim()).map_err(|error| SigningError::KeyBase64 {
                        id: id.to_string(),
                        error,
                    })?;
                Self::new(id, &bytes)
            }
            None => Self::new(id, material),
        }
    }

    fn mac_state(&self, headers: &Headers, value: Option<&[u8]>) -> Hmac<Sha256> {
        let fields: [&[u8]; 5] = [
            headers.get(ce::ID).unwrap_or_default(),
            headers.get(ce::SOURCE).unwrap_or_default(),
            headers.get(ce::TYPE).unwrap_or_default(),
            headers.get(ce::TIME).unwrap_or_default(),
            value.unwrap_or_default(),
        ];
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose())
            .expect("HMAC takes keys of any length");
        mac.update(SIGNATURE_CONTEXT_V1);
        for f in fields {
            mac.update(&(f.len() as u64).to_be_bytes());
            mac.update(f);
        }
        mac
    }

    fn mac(&self, headers: &Headers, value: Option<&[u8]>) -> [u8; 32] {
        self.mac_state(headers, value)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The `reflex-signature` header value for a record.
    pub fn signature(&self, headers: &Headers, value: Option<&[u8]>) -> String {
        format!(
            "keyid={},sig={}",
            self.id,
            base64_encode(&self.mac(headers, value))
        )
    }

    /// Signs a record in place (replacing any earlier signature).
    pub fn sign(&self, headers: &mut Headers, value: Option<&[u8]>) {
        let sig = self.signature(headers, value);
        headers.set(rh::SIGNATURE, sig);
    }
}

fn check_id(id: &str) -> Result<(), SigningError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(SigningError::KeyId(id.to_string()));
    }
    Ok(())
}

/// A key-setup problem (start-up error). Never contains key material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("signing key `{0}` must be `<id>=env:NAME` or `<id>=file:PATH`")]
    Spec(String),
    #[error("signing key id `{0}` must be 1-64 characters of A-Z a-z 0-9 - _ .")]
    KeyId(String),
    #[error("signing key `{id}`: {error}")]
    Key { id: String, error: SecretError },
    #[error("signing key `{id}` is {len} bytes; use at least 16 (32 random bytes recommended)")]
    KeyTooShort { id: String, len: usize },
    #[error("signing key `{id}`: `base64:` value does not decode: {error}")]
    KeyBase64 { id: String, error: String },
    #[error("signing key id `{0}` is configured twice")]
    DuplicateId(String),
}

/// Why a record's signature is not accepted (the event is dead-lettered as `unauthorized`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("event is not signed: header `reflex-signature` is missing, and signatures are required (router.signing_keys is set)")]
    Unsigned,
    #[error("header `reflex-signature` is malformed: expected `keyid=<id>,sig=<base64>`")]
    Malformed,
    #[error("event is signed with unknown key id `{0}` (not in router.signing_keys: rotated out, or not yet deployed)")]
    UnknownKey(String),
    #[error("signature by key `{0}` does not match the event (ce_id, ce_source, ce_type, ce_time or value changed, or wrong key)")]
    BadSignature(String),
}

/// Keys a verifier accepts.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    pub fn new(keys: Vec<SigningKey>) -> Result<Self, SigningError> {
        let mut seen = std::collections::BTreeSet::new();
        for k in &keys {
            if !seen.insert(k.id.clone()) {
                return Err(SigningError::DuplicateId(k.id.clone()));
            }
        }
        Ok(Self { keys })
    }

    /// Loads `<id>=env:NAME` / `<id>=file:PATH` specs.
    pub fn from_specs(specs: &[String]) -> Result<Self, SigningError> {
        Self::new(
            specs
                .iter()
                .map(|s| SigningKey::from_spec(s))
                .collect::<Result<_, _>>()?,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Checks the record's signature; returns the key id that signed it.
    pub fn verify(&self, headers: &Headers, value: Option<&[u8]>) -> Result<String, VerifyError> {
        let header = headers.get(rh::SIGNATURE).ok_or(VerifyError::Unsigned)?;
        let (key_id, sig) = parse_signature(header).ok_or(VerifyError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| VerifyError::UnknownKey(key_id.to_string()))?;
        // `verify_slice` compares in constant time.
        key.mac_state(headers, value)
            .verify_slice(&sig)
            .map_err(|_| VerifyError::BadSignature(key_id.to_string()))?;
        Ok(key_id.to_string())
    }
}

/// Splits `keyid=<id>,sig=<base64>` (either order, spaces allowed).
fn parse_signature(header: &[u8]) -> Option<(&str, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?;
    let (mut id, mut sig) = (None, None);
    for part in text.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "keyid" => id = Some(v.trim()),
            // base64 padding contains `=`: split_once keeps it in `v`.
            "sig" => sig = Some(base64_decode(v.trim()).ok()?),
            _ => return None,
        }
    }
    Some((id.filter(|i| !i.is_empty())?, sig?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Headers {
        let mut h = Headers::new();
        h.push(ce::SPECVERSION, "1.0");
        h.push(ce::ID, "e1");
        h.push(ce::SOURCE, "src");
        h.push(ce::TYPE, "t");
        h.push(ce::TIME, "2026-01-01T00:00:00Z");
        h
    }

    #[test]
    fn sign_then_verify_with_rotation() {
        let old = SigningKey::new("k2025", b"0123456789abcdef-old").unwrap();
        let new = SigningKey::new("k2026", b"0123456789abcdef-new").unwrap();
        let ring = KeyRing::new(vec![old.clone(), new.clone()]).unwrap();
        for key in [&old, &new] {
            let mut h = record();
            key.sign(&mut h, Some(b"value"));
            assert_eq!(ring.verify(&h, Some(b"value")).unwrap(), key.id);
        }
        // After rotation the old key is gone: its signatures are refused by id.
        let only_new = KeyRing::new(vec![new.clone()]).unwrap();
        let mut h = record();
        old.sign(&mut h, Some(b"value"));
        assert_eq!(
            only_new.verify(&h, Some(b"value")),
            Err(VerifyError::UnknownKey("k2025".into()))
        );
    }

    #[test]
    fn tampering_and_missing_signatures_are_refused() {
        let key = SigningKey::new("k", b"0123456789abcdef").unwrap();
        let ring = KeyRing::new(vec![key.clone()]).unwrap();
        let mut h = record();
        assert_eq!(ring.verify(&h, Some(b"v")), Err(VerifyError::Unsigned));
        key.sign(&mut h, Some(b"v"));
        assert_eq!(
            ring.verify(&h, Some(b"v2")),
            Err(VerifyError::BadSignature("k".into()))
        );
        for field in [ce::ID, ce::SOURCE, ce::TYPE, ce::TIME] {
            let mut t = h.clone();
            t.set(field, "changed");
            assert!(ring.verify(&t, Some(b"v")).is_err(), "{field}");
        }
        // Not signed: other headers may change (hops, trace context).
        let mut t = h.clone();
        t.set(rh::HOPS, "3");
        assert!(ring.verify(&t, Some(b"v")).is_ok());
        // Length prefixes: moving bytes between fields changes the MAC.
        let mut a = record();
        a.set(ce::ID, "e1s");
        a.set(ce::SOURCE, "rc");
        key.sign(&mut a, None);
        let mut b = record();
        b.set(rh::SIGNATURE, a.get(rh::SIGNATURE).unwrap().to_vec());
        assert!(ring.verify(&b, None).is_err());
        for bad in ["", "keyid=k", "sig=AAAA", "keyid=k,sig=***", "x=1"] {
            let mut t = h.clone();
            t.set(rh::SIGNATURE, bad);
            assert_eq!(
                ring.verify(&t, Some(b"v")),
                Err(VerifyError::Malformed),
                "{bad}"
            );
        }
        let mut t = h.clone();
        t.set(rh::SIGNATURE, "keyid=k,sig=AAAA");
        assert_eq!(
            ring.verify(&t, Some(b"v")),
            Err(VerifyError::BadSignature("k".into()))
        );
    }

    #[test]
    fn keys_come_from_env_or_files_only() {
        let env = |n: &str| match n {
            "K1" => Some("base64:MDEyMzQ1Njc4OWFiY2RlZg==".to_string()),
            "SHORT" => Some("short".to_string()),
            _ => None,
        };
        let k = SigningKey::from_spec_with("k1=env:K1", &env).unwrap();
        assert_eq!(k.id, "k1");
        assert!(!format!("{k:?}").contains("0123456789"));
        assert!(matches!(
            SigningKey::from_spec_with("k1=0123456789abcdef", &env),
            Err(SigningError::Key { .. })
        ));
        assert!(matches!(
            SigningKey::from_spec_with("k1=env:SHORT", &env),
            Err(SigningError::KeyTooShort { len: 5, .. })
        ));
        assert!(matches!(
            SigningKey::from_spec_with("bad id=env:K1", &env),
            Err(SigningError::KeyId(_))
        ));
        assert!(matches!(
            SigningKey::from_spec_with("env:K1", &env),
            Err(SigningError::KeyId(_)) | Err(SigningError::Spec(_))
        ));
        let k2 = k.clone();
        assert_eq!(
            KeyRing::new(vec![k, k2]).unwrap_err(),
            SigningError::DuplicateId("k1".into())
        );
    }

    #[test]
    fn fixed_vector() {
        // Pinned so that producers in other languages can check their implementation.
        let key = SigningKey::new("k1", b"0123456789abcdef").unwrap();
        let h = record();
        let sig = key.signature(&h, Some(b"\x00\x00\x00\x00\x07datum"));
        let mut msg = SIGNATURE_CONTEXT_V1.to_vec();
        for f in [
            &b"e1"[..],
            b"src",
            b"t",
            b"2026-01-01T00:00:00Z",
            b"\x00\x00\x00\x00\x07datum",
        ] {
            msg.extend_from_slice(&(f.len() as u64).to_be_bytes());
            msg.extend_from_slice(f);
        }
        let want = base64_encode(&hmac_sha256(b"0123456789abcdef", &[&msg]));
        assert_eq!(sig, format!("keyid=k1,sig={want}"));
    }
}
