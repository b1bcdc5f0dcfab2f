//! The object-store client: `object_store::aws::AmazonS3` built from `[tier]`, with
//! credentials from the environment or an AWS shared-credentials file, and the start-up
//! access check.

use super::TierError;
use crate::config::tier::{ChecksumKnob, Credentials, TierConfig};
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};
use std::time::Duration;

/// Static credentials (never printed).
struct Keys {
    id: String,
    secret: String,
    token: Option<String>,
}

fn keys(t: &TierConfig) -> Result<Option<Keys>, TierError> {
    match t.credentials {
        Credentials::Anonymous => Ok(None),
        Credentials::Env => {
            let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => Ok(Some(Keys {
                    id,
                    secret,
                    token: get("AWS_SESSION_TOKEN"),
                })),
                _ => Err(TierError(
                    "tier.credentials=env but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set in the environment: set them, or use credentials=file with credentials-file".into(),
                )),
            }
        }
        Credentials::File => {
            let text = std::fs::read_to_string(&t.credentials_file).map_err(|e| {
                TierError(format!(
                    "cannot read tier.credentials-file {}: {e}",
                    t.credentials_file
                ))
            })?;
            parse_credentials_file(&text, &t.profile)
                .map_err(|e| {
                    TierError(format!("tier.credentials-file {}: {e}", t.credentials_file))
                })
                .map(Some)
        }
    }
}

/// The `[profile]` section of an AWS shared-credentials file (INI: `key = value` lines,
/// `#`/`;` comments).
fn parse_credentials_file(text: &str, profile: &str) -> Result<Keys, String> {
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut found = false;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().trim_start_matches("profile ").trim().to_string();
            found |= section == profile;
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    if !found {
        return Err(format!("has no [{profile}] section (tier.profile)"));
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Keys { id, secret, token }),
        _ => Err(format!(
            "section [{profile}] lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}

/// The endpoint as printed in notes.
pub fn endpoint_name(t: &TierConfig) -> String {
    if t.endpoint.is_empty() {
        format!("AWS S3 ({})", t.region)
    } else {
        t.endpoint.clone()
    }
}

pub fn build(t: &TierConfig) -> Result<AmazonS3, TierError> {
    let opts = ClientOptions::new()
        .with_timeout(Duration::from_millis(t.timeout_ms))
        .with_connect_timeout(Duration::from_millis(t.connect_timeout_ms))
        .with_allow_http(t.endpoint.starts_with("http://"));
    // object_store retries transient errors briefly; the tier's own loop retries uploads
    // for as long as it takes (retry-min-ms .. retry-max-ms).
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_millis(t.timeout_ms),
        ..RetryConfig::default()
    };
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&t.bucket)
        .with_region(&t.region)
        .with_virtual_hosted_style_request(!t.path_style)
        .with_client_options(opts)
        .with_retry(retry);
    if !t.endpoint.is_empty() {
        b = b.with_endpoint(&t.endpoint);
    }
    b = match t.checksum {
        ChecksumKnob::Sha256 => b.with_checksum_algorithm(Checksum::SHA256),
        ChecksumKnob::Crc64nvme => b.with_checksum_algorithm(Checksum::CRC64NVME),
        ChecksumKnob::None => b,
    };
    match keys(t)? {
        Some(k) => {
            b = b.with_access_key_id(k.id).with_secret_access_key(k.secret);
            if let Some(tok) = k.token {
                b = b.with_token(tok);
            }
        }
        None => b = b.with_skip_signature(true),
    }
    b.build()
        .map_err(|e| TierError(format!("cannot configure the object store client: {e}")))
}

/// Why the start-up access check failed.
pub enum AccessError {
    /// The store answered and refused (credentials, bucket, permissions): do not start.
    Refused(String),
    /// No answer (connection refused, timeout): start; uploads wait.
    Unreachable(String),
}

/// An object-store error in one line: S3's XML error body reduced to its Code and Message.
pub fn short(e: &object_store::Error) -> String {
    let s = e.to_string();
    let tag = |t: &str| -> Option<String> {
        let a = s.find(&format!("<{t}>"))? + t.len() + 2;
        let b = s[a..].find(&format!("</{t}>"))? + a;
        Some(s[a..b].to_string())
    };
    match (s.find("<?xml"), tag("Code"), tag("Message")) {
        (Some(x), Some(c), Some(m)) => format!(
            "{}{c}: {m}",
            s[..x].trim_end().trim_end_matches(':').to_string() + ": "
        ),
        _ => s,
    }
}

/// True when an error means the store did not answer (rather than refused).
pub fn is_unreachable(e: &object_store::Error) -> bool {
    let mut s = format!("{e}");
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    let s = s.to_ascii_lowercase();
    !s.contains("status")
        && (s.contains("error sending request")
            || s.contains("connect")
            || s.contains("timed out")
            || s.contains("timeout")
            || s.contains("connection"))
}

/// Writes `PREFIX/nodes/<node>`: proves the credentials may write to the bucket.
pub async fn check_access(
    store: &AmazonS3,
    t: &TierConfig,
    node_url: &str,
) -> Result<(), AccessError> {
    let node: String = node_url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let key = ObjPath::from(format!("{}/nodes/{node}", t.prefix));
    let body = serde_json::json!({
        "url": node_url,
        "started_unix_ms": crate::storage::now_unix_us() / 1000,
        "pid": std::process::id(),
    });
    match put_small(store, &key, body.to_string().into_bytes()).await {
        Ok(()) => Ok(()),
        Err(e) if is_unreachable(&e) => Err(AccessError::Unreachable(short(&e))),
        Err(e) => {
            let hint = match &e {
                object_store::Error::NotFound { .. } => format!(
                    "bucket {:?} does not exist at {} (create it, or fix tier.bucket / tier.endpoint)",
                    t.bucket,
                    endpoint_name(t)
                ),
                _ => format!(
                    "check the credentials (tier.credentials={}), the bucket {:?} and its write permission",
                    crate::config::choice_name(t.credentials, crate::config::tier::CREDENTIALS),
                    t.bucket
                ),
            };
            Err(AccessError::Refused(format!(
                "the object store {} refused a test write to {key}: {}; {hint}",
                endpoint_name(t),
                short(&e),
            )))
        }
    }
}

pub async fn put_small(store: &AmazonS3, key: &ObjPath, body: Vec<u8>) -> object_store::Result<()> {
    store.put(key, PutPayload::from(body)).await.map(|_| ())
}

pub async fn delete(store: &AmazonS3, key: &ObjPath) -> object_store::Result<()> {
    match store.delete(key).await {
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let f = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n[profile lab]\n# c\naws_access_key_id=C\naws_secret_access_key = D\naws_session_token = T\n";
        let k = parse_credentials_file(f, "default").unwrap();
        assert_eq!(
            (k.id.as_str(), k.secret.as_str(), k.token),
            ("A", "B", None)
        );
        let k = parse_credentials_file(f, "lab").unwrap();
        assert_eq!((k.id.as_str(), k.token.as_deref()), ("C", Some("T")));
        assert!(parse_credentials_file(f, "nope").is_err_and(|e| e.contains("[nope]")));
        assert!(parse_credentials_file("[x]\naws_access_key_id=1\n", "x").is_err());
    }
}
