//! [tier] section: sealed replays on an S3-compatible object store (`crate::tier`).
//! The tier is on when `bucket` is set; every other knob of the section is refused
//! without it (so a half-written config is not silently ignored).

use super::{
    choice_name, parse_bool, parse_bytes, parse_choice, parse_num, Config, ConfigError, Knob,
    Section,
};

/// Where the tier's credentials come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN.
    Env,
    /// An AWS shared-credentials file (`credentials-file`, section `profile`).
    File,
    /// Unsigned requests (a public or anonymous bucket).
    Anonymous,
}

pub const CREDENTIALS: &[(&str, Credentials)] = &[
    ("env", Credentials::Env),
    ("file", Credentials::File),
    ("anonymous", Credentials::Anonymous),
];

/// How GET /matches/{id} answers for a replay that is only in the object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// Fetch it into the local store (verified), then serve it as a local file.
    Proxy,
    /// 302 to a presigned URL of the object.
    Redirect,
}

pub const SERVES: &[(&str, Serve)] = &[("proxy", Serve::Proxy), ("redirect", Serve::Redirect)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepLocal {
    /// Local copies stay (the tier is a second copy).
    Forever,
    /// Local copies of archived replays are deleted `keep-local-s` after they were
    /// archived or fetched (the local store is a cache).
    For,
}

pub const KEEP_LOCALS: &[(&str, KeepLocal)] =
    &[("forever", KeepLocal::Forever), ("for", KeepLocal::For)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumKnob {
    Sha256,
    Crc64nvme,
    None,
}

pub const CHECKSUMS: &[(&str, ChecksumKnob)] = &[
    ("sha256", ChecksumKnob::Sha256),
    ("crc64nvme", ChecksumKnob::Crc64nvme),
    ("none", ChecksumKnob::None),
];

#[derive(Clone, Debug, PartialEq)]
pub struct TierConfig {
    pub bucket: String,
    pub endpoint: String,
    pub region: String,
    pub prefix: String,
    pub credentials: Credentials,
    pub credentials_file: String,
    pub profile: String,
    pub path_style: bool,
    pub upload_concurrency: u32,
    pub part_bytes: u64,
    pub queue_max: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub checksum: ChecksumKnob,
    pub keep_local: KeepLocal,
    pub keep_local_s: u64,
    pub serve: Serve,
    pub presign_s: u64,
    pub list_interval_s: u64,
    pub node_url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// TEST ONLY: delay before each multipart part.
    pub test_part_delay_ms: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            bucket: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            prefix: "uring-lab".into(),
            credentials: Credentials::Env,
            credentials_file: String::new(),
            profile: "default".into(),
            path_style: true,
            upload_concurrency: 4,
            part_bytes: 8 << 20,
            queue_max: 10_000,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
            checksum: ChecksumKnob::Sha256,
            keep_local: KeepLocal::Forever,
            keep_local_s: 0,
            serve: Serve::Proxy,
            presign_s: 300,
            list_interval_s: 10,
            node_url: String::new(),
            timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            test_part_delay_ms: 0,
        }
    }
}

impl TierConfig {
    pub fn enabled(&self) -> bool {
        !self.bucket.is_empty()
    }
}

const fn k(
    name: &'static str,
    values: &'static str,
    default: &'static str,
    help: &'static str,
) -> Knob {
    Knob {
        section: "tier",
        name,
        kernel: "",
        since: "",
        values,
        default,
        help,
    }
}

const KNOBS: &[Knob] = &[
    k("bucket", "string", "", "Object-store bucket for sealed replays; empty: no tier (every other [tier] option is then refused). Objects: PREFIX/replays/<id>.rpl, PREFIX/live/<id> (which node records a live match), PREFIX/nodes/<node>."),
    k("endpoint", "url", "", "S3 endpoint URL (http:// or https://), e.g. a SeaweedFS or MinIO gateway; empty: AWS S3 in `region`."),
    k("region", "string", "us-east-1", "S3 region (signed into every request)."),
    k("prefix", "string", "uring-lab", "Key prefix inside the bucket; nodes sharing a fleet use the same prefix."),
    k("credentials", "env|file|anonymous", "env", "env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) from the environment; file: an AWS shared-credentials file (credentials-file, profile); anonymous: unsigned requests. Wrong credentials stop `recorder serve` at start."),
    k("credentials-file", "path", "", "With credentials=file: the INI file with aws_access_key_id / aws_secret_access_key (/ aws_session_token) under [profile]."),
    k("profile", "string", "default", "With credentials=file: the section of credentials-file to use."),
    k("path-style", "bool", "true", "true: path-style requests (ENDPOINT/BUCKET/KEY, what SeaweedFS and MinIO expect); false: virtual-hosted style (BUCKET.ENDPOINT/KEY)."),
    k("upload-concurrency", "u32", "4", "Replays uploaded at once (each multipart upload also sends up to 2 parts at once)."),
    k("part-bytes", "bytes", "8388608", "Multipart part size; replays larger than this are uploaded in parts (S3: at least 5m, at most 5g)."),
    k("queue-max", "u64", "10000", "Sealed replays queued for upload in memory; past it they wait on local disk and are picked up by the next rescan (nothing is dropped)."),
    k("retry-min-ms", "u64", "200", "First retry delay after a failed upload or fetch; doubles per failure up to retry-max-ms. Uploads retry until they succeed."),
    k("retry-max-ms", "u64", "30000", "Longest delay between upload retries (and the rescan period for replays waiting on disk)."),
    k("checksum", "sha256|crc64nvme|none", "sha256", "Checksum sent with every PUT and part (x-amz-checksum-*) for the store to verify on receipt; independently, the replay's CRC32C is stored as object metadata and checked on every download."),
    k("keep-local", "forever|for", "forever", "forever: local copies stay; for: the local copy of an archived replay (own or fetched) is deleted keep-local-s after it was archived or fetched, and served from the tier afterwards."),
    k("keep-local-s", "u64", "0", "With keep-local=for: seconds a local copy stays after it is archived or fetched (0: deleted as soon as it is archived)."),
    k("serve", "proxy|redirect", "proxy", "GET of a replay not on local disk: proxy fetches it into the local store (CRC-checked) and serves it like a local file (Range, ETag, HEAD); redirect answers 302 with a presigned URL of the object."),
    k("presign-s", "u64", "300", "With serve=redirect: how long a presigned URL is valid."),
    k("list-interval-s", "u64", "10", "How often the bucket is listed to learn replays other nodes archived (for /matches); 0: never (ids are still looked up on demand)."),
    k("node-url", "url", "", "This node's HTTP base URL as clients reach it, written into PREFIX/live/<id> so other nodes can redirect viewers of a live match here; empty: http://<http-addr>."),
    k("timeout-ms", "u64", "30000", "Timeout of one object-store request (a part, a small PUT, a GET)."),
    k("connect-timeout-ms", "u64", "5000", "TCP/TLS connect timeout to the object store."),
    k("test-part-delay-ms", "u64", "0", "TEST ONLY: sleep this long before each multipart part is sent, so a test can kill the recorder in the middle of a multipart upload; never set it in production."),
];

impl Section for TierConfig {
    const NAME: &'static str = "tier";
    fn knobs() -> &'static [Knob] {
        KNOBS
    }
    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "bucket" => self.bucket = v.trim().to_string(),
            "endpoint" => self.endpoint = v.trim().trim_end_matches('/').to_string(),
            "region" => self.region = v.trim().to_string(),
            "prefix" => self.prefix = v.trim().trim_matches('/').to_string(),
            "credentials" => self.credentials = parse_choice(v, CREDENTIALS)?,
            "credentials-file" => self.credentials_file = v.to_string(),
            "profile" => self.profile = v.trim().to_string(),
            "path-style" => self.path_style = parse_bool(v)?,
            "upload-concurrency" => self.upload_concurrency = parse_num(v)?,
            "part-bytes" => self.part_bytes = parse_bytes(v)?,
            "queue-max" => self.queue_max = parse_num(v)?,
            "retry-min-ms" => self.retry_min_ms = parse_num(v)?,
            "retry-max-ms" => self.retry_max_ms = parse_num(v)?,
            "checksum" => self.checksum = parse_choice(v, CHECKSUMS)?,
            "keep-local" => self.keep_local = parse_choice(v, KEEP_LOCALS)?,
            "keep-local-s" => self.keep_local_s = parse_num(v)?,
            "serve" => self.serve = parse_choice(v, SERVES)?,
            "presign-s" => self.presign_s = parse_num(v)?,
            "list-interval-s" => self.list_interval_s = parse_num(v)?,
            "node-url" => self.node_url = v.trim().trim_end_matches('/').to_string(),
            "timeout-ms" => self.timeout_ms = parse_num(v)?,
            "connect-timeout-ms" => self.connect_timeout_ms = parse_num(v)?,
            "test-part-delay-ms" => self.test_part_delay_ms = parse_num(v)?,
            _ => return Err(format!("unknown option {name}")),
        }
        Ok(())
    }
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "bucket" => self.bucket.clone(),
            "endpoint" => self.endpoint.clone(),
            "region" => self.region.clone(),
            "prefix" => self.prefix.clone(),
            "credentials" => choice_name(self.credentials, CREDENTIALS).to_string(),
            "credentials-file" => self.credentials_file.clone(),
            "profile" => self.profile.clone(),
            "path-style" => self.path_style.to_string(),
            "upload-concurrency" => self.upload_concurrency.to_string(),
            "part-bytes" => self.part_bytes.to_string(),
            "queue-max" => self.queue_max.to_string(),
            "retry-min-ms" => self.retry_min_ms.to_string(),
            "retry-max-ms" => self.retry_max_ms.to_string(),
            "checksum" => choice_name(self.checksum, CHECKSUMS).to_string(),
            "keep-local" => choice_name(self.keep_local, KEEP_LOCALS).to_string(),
            "keep-local-s" => self.keep_local_s.to_string(),
            "serve" => choice_name(self.serve, SERVES).to_string(),
            "presign-s" => self.presign_s.to_string(),
            "list-interval-s" => self.list_interval_s.to_string(),
            "node-url" => self.node_url.clone(),
            "timeout-ms" => self.timeout_ms.to_string(),
            "connect-timeout-ms" => self.connect_timeout_ms.to_string(),
            "test-part-delay-ms" => self.test_part_delay_ms.to_string(),
            _ => return None,
        })
    }
}

/// Cross-option rules of this section.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let t = &cfg.tier;
    if !t.enabled() {
        let d = TierConfig::default();
        if let Some(kn) = KNOBS
            .iter()
            .find(|kn| kn.name != "bucket" && t.get(kn.name) != d.get(kn.name))
        {
            return Err(ConfigError::new(
                &[kn.name, "bucket"],
                format!(
                    "tier.{} is set but tier.bucket is empty, so there is no tier to apply it to: set tier.bucket to use the object-store tier, or remove the [tier] options",
                    kn.name
                ),
            ));
        }
        return Ok(());
    }
    if !t
        .bucket
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        || t.bucket.len() < 3
        || t.bucket.len() > 63
    {
        return Err(ConfigError::new(
            &["bucket"],
            format!(
                "bucket {:?} is not an S3 bucket name (3-63 characters: a-z, 0-9, '-', '.')",
                t.bucket
            ),
        ));
    }
    if !(t.endpoint.is_empty()
        || t.endpoint.starts_with("http://")
        || t.endpoint.starts_with("https://"))
    {
        return Err(ConfigError::new(
            &["endpoint"],
            format!(
                "endpoint {:?} must be a URL starting with http:// or https://",
                t.endpoint
            ),
        ));
    }
    if !(t.node_url.is_empty()
        || t.node_url.starts_with("http://")
        || t.node_url.starts_with("https://"))
    {
        return Err(ConfigError::new(
            &["node-url"],
            format!(
                "node-url {:?} must be a URL starting with http:// or https://",
                t.node_url
            ),
        ));
    }
    if t.prefix.is_empty()
        || t.prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(ConfigError::new(
            &["prefix"],
            format!(
                "prefix {:?} must be a non-empty key prefix without empty, '.' or '..' segments",
                t.prefix
            ),
        ));
    }
    if t.region.is_empty() {
        return Err(ConfigError::new(
            &["region"],
            "region must not be empty (us-east-1 for most S3-compatible stores)",
        ));
    }
    match (t.credentials, t.credentials_file.is_empty()) {
        (Credentials::File, true) => {
            return Err(ConfigError::new(
                &["credentials", "credentials-file"],
                "credentials=file needs credentials-file (an AWS shared-credentials file)",
            ))
        }
        (Credentials::Env | Credentials::Anonymous, false) => {
            return Err(ConfigError::new(
                &["credentials", "credentials-file"],
                "credentials-file is only read with credentials=file: set credentials=file or remove credentials-file",
            ))
        }
        _ => {}
    }
    if t.credentials != Credentials::File && t.profile != "default" {
        return Err(ConfigError::new(
            &["credentials", "profile"],
            "profile is only read with credentials=file",
        ));
    }
    if t.credentials == Credentials::Anonymous && t.serve == Serve::Redirect {
        return Err(ConfigError::new(
            &["credentials", "serve"],
            "serve=redirect presigns URLs with the tier's credentials; with credentials=anonymous use serve=proxy",
        ));
    }
    if t.upload_concurrency == 0 || t.upload_concurrency > 256 {
        return Err(ConfigError::new(
            &["upload-concurrency"],
            "upload-concurrency must be between 1 and 256",
        ));
    }
    if t.part_bytes < (5 << 20) || t.part_bytes > (5 << 30) {
        return Err(ConfigError::new(
            &["part-bytes"],
            format!(
                "part-bytes {} is outside S3's multipart limits: use 5m to 5g",
                t.part_bytes
            ),
        ));
    }
    if t.queue_max == 0 {
        return Err(ConfigError::new(
            &["queue-max"],
            "queue-max must be at least 1",
        ));
    }
    if t.retry_min_ms == 0 || t.retry_min_ms > t.retry_max_ms {
        return Err(ConfigError::new(
            &["retry-min-ms", "retry-max-ms"],
            "retry-min-ms must be at least 1 and at most retry-max-ms",
        ));
    }
    if t.keep_local == KeepLocal::Forever && t.keep_local_s != 0 {
        return Err(ConfigError::new(
            &["keep-local", "keep-local-s"],
            "keep-local-s applies only with keep-local=for (keep-local=forever never deletes local copies)",
        ));
    }
    if t.serve != Serve::Redirect && t.presign_s != TierConfig::default().presign_s {
        return Err(ConfigError::new(
            &["serve", "presign-s"],
            "presign-s applies only with serve=redirect",
        ));
    }
    if t.serve == Serve::Redirect && (t.presign_s == 0 || t.presign_s > 7 * 24 * 3600) {
        return Err(ConfigError::new(
            &["presign-s"],
            "presign-s must be between 1 and 604800 (S3 presigned URLs last at most 7 days)",
        ));
    }
    if t.timeout_ms == 0 || t.connect_timeout_ms == 0 {
        return Err(ConfigError::new(
            &["timeout-ms", "connect-timeout-ms"],
            "timeout-ms and connect-timeout-ms must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_knobs_without_a_bucket_are_refused_by_name() {
        let mut c = Config::default();
        c.set("tier.part-bytes", "16m").unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            e.message.contains("tier.part-bytes") && e.message.contains("bucket"),
            "{e}"
        );
    }

    #[test]
    fn tier_rules_name_what_to_change() {
        let base = || {
            let mut c = Config::default();
            c.set("tier.bucket", "replays").unwrap();
            c
        };
        assert!(base().validate().is_ok());
        for (k, v, want) in [
            ("tier.part-bytes", "1m", "5m"),
            ("tier.endpoint", "localhost:9000", "http://"),
            ("tier.keep-local-s", "60", "keep-local=for"),
            ("tier.credentials", "file", "credentials-file"),
            ("tier.upload-concurrency", "0", "upload-concurrency"),
        ] {
            let mut c = base();
            c.set(k, v).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.message.contains(want), "{k}={v}: {e}");
        }
        let mut c = base();
        c.set("tier.bucket", "Bad_Bucket").unwrap();
        assert!(c.validate().unwrap_err().message.contains("bucket"));
    }
}
