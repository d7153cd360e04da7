//! Where the replicas go: an S3 bucket (the default), a folder on an SFTP server, or a
//! container in Azure Blob Storage; the `type` annotation picks one.
//!
//! Each type's annotations are checked here and turned into what Litestream 0.5 reads: the
//! replica's fields in the config, the Secret's keys passed as environment variables (S3, Azure),
//! and for SFTP the private key mounted from the Secret as a file. No secret is ever written
//! into the config (Litestream runs with `-no-expand-env`, so a secret can reach it only through
//! its environment or a file Kubernetes mounts). That is why Litestream's other types are not
//! offered: WebDAV reads its password only from the config, and gs, oss and nats have no real
//! server in these tests.

use serde_json::{json, Map, Value};

use crate::values::{check_bucket, check_endpoint, check_region, check_replica_segments};

/// The replica types this hook makes, by their `type` annotation value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    S3,
    Sftp,
    Abs,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::S3, Kind::Sftp, Kind::Abs];

    pub fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Sftp => "sftp",
            Kind::Abs => "abs",
        }
    }

    pub fn parse(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| "must be \"s3\", \"sftp\" or \"abs\" (Azure Blob Storage)".to_string())
    }

    /// The Secret's keys this type reads, each passed as the environment variable of its name.
    pub fn env_keys(self) -> &'static [&'static str] {
        match self {
            Kind::S3 => &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            Kind::Sftp => &[],
            Kind::Abs => &[ABS_KEY],
        }
    }
}

/// The Secret key (and environment variable) with the Azure storage account key; Litestream
/// reads it when the config has no `account-key`.
pub const ABS_KEY: &str = "LITESTREAM_AZURE_ACCOUNT_KEY";
/// The Secret key with the SSH private key (OpenSSH or PEM format, no passphrase).
pub const SSH_KEY: &str = "SSH_PRIVATE_KEY";
/// Where the SSH key is mounted in the Litestream containers (inside the config folder, where
/// no database may be).
pub const SSH_DIR: &str = "/etc/litestream-hook/ssh";
/// The file name of the mounted SSH key.
pub const SSH_KEY_FILE: &str = "id";

/// One replica target, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
    Sftp {
        user: String,
        /// `host:port` (`[v6]:port`) as Go dials it.
        address: String,
        /// The absolute folder from the endpoint's path, if any; else the login folder.
        root: Option<String>,
        /// `<algorithm> <base64>` of the server's host key.
        host_key: String,
    },
    Abs {
        account: String,
        container: String,
        endpoint: Option<String>,
    },
}

impl Target {
    pub fn kind(&self) -> Kind {
        match self {
            Target::S3 { .. } => Kind::S3,
            Target::Sftp { .. } => Kind::Sftp,
            Target::Abs { .. } => Kind::Abs,
        }
    }

    /// The replica's fields in the Litestream config for the replica at `path`.
    pub fn fields(&self, path: &str) -> Map<String, Value> {
        let mut r = Map::new();
        r.insert("type".into(), json!(self.kind().name()));
        match self {
            Target::S3 {
                bucket,
                endpoint,
                region,
            } => {
                r.insert("bucket".into(), json!(bucket));
                r.insert("path".into(), json!(path));
                if let Some(endpoint) = endpoint {
                    r.insert("endpoint".into(), json!(endpoint));
                    r.insert("force-path-style".into(), json!(true));
                }
                // S3-compatible servers ignore the region, but the SDK wants one.
                let region = region.as_deref().or(endpoint.as_ref().map(|_| "us-east-1"));
                if let Some(region) = region {
                    r.insert("region".into(), json!(region));
                }
            }
            Target::Sftp {
                user,
                address,
                root,
                host_key,
            } => {
                r.insert("host".into(), json!(address));
                r.insert("user".into(), json!(user));
                r.insert("key-path".into(), json!(format!("{SSH_DIR}/{SSH_KEY_FILE}")));
                r.insert("host-key".into(), json!(host_key));
                let full = match root {
                    Some(root) => format!("{}/{path}", root.trim_end_matches('/')),
                    None => path.to_string(),
                };
                r.insert("path".into(), json!(full));
            }
            Target::Abs {
                account,
                container,
                endpoint,
            } => {
                r.insert("account-name".into(), json!(account));
                r.insert("bucket".into(), json!(container));
                r.insert("path".into(), json!(path));
                if let Some(endpoint) = endpoint {
                    r.insert("endpoint".into(), json!(endpoint));
                }
            }
        }
        r
    }
}

/// The raw values of a target, each from its annotation or the cluster's default.
pub struct Raw<'a> {
    pub kind: Kind,
    pub bucket: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub region: Option<&'a str>,
    pub account: Option<&'a str>,
    pub host_key: Option<&'a str>,
}

impl<'a> Raw<'a> {
    /// Each value by its annotation key (after the prefix).
    pub fn fields(&self) -> [(&'static str, Option<&'a str>); 5] {
        [
            ("bucket", self.bucket),
            ("endpoint", self.endpoint),
            ("region", self.region),
            ("account", self.account),
            ("host-key", self.host_key),
        ]
    }

    /// The value of annotation `key`.
    pub fn value(&self, key: &str) -> Option<&'a str> {
        self.fields().into_iter().find(|(k, _)| *k == key).and_then(|(_, v)| v)
    }
}

/// Checks `raw` into a [`Target`]; an error names the annotation key (after the prefix). The
/// values given are checked before any missing one is asked for, so a wrong value is always
/// reported as such.
pub fn check(raw: &Raw<'_>) -> Result<Target, (&'static str, String)> {
    let kind = raw.kind.name();
    let used: &[&str] = match raw.kind {
        Kind::S3 => &["bucket", "endpoint", "region"],
        Kind::Sftp => &["endpoint", "host-key"],
        Kind::Abs => &["bucket", "endpoint", "account"],
    };
    for (key, value) in raw.fields() {
        if value.is_some() && !used.contains(&key) {
            return Err((key, format!("is not used by type {kind} replicas")));
        }
    }
    let sftp = raw.kind == Kind::Sftp;
    let abs = raw.kind == Kind::Abs;
    let checked = |key: &'static str, value: Option<&str>, rule: &dyn Fn(&str) -> Result<(), String>| {
        value.map_or(Ok(()), |v| rule(v).map_err(|m| (key, m)))
    };
    checked("bucket", raw.bucket, &|v| {
        if abs {
            check_container(v)
        } else {
            check_bucket(v)
        }
    })?;
    checked("endpoint", raw.endpoint, &|v| {
        if sftp {
            sftp_endpoint(v).map(|_| ())
        } else {
            check_endpoint(v)
        }
    })?;
    checked("region", raw.region, &check_region)?;
    checked("account", raw.account, &check_account)?;
    checked("host-key", raw.host_key, &|v| crate::host_key::check(v).map(|_| ()))?;
    let required = |key: &'static str, v| required(kind, key, v);
    Ok(match raw.kind {
        Kind::S3 => Target::S3 {
            bucket: required("bucket", raw.bucket)?.into(),
            endpoint: raw.endpoint.map(Into::into),
            region: raw.region.map(Into::into),
        },
        Kind::Sftp => {
            let endpoint = required("endpoint", raw.endpoint)?;
            let key = required("host-key", raw.host_key)?;
            let (user, address, root) = sftp_endpoint(endpoint).map_err(|m| ("endpoint", m))?;
            Target::Sftp {
                user,
                address,
                root,
                host_key: crate::host_key::check(key).map_err(|m| ("host-key", m))?,
            }
        }
        Kind::Abs => Target::Abs {
            account: required("account", raw.account)?.into(),
            container: required("bucket", raw.bucket)?.into(),
            endpoint: raw.endpoint.map(Into::into),
        },
    })
}

fn required<'v>(kind: &str, key: &'static str, v: Option<&'v str>) -> Result<&'v str, (&'static str, String)> {
    v.ok_or_else(|| (key, format!("is required for type {kind}")))
}

/// `sftp://user@host[:port][/folder]`: (user, `host:port`, absolute folder). No password: it
/// would have to be written into the config; the key comes from the Secret.
fn sftp_endpoint(url: &str) -> Result<(String, String, Option<String>), String> {
    const FORM: &str = "such as sftp://backup@sftp.example.com:22/backups";
    if url.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    let rest = url
        .strip_prefix("sftp://")
        .ok_or_else(|| format!("must be an SFTP URL, {FORM}"))?;
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if path.contains(['?', '#']) {
        return Err(format!("must have no query or fragment (?, #), {FORM}"));
    }
    let (user, host_port) = authority
        .split_once('@')
        .ok_or_else(|| format!("must name the SSH user (user@host), {FORM}"))?;
    if user.contains(':') {
        return Err(
            "must not contain a password (user:password@): it would be written into the config; the SSH key comes from the Secret's SSH_PRIVATE_KEY".into(),
        );
    }
    let user_ok = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !user_ok {
        return Err("must have a user name of letters, digits, '.', '_' and '-' (at most 64)".into());
    }
    // The host and port: reuse the endpoint rule by checking the same authority as an http URL.
    // Its reasons end with S3 examples; an SFTP user gets the SFTP form instead.
    check_endpoint(&format!("http://{host_port}")).map_err(|m| match m.split_once(", such as ") {
        Some((reason, _)) => format!("{reason}, {FORM}"),
        None => m,
    })?;
    let address = if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:22")
    } else {
        host_port.to_string()
    };
    let root = match path.trim_end_matches('/') {
        "" => None,
        folder => {
            check_replica_segments(&folder[1..]).map_err(|m| format!("the folder after the host {m}"))?;
            Some(folder.to_string())
        }
    };
    Ok((user.into(), address, root))
}

/// An Azure storage account name: 3 to 24 lower-case letters and digits.
fn check_account(s: &str) -> Result<(), String> {
    let ok = (3..=24).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err("must be an Azure storage account name: 3 to 24 lower-case letters and digits".into());
    }
    Ok(())
}

/// An Azure Blob container name: 3 to 63 lower-case letters, digits and single hyphens,
/// starting and ending with a letter or digit.
fn check_container(s: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if !ok {
        return Err(
            "must be an Azure Blob container name: 3 to 63 lower-case letters, digits and single '-', starting and ending with a letter or digit".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZOX30WY177glSjMKCtb9Bumn1CQNjV3u9PhVkxpSpw";

    fn raw(kind: Kind) -> Raw<'static> {
        Raw {
            kind,
            bucket: None,
            endpoint: None,
            region: None,
            account: None,
            host_key: None,
        }
    }

    #[test]
    fn sftp_targets_are_read_from_the_url_and_the_host_key() {
        let t = check(&Raw {
            endpoint: Some("sftp://backup@sftp.example.com/srv/backups/"),
            host_key: Some(&format!("{ED25519} root@host")),
            ..raw(Kind::Sftp)
        })
        .unwrap();
        assert_eq!(
            t,
            Target::Sftp {
                user: "backup".into(),
                address: "sftp.example.com:22".into(),
                root: Some("/srv/backups".into()),
                host_key: ED25519.into(),
            }
        );
        let f = t.fields("shop/web/main.db");
        assert_eq!(f["path"], "/srv/backups/shop/web/main.db");
        assert_eq!(f["key-path"], "/etc/litestream-hook/ssh/id");
        let t = check(&Raw {
            endpoint: Some("sftp://u@[::1]:2222"),
            host_key: Some(ED25519),
            ..raw(Kind::Sftp)
        })
        .unwrap();
        assert_eq!(t.fields("a/b")["host"], "[::1]:2222");
        assert_eq!(t.fields("a/b")["path"], "a/b");
    }

    #[test]
    fn bad_sftp_values_name_their_annotation() {
        for (endpoint, host_key, key, says) in [
            (None, Some(ED25519), "endpoint", "required"),
            (Some("sftp://h/x"), Some(ED25519), "endpoint", "user"),
            (Some("sftp://u:pw@h"), Some(ED25519), "endpoint", "password"),
            (Some("http://u@h"), Some(ED25519), "endpoint", "SFTP URL"),
            (Some("sftp://u@h:99999"), Some(ED25519), "endpoint", "port"),
            (Some("sftp://u@h/a/../b"), Some(ED25519), "endpoint", "folder"),
            (Some("sftp://u@h?x=1"), Some(ED25519), "endpoint", "query"),
            (Some("sftp://-oProxy@h"), Some(ED25519), "endpoint", "user name"),
            // The example shown is an SFTP URL, not the S3 endpoint rule's https:// one.
            (
                Some("sftp://u@/x"),
                Some(ED25519),
                "endpoint",
                "host, such as sftp://backup@",
            ),
            (
                Some("sftp://u@[::1/x"),
                Some(ED25519),
                "endpoint",
                "host, such as sftp://backup@",
            ),
            (Some("sftp://u@h"), None, "host-key", "required"),
            (
                Some("sftp://u@h"),
                Some("host.example ssh-ed25519 AAAA"),
                "host-key",
                "algorithm",
            ),
            (Some("sftp://u@h"), Some("ssh-ed25519 !!!"), "host-key", "base64"),
            // A valid ed25519 blob named as RSA: Go would refuse to parse it.
            (
                Some("sftp://u@h"),
                Some("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIDZOX30WY177glSjMKCtb9Bumn1CQNjV3u9PhVkxpSpw"),
                "host-key",
                "not a ssh-rsa key",
            ),
        ] {
            let (k, m) = check(&Raw {
                endpoint,
                host_key,
                ..raw(Kind::Sftp)
            })
            .unwrap_err();
            assert_eq!(k, key, "{endpoint:?} {host_key:?}: {m}");
            assert!(m.contains(says), "{endpoint:?} {host_key:?}: {m}");
        }
        let (k, _) = check(&Raw {
            endpoint: Some("sftp://u@h"),
            host_key: Some(ED25519),
            bucket: Some("b"),
            ..raw(Kind::Sftp)
        })
        .unwrap_err();
        assert_eq!(k, "bucket");
    }

    #[test]
    fn abs_targets_need_an_account_and_a_container() {
        let t = check(&Raw {
            account: Some("devstoreaccount1"),
            bucket: Some("pods"),
            endpoint: Some("http://127.0.0.1:10000/devstoreaccount1"),
            ..raw(Kind::Abs)
        })
        .unwrap();
        let f = t.fields("shop/web/main.db");
        assert_eq!(f["account-name"], "devstoreaccount1");
        assert_eq!(f["bucket"], "pods");
        assert!(!f.contains_key("account-key"), "the key comes from the environment");
        assert_eq!(Kind::Abs.env_keys(), [ABS_KEY]);
        for (account, bucket, region, key) in [
            (None, Some("pods"), None, "account"),
            (Some("Upper"), Some("pods"), None, "account"),
            (Some("acct"), None, None, "bucket"),
            (Some("acct"), Some("a--b"), None, "bucket"),
            (Some("acct"), Some("a.b.c"), None, "bucket"),
            (Some("acct"), Some("pods"), Some("eu"), "region"),
        ] {
            let (k, m) = check(&Raw {
                account,
                bucket,
                region,
                ..raw(Kind::Abs)
            })
            .unwrap_err();
            assert_eq!(k, key, "{account:?} {bucket:?}: {m}");
        }
    }

    #[test]
    fn s3_refuses_the_other_types_settings() {
        for (account, host_key, key) in [(Some("acct"), None, "account"), (None, Some(ED25519), "host-key")] {
            let (k, _) = check(&Raw {
                bucket: Some("pods"),
                account,
                host_key,
                ..raw(Kind::S3)
            })
            .unwrap_err();
            assert_eq!(k, key);
        }
        assert_eq!(Kind::parse("gs").unwrap_err(), Kind::parse("webdav").unwrap_err());
    }
}
