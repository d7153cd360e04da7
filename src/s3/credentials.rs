//! Where the signing keys come from when no static keys are configured: the platform's
//! environment, resolved in the order of the AWS SDK for Go v2's default chain (what rclone's
//! `env_auth` uses), so that lifeboat's client and rclone sign as the same identity:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. web identity (IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`
//!    (+ `AWS_ROLE_SESSION_NAME`), exchanged with STS `AssumeRoleWithWebIdentity` at
//!    `AWS_ENDPOINT_URL_STS`, else `https://sts.<AWS_REGION>.amazonaws.com`;
//! 3. container credentials (EKS Pod Identity, ECS): `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//!    (else `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` under `http://169.254.170.2`) with the
//!    token of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (read at every fetch: it rotates) or
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
//!
//! The SDK would also read profile files and the EC2 instance metadata service; neither is
//! supported here, so the caller must keep them from rclone (see [`RCLONE_ENV`]) and a
//! configuration naming a profile is refused ([`resolve`]). Where the SDK would fail later
//! (web identity without a role or without a region) the configuration is refused at once.
//!
//! Temporary credentials are cached and fetched again [`REFRESH_BEFORE`] ahead of their
//! expiry, so a long run signs its last request with valid keys. Every fetch is bounded
//! (connect and request timeouts, [`MAX_ANSWER_BYTES`], [`MAX_TOKEN_BYTES`], three
//! attempts); no token, key or answer body reaches an error message.
//!
//! Longer than the ~500-line guide: the order of the sources is the rule (the AWS SDK's), so
//! the chain stays in one file, one function per source.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::{err, Error, ErrorKind};
use super::sigv4::uri_encode;
use super::trust::Trust;
use super::{proxy, xml, Credentials};
use crate::secret::Secret;

/// The variables [`resolve`] reads: exactly these reach rclone (with [`RCLONE_ENV`]), so both
/// clients see the same environment.
pub const VARS: [&str; 13] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// Those of [`VARS`] that are credentials (never logged; the chart must take them from a Secret).
pub const SECRET_VARS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// Set in rclone's environment beside [`VARS`]: no profile files, no instance metadata, the
/// two sources of the SDK's chain this module does not follow.
pub const RCLONE_ENV: [(&str, &str); 3] = [
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Variables that choose a profile: refused, profiles are not followed.
const PROFILE_VARS: [&str; 3] = ["AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"];

/// Fetched credentials are renewed this long before they expire (the SDK's window for
/// container credentials).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The largest STS or container-endpoint answer read.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// The largest token file read (a projected service-account token is about 1 KiB).
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;
const ATTEMPTS: u32 = 3;
/// The ECS agent's address, the base of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS_HOST: &str = "http://169.254.170.2";
/// Hosts a plain-http container endpoint may have (the SDK's rule): loopback, ECS, EKS.
const CONTAINER_HOSTS: [&str; 3] = ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"];

/// Where credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// Fixed keys (configured, or from `AWS_ACCESS_KEY_ID`...).
    Static(Credentials),
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
        sts_url: String,
    },
    Container {
        url: String,
        token_file: Option<PathBuf>,
        token: Option<Secret>,
    },
}

impl Source {
    /// A name for logs and summaries (no secret in it).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Static(_) => "static",
            Source::WebIdentity { .. } => "web_identity",
            Source::Container { .. } => "container",
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::WebIdentity { role_arn, .. } => write!(f, "WebIdentity({role_arn})"),
            other => f.write_str(other.kind()),
        }
    }
}

/// The environment's credential source, or `Ok(None)` when it offers none. `var` reads one
/// variable (empty counts as unset). The error names the variable that is wrong, and what.
pub fn resolve(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Source>, (&'static str, String)> {
    let get = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(p) = PROFILE_VARS.iter().find(|p| get(p).is_some()) {
        return Err((
            p,
            "is set, but profiles are not supported (rclone is kept from reading them too): use static keys, \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity or container credentials"
                .into(),
        ));
    }
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key), Some(secret)) => {
            return Ok(Some(Source::Static(Credentials {
                access_key,
                secret_key: Secret::new(secret),
                session_token: get("AWS_SESSION_TOKEN").map(Secret::new),
            })))
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err((
                "AWS_SECRET_ACCESS_KEY",
                "is missing while AWS_ACCESS_KEY_ID is set".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "AWS_ACCESS_KEY_ID",
                "is missing while AWS_SECRET_ACCESS_KEY is set".into(),
            ))
        }
    }
    if let Some(file) = get("AWS_WEB_IDENTITY_TOKEN_FILE") {
        let role_arn = get("AWS_ROLE_ARN").ok_or((
            "AWS_ROLE_ARN",
            "is missing while AWS_WEB_IDENTITY_TOKEN_FILE is set (the role to assume)".into(),
        ))?;
        if !role_arn.starts_with("arn:") || role_arn.len() > 2048 {
            return Err((
                "AWS_ROLE_ARN",
                "expected a role ARN such as arn:aws:iam::123456789012:role/name".into(),
            ));
        }
        let session_name = match get("AWS_ROLE_SESSION_NAME") {
            Some(n) => {
                let ok = (2..=64).contains(&n.len())
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
                if !ok {
                    return Err((
                        "AWS_ROLE_SESSION_NAME",
                        "expected 2 to 64 of letters, digits and + = , . @ _ -".into(),
                    ));
                }
                n
            }
            None => format!("lifeboat-{}", unix_now()),
        };
        let sts_url = match (get("AWS_ENDPOINT_URL_STS"), region(&get)) {
            (Some(url), _) => {
                check_url(&url).map_err(|why| ("AWS_ENDPOINT_URL_STS", why))?;
                url
            }
            (None, Some(r)) => {
                let domain = if r.starts_with("cn-") {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                };
                format!("https://sts.{r}.{domain}")
            }
            (None, None) => {
                return Err((
                    "AWS_REGION",
                    "is missing: web identity needs it (or AWS_ENDPOINT_URL_STS), rclone's STS client takes its \
                     region from the environment, not from the bucket's REGION"
                        .into(),
                ))
            }
        };
        let token_file = PathBuf::from(file);
        if !token_file.is_file() {
            return Err((
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "no such file (is the service-account token projected?)".into(),
            ));
        }
        return Ok(Some(Source::WebIdentity {
            token_file,
            role_arn,
            session_name,
            sts_url,
        }));
    }
    let url = match (
        get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
    ) {
        (Some(full), _) => {
            check_container_url(&full).map_err(|why| ("AWS_CONTAINER_CREDENTIALS_FULL_URI", why))?;
            full
        }
        (None, Some(rel)) if rel.starts_with('/') => format!("{ECS_HOST}{rel}"),
        (None, Some(_)) => {
            return Err((
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "expected a path starting with /".into(),
            ))
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Source::Container {
        url,
        token_file: get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
        token: get("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(Secret::new),
    }))
}

fn region(get: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let r = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"))?;
    r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-').then_some(r)
}

fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) || url.contains('@') {
        return Err("expected an http:// or https:// URL without credentials".into());
    }
    Ok(())
}

/// The SDK's rule: https anywhere; plain http only to loopback or the ECS/EKS agent.
fn check_container_url(url: &str) -> Result<(), String> {
    check_url(url)?;
    if url.to_ascii_lowercase().starts_with("https://") {
        return Ok(());
    }
    let host = super::endpoint::normalise(url).host;
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback || CONTAINER_HOSTS.contains(&host.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "a plain http endpoint must be loopback or the ECS/EKS agent (169.254.170.2, 169.254.170.23), got host {host:?}"
        ))
    }
}

/// Credentials from one [`Source`], fetched when needed and cached until shortly before
/// they expire. Shared (in an `Arc`) by every client that signs with them.
pub struct Provider {
    source: Source,
    connect: Duration,
    request_timeout: Duration,
    user_agent: String,
    cached: Mutex<Option<(Credentials, Option<u64>)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({:?})", self.source)
    }
}

impl Provider {
    /// `connect` and `request_timeout` bound each fetch.
    pub fn new(source: Source, connect: Duration, request_timeout: Duration, user_agent: &str) -> Provider {
        Provider {
            source,
            connect,
            request_timeout,
            user_agent: user_agent.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// A provider of fixed keys.
    pub fn fixed(credentials: Credentials) -> Provider {
        Provider::new(Source::Static(credentials), Duration::ZERO, Duration::ZERO, "")
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Valid credentials: the cached ones, or fresh ones when they are missing or expire
    /// within [`REFRESH_BEFORE`]. A failure is of kind `credentials` whatever its cause (the
    /// detail says which: a refusal, a timeout, an unreachable endpoint).
    pub fn get(&self) -> Result<Credentials, Error> {
        if let Source::Static(c) = &self.source {
            return Ok(c.clone());
        }
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, expiry)) = cached.as_ref() {
            if expiry.is_none_or(|e| unix_now() + REFRESH_BEFORE.as_secs() < e) {
                return Ok(c.clone());
            }
        }
        let mut last = err(ErrorKind::Other, "no attempt made");
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            match self.fetch() {
                Ok(fresh) => {
                    *cached = Some(fresh.clone());
                    return Ok(fresh.0);
                }
                Err((e, retry)) => {
                    last = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        last.kind = ErrorKind::Credentials;
        Err(last)
    }

    fn agent(&self, url: &str) -> ureq::Agent {
        let https = url.to_ascii_lowercase().starts_with("https://");
        let host = super::endpoint::normalise(url).host;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(self.connect))
            .timeout_global(Some(self.request_timeout))
            .max_redirects(0)
            .user_agent(&self.user_agent);
        if matches!(self.source, Source::WebIdentity { .. }) {
            config = config.proxy(proxy::proxy_for(if https { "https" } else { "http" }, &host));
        } else {
            // The agent is local (loopback or link-local): never through a proxy.
            config = config.proxy(None);
        }
        if https {
            config = config.tls_config(Trust::load().ureq_config());
        }
        config.build().new_agent()
    }

    /// One fetch: the credentials and their expiry, or an error and whether to retry.
    #[allow(clippy::type_complexity)]
    fn fetch(&self) -> Result<(Credentials, Option<u64>), (Error, bool)> {
        match &self.source {
            Source::Static(c) => Ok((c.clone(), None)),
            Source::WebIdentity {
                token_file,
                role_arn,
                session_name,
                sts_url,
            } => {
                let token = read_token(token_file, "AWS_WEB_IDENTITY_TOKEN_FILE")?;
                let form = [
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("RoleArn", role_arn.as_str()),
                    ("RoleSessionName", session_name.as_str()),
                    ("Version", "2011-06-15"),
                    ("WebIdentityToken", token.expose()),
                ]
                .iter()
                .map(|(k, v)| format!("{k}={}", uri_encode(v, true)))
                .collect::<Vec<_>>()
                .join("&");
                let request = ureq::http::Request::builder()
                    .method("POST")
                    .uri(sts_url.as_str())
                    .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
                    .body(form.into_bytes())
                    .map_err(|e| (err(ErrorKind::Other, format!("bad STS URL: {e}")), false))?;
                let (status, body) = self.send(sts_url, request, "STS")?;
                let text = String::from_utf8_lossy(&body);
                if !(200..300).contains(&status) {
                    let code = xml::tag(&text, "Code").unwrap_or_default();
                    let message = xml::tag(&text, "Message").unwrap_or_default();
                    return Err(answer_error(
                        "STS AssumeRoleWithWebIdentity",
                        status,
                        &code,
                        &message,
                        &token,
                    ));
                }
                let field = |name: &str| xml::tag(&text, name).filter(|v| !v.is_empty());
                let credentials = match (field("AccessKeyId"), field("SecretAccessKey")) {
                    (Some(access_key), Some(secret)) => Credentials {
                        access_key,
                        secret_key: Secret::new(secret),
                        session_token: field("SessionToken").map(Secret::new),
                    },
                    _ => return Err((err(ErrorKind::Credentials, "STS answered without credentials"), false)),
                };
                Ok((credentials, field("Expiration").and_then(|e| parse_utc(&e))))
            }
            Source::Container { url, token_file, token } => {
                let token = match token_file {
                    Some(f) => Some(read_token(f, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")?),
                    None => token.clone(),
                };
                let mut builder = ureq::http::Request::builder()
                    .method("GET")
                    .uri(url.as_str())
                    .header("accept", "application/json");
                if let Some(t) = &token {
                    builder = builder.header("authorization", t.expose().trim());
                }
                let request = builder.body(Vec::new()).map_err(|e| {
                    (
                        err(ErrorKind::Other, format!("bad container credentials URL: {e}")),
                        false,
                    )
                })?;
                let (status, body) = self.send(url, request, "the container credentials endpoint")?;
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let s = |name: &str| json[name].as_str().filter(|v| !v.is_empty()).map(str::to_string);
                if !(200..300).contains(&status) {
                    let code = s("code").unwrap_or_default();
                    let message = s("message").unwrap_or_default();
                    let tok = token.unwrap_or_else(|| Secret::new(String::new()));
                    return Err(answer_error(
                        "the container credentials endpoint",
                        status,
                        &code,
                        &message,
                        &tok,
                    ));
                }
                match (s("AccessKeyId"), s("SecretAccessKey")) {
                    (Some(access_key), Some(secret)) => Ok((
                        Credentials {
                            access_key,
                            secret_key: Secret::new(secret),
                            session_token: s("Token").map(Secret::new),
                        },
                        s("Expiration").and_then(|e| parse_utc(&e)),
                    )),
                    _ => Err((
                        err(
                            ErrorKind::Credentials,
                            "the container credentials endpoint answered without credentials",
                        ),
                        false,
                    )),
                }
            }
        }
    }

    /// Sends `request`, returns the status and at most [`MAX_ANSWER_BYTES`] of the body.
    fn send(
        &self,
        url: &str,
        request: ureq::http::Request<Vec<u8>>,
        what: &str,
    ) -> Result<(u16, Vec<u8>), (Error, bool)> {
        let transport = |e: ureq::Error| {
            let kind = match &e {
                ureq::Error::Timeout(_) => ErrorKind::Timeout,
                ureq::Error::Tls(_) | ureq::Error::Rustls(_) => ErrorKind::Tls,
                ureq::Error::BodyExceedsLimit(_) => ErrorKind::Credentials,
                _ => ErrorKind::Unreachable,
            };
            let retry = kind == ErrorKind::Unreachable;
            (err(kind, format!("fetching credentials from {what}: {e}")), retry)
        };
        let mut response = self.agent(url).run(request).map_err(transport)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(transport)?;
        Ok((status, body))
    }
}

/// An error answer, with the service's code and message (the token cut out should it be echoed).
fn answer_error(what: &str, status: u16, code: &str, message: &str, token: &Secret) -> (Error, bool) {
    let mut message: String = message.chars().take(300).collect();
    if !token.is_empty() && message.contains(token.expose().trim()) {
        message = message.replace(token.expose().trim(), "[redacted]");
    }
    let retry = status >= 500 || status == 429 || code == "IDPCommunicationError" || code == "Throttling";
    let kind = if retry {
        ErrorKind::Other
    } else {
        ErrorKind::Credentials
    };
    let detail = format!("{what} answered HTTP {status} {code}: {message}")
        .trim_end_matches([' ', ':'])
        .to_string();
    (
        Error {
            kind,
            status: Some(status),
            code: code.to_string(),
            detail,
        },
        retry,
    )
}

/// A token file's contents, as they are (the SDK sends them unchanged), at most [`MAX_TOKEN_BYTES`].
fn read_token(path: &PathBuf, var: &str) -> Result<Secret, (Error, bool)> {
    use std::io::Read;
    let fail = |why: String| (err(ErrorKind::Credentials, format!("{var}: {why}")), false);
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(fail(format!(
            "{} is larger than {MAX_TOKEN_BYTES} bytes",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(format!("{} is not UTF-8", path.display())))?;
    if text.trim().is_empty() {
        return Err(fail(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(text))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `2026-12-01T14:22:13Z` (fractions and a `+00:00` offset allowed) as seconds since 1970.
pub fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d, h, mi, sec) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let rest = s[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if !(rest.eq_ignore_ascii_case("z") || rest == "+00:00") || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), years from 1970 on.
    let (y, mo) = if mo <= 2 {
        (y.checked_sub(1)?, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(pairs: &[(&str, &str)]) -> Result<Option<Source>, (&'static str, String)> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(&|k: &str| map.get(k).cloned())
    }

    #[test]
    fn the_sdk_order_and_its_refusals() {
        let token = tempfile::NamedTempFile::new().unwrap();
        let file = token.path().to_str().unwrap();
        assert_eq!(resolve_with(&[]), Ok(None));
        // Keys win over web identity, which wins over container credentials.
        let all = [
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", file),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/creds"),
        ];
        assert_eq!(resolve_with(&all).unwrap().unwrap().kind(), "static");
        match resolve_with(&all[2..]).unwrap().unwrap() {
            Source::WebIdentity { sts_url, .. } => assert_eq!(sts_url, "https://sts.eu-west-3.amazonaws.com"),
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve_with(&all[5..]).unwrap().unwrap().kind(), "container");
        // Where rclone would fail later or pick a source not followed here: refused now.
        for bad in [
            &[("AWS_ACCESS_KEY_ID", "AKIA1")][..],
            &[("AWS_WEB_IDENTITY_TOKEN_FILE", file), ("AWS_REGION", "us-east-1")][..],
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", file),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ][..],
            &[("AWS_PROFILE", "prod")][..],
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.0.0.1/creds")][..],
        ] {
            assert!(resolve_with(bad).is_err(), "{bad:?}");
        }
        assert!(resolve_with(&[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1/credentials"
        )])
        .is_ok());
        assert!(resolve_with(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "https://creds.example.com/x")]).is_ok());
    }

    #[test]
    fn expiry_times_parse() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2015-08-30T12:36:00Z"), Some(1_440_938_160));
        assert_eq!(parse_utc("2015-08-30T12:36:00.123Z"), Some(1_440_938_160));
        assert_eq!(parse_utc("2024-02-29T00:00:00+00:00"), Some(1_709_164_800));
        assert_eq!(parse_utc("2015-08-30T12:36:00+02:00"), None);
        assert_eq!(parse_utc("soon"), None);
    }

    #[test]
    fn sources_do_not_print_secrets() {
        let s = Source::Static(Credentials {
            access_key: "AKIA".into(),
            secret_key: Secret::new("hunter2".into()),
            session_token: Some(Secret::new("tok-xyz".into())),
        });
        let p = Provider::fixed(match &s {
            Source::Static(c) => c.clone(),
            _ => unreachable!(),
        });
        let text = format!("{s:?} {p:?}");
        assert!(!text.contains("hunter2") && !text.contains("tok-xyz"), "{text}");
    }
}
