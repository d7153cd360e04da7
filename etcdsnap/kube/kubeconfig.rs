//! What etcdsnap needs from a kubeconfig (`KUBECONFIG`): the current context's server, CA
//! (file or data), and the user's bearer token, token file or client certificate (file or
//! data). Read with [`super::yaml`]. What a kubeconfig may say that etcdsnap does not do
//! (exec and auth-provider plugins, basic auth, impersonation, proxies, a TLS server name)
//! is refused by name instead of being ignored into a confusing 401 or TLS failure later.
//! Errors name the file, the entry and the field, never a value: values may be secrets.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// What the current kubeconfig context says (its Debug form shows no credentials).
pub struct ContextConfig {
    pub server: String,
    pub ca: Option<Vec<u8>>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ContextConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextConfig")
            .field("server", &self.server)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("client", &self.client.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Reads the current context of the kubeconfig at `path` (relative file names resolve from
/// its folder).
pub fn read(path: &Path) -> Result<ContextConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read kubeconfig: {e}", path.display()))?;
    let doc = super::yaml::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    select_context(&doc, base).map_err(|e| format!("{}: {e}", path.display()))
}

/// Decodes standard base64 (with padding), as used in kubeconfig `*-data` fields.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    lifeboat::base64::decode(text)
}

/// The `field` of the entry named `name` in the list `list` (`contexts`, `clusters`, `users`).
fn named<'a>(doc: &'a Value, list: &str, name: &str, field: &str) -> Result<&'a Value, String> {
    let items = match doc.get(list) {
        None | Some(Value::Null) => return Err(format!("{list}: missing (the context names {name:?})")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("{list}: not a list")),
    };
    let entry = items
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| {
            let names: Vec<String> = items
                .iter()
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .map(|n| format!("{n:?}"))
                .collect();
            format!(
                "{list}: no entry named {name:?} (entries: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
    match entry.get(field) {
        Some(v @ Value::Object(_)) => Ok(v),
        None | Some(Value::Null) => Err(format!("{list}: entry {name:?} has no `{field}`")),
        Some(_) => Err(format!("{list}: entry {name:?}: `{field}` is not a mapping")),
    }
}

/// A string field; `None` when absent or empty, an error when it is not a string.
fn string<'a>(obj: &'a Value, key: &str, what: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{what}: `{key}` is not a string")),
    }
}

fn data_or_file(
    obj: &Value,
    data_key: &str,
    file_key: &str,
    base: &Path,
    what: &str,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = string(obj, data_key, what)? {
        return base64_decode(d)
            .map(Some)
            .map_err(|e| format!("{what}: `{data_key}`: {e}"));
    }
    if let Some(f) = string(obj, file_key, what)? {
        let p = base.join(f);
        return std::fs::read(&p)
            .map(Some)
            .map_err(|e| format!("{what}: `{file_key}` {}: cannot read: {e}", p.display()));
    }
    Ok(None)
}

/// Fields etcdsnap does not implement: present, they are an error naming them.
fn refuse(obj: &Value, what: &str, fields: &[(&str, &str)]) -> Result<(), String> {
    for (field, instead) in fields {
        if obj.get(*field).is_some_and(|v| !v.is_null()) {
            return Err(format!("{what}: `{field}` is not supported by etcdsnap; {instead}"));
        }
    }
    Ok(())
}

const USE_TOKEN: &str = "use `token`, `tokenFile` or a client certificate";

pub fn select_context(doc: &Value, base: &Path) -> Result<ContextConfig, String> {
    if !doc.is_object() {
        return Err("not a kubeconfig (expected a mapping with `contexts`, `clusters`, `users`)".into());
    }
    let current = string(doc, "current-context", "kubeconfig")?
        .ok_or("no `current-context` (set one with `kubectl config use-context NAME`)")?;
    let context = named(doc, "contexts", current, "context")?;
    let what = format!("context {current:?}");
    let cluster_name = string(context, "cluster", &what)?.ok_or_else(|| format!("{what}: no `cluster`"))?;
    let cluster = named(doc, "clusters", cluster_name, "cluster")?;
    let what = format!("cluster {cluster_name:?}");
    let server = string(cluster, "server", &what)?
        .ok_or_else(|| format!("{what}: no `server`"))?
        .to_string();
    if !server.starts_with("https://") {
        return Err(format!("{what}: `server` is not an https:// URL"));
    }
    refuse(
        cluster,
        &what,
        &[
            ("proxy-url", "etcdsnap connects to the server directly"),
            (
                "tls-server-name",
                "use a `server` whose host name is in the server's certificate",
            ),
        ],
    )?;
    let ca = data_or_file(
        cluster,
        "certificate-authority-data",
        "certificate-authority",
        base,
        &what,
    )?;
    let (mut token, mut token_file, mut client) = (None, None, None);
    if let Some(user_name) = string(context, "user", &format!("context {current:?}"))? {
        let user = named(doc, "users", user_name, "user")?;
        let what = format!("user {user_name:?}");
        refuse(
            user,
            &what,
            &[
                ("exec", USE_TOKEN),
                ("auth-provider", USE_TOKEN),
                ("username", USE_TOKEN),
                ("password", USE_TOKEN),
                ("as", "etcdsnap does not impersonate"),
                ("as-groups", "etcdsnap does not impersonate"),
            ],
        )?;
        token = string(user, "token", &what)?.map(str::to_string);
        token_file = string(user, "tokenFile", &what)?.map(|f| base.join(f));
        let cert = data_or_file(user, "client-certificate-data", "client-certificate", base, &what)?;
        let key = data_or_file(user, "client-key-data", "client-key", base, &what)?;
        client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(format!("{what}: a client certificate without `client-key(-data)`")),
            (None, Some(_)) => return Err(format!("{what}: a client key without `client-certificate(-data)`")),
        };
    }
    Ok(ContextConfig {
        server,
        ca,
        token,
        token_file,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `kubectl config set-cluster/set-credentials/set-context/use-context` (two
    /// clusters, two users, two contexts; a CA file relative to the kubeconfig, embedded
    /// certificates), as kubectl's JSON view, and dumped by PyYAML in its two flow styles.
    const KUBECTL_YAML: &str = include_str!("testdata/kubectl.yaml");
    const WRITTEN: [(&str, &str); 4] = [
        ("kubectl.yaml", KUBECTL_YAML),
        ("kubectl.json", include_str!("testdata/kubectl.json")),
        ("pyyaml-leaf-flow.yaml", include_str!("testdata/pyyaml-leaf-flow.yaml")),
        ("pyyaml-flow.yaml", include_str!("testdata/pyyaml-flow.yaml")),
    ];

    fn read_text(text: &str) -> Result<ContextConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA\n").unwrap();
        std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("config"), text).unwrap();
        read(&dir.path().join("config")).map_err(|e| e.replace(&dir.path().display().to_string(), "DIR"))
    }

    #[test]
    fn reads_every_style_kubectl_and_pyyaml_write() {
        for (name, text) in WRITTEN {
            // current-context robot@dev: a token, the CA from a file beside the kubeconfig.
            let cfg = read_text(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cfg.server, "https://dev.example:443", "{name}");
            assert_eq!(cfg.ca.as_deref(), Some(&b"CA\n"[..]), "{name}");
            assert_eq!(cfg.token.as_deref(), Some("s3cr3t"), "{name}");
            assert!(cfg.client.is_none() && cfg.token_file.is_none(), "{name}");
            // The other context: embedded CA and client certificate.
            let other = text
                .replace("current-context: robot@dev", "current-context: admin@prod")
                .replace(
                    "\"current-context\": \"robot@dev\"",
                    "\"current-context\": \"admin@prod\"",
                );
            let cfg = read_text(&other).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cfg.server, "https://10.0.0.1:6443", "{name}");
            assert_eq!(cfg.ca.as_deref(), Some(&b"CA\n"[..]), "{name}");
            assert_eq!(cfg.client, Some((b"CERT\n".to_vec(), b"KEY\n".to_vec())), "{name}");
            assert!(cfg.token.is_none(), "{name}");
        }
    }

    #[test]
    fn token_files_resolve_beside_the_kubeconfig() {
        let text = KUBECTL_YAML.replace("token: s3cr3t", "tokenFile: token");
        let cfg = read_text(&text).unwrap();
        assert!(cfg.token.is_none());
        assert!(cfg.token_file.unwrap().ends_with("token"));
    }

    #[test]
    fn errors_say_what_is_missing_or_unsupported() {
        let kc = |from: &str, to: &str| read_text(&KUBECTL_YAML.replace(from, to)).unwrap_err();
        let cases = [
            (kc("current-context: robot@dev", ""), "DIR/config: no `current-context`"),
            (
                kc("current-context: robot@dev", "current-context: gone"),
                "DIR/config: contexts: no entry named \"gone\" (entries: \"admin@prod\", \"robot@dev\")",
            ),
            (
                kc("    cluster: dev\n", "    cluster: nope\n"),
                "clusters: no entry named \"nope\" (entries: \"dev\", \"prod\")",
            ),
            (
                kc("- name: robot\n", "- name: robot2\n"),
                "users: no entry named \"robot\" (entries: \"admin\", \"robot2\")",
            ),
            (kc("contexts:\n", "contexts: 3\nx:\n"), "contexts: not a list"),
            (
                kc("https://dev.example:443", "http://dev.example"),
                "cluster \"dev\": `server` is not an https:// URL",
            ),
            (
                kc("token: s3cr3t", "exec: {command: aws}"),
                "user \"robot\": `exec` is not supported by etcdsnap",
            ),
            (
                kc("token: s3cr3t", "auth-provider: {name: gcp}"),
                "user \"robot\": `auth-provider` is not supported",
            ),
            (
                kc("token: s3cr3t", "username: u"),
                "user \"robot\": `username` is not supported",
            ),
            (
                kc(
                    "    server: https://dev.example:443\n",
                    "    server: https://dev.example:443\n    proxy-url: http://p\n",
                ),
                "cluster \"dev\": `proxy-url` is not supported",
            ),
            (
                kc("certificate-authority: ca.crt", "certificate-authority: missing.crt"),
                "cluster \"dev\": `certificate-authority` DIR/missing.crt: cannot read",
            ),
        ];
        for (i, (err, want)) in cases.iter().enumerate() {
            assert!(err.contains(want), "case {i}: {err}\nwanted: {want}");
            assert!(!err.contains("s3cr3t"), "case {i}: {err}");
        }
        let admin = KUBECTL_YAML.replace("current-context: robot@dev", "current-context: admin@prod");
        let err = read_text(&admin.replace("client-key-data: S0VZCg==", "x: y")).unwrap_err();
        assert!(err.contains("user \"admin\": a client certificate without"), "{err}");
        let err = read_text(&admin.replace("Q0EK", "no!")).unwrap_err();
        assert!(
            err.contains("cluster \"prod\": `certificate-authority-data`: not valid base64"),
            "{err}"
        );
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert!(base64_decode("not base64!").is_err());
    }
}
