//! The Litestream configuration for one Pod, and `hook write-config`, which puts it on disk.
//!
//! The config is built with serde_json (JSON is valid YAML, and Litestream reads YAML), so
//! annotation values are always data, never syntax. It reaches the Pod as the value of the
//! [`CONFIG_ENV`] environment variable of an init container running the hook's own image with
//! `write-config <file>`: no shell, no heredoc, nothing interpolated into a script. Litestream
//! is then run with `-no-expand-env`, so a `$VAR` inside a value stays literal text instead of
//! being replaced by, say, the secret access key.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::annotations::{file_name, Settings};
#[cfg(test)]
use crate::replica_paths;

/// The environment variable carrying the config into the `write-config` init container.
pub const CONFIG_ENV: &str = "LIFEBOAT_LITESTREAM_CONFIG";

/// The Litestream config (`dbs` with one replica each, of `settings.target`); `replicas` are
/// the replica paths, one per database in `settings.paths` order (`replica_paths::resolve`).
pub fn build(settings: &Settings, replicas: &[String]) -> Value {
    let dbs: Vec<Value> = settings
        .paths
        .iter()
        .zip(replicas)
        .map(|(path, replica_path)| {
            let mut replica = settings.target.fields(replica_path);
            crate::litestream_settings::apply_replica(&settings.tuning, &mut replica);
            json!({ "path": path, "replica": replica })
        })
        .collect();
    let mut config = Map::new();
    crate::litestream_settings::apply_top_level(&settings.tuning, &mut config);
    config.insert("dbs".into(), Value::Array(dbs));
    Value::Object(config)
}

/// `hook write-config FILE`: writes the config from [`CONFIG_ENV`] to `file`, atomically,
/// after checking it is a JSON object with a `dbs` list.
pub fn write_from_env(file: &Path) -> Result<(), String> {
    let raw = std::env::var(CONFIG_ENV).map_err(|_| format!("{CONFIG_ENV} is not set"))?;
    write(&raw, file)
}

/// Writes `raw` (a Litestream config as JSON) to `file` via a temporary file and a rename.
pub fn write(raw: &str, file: &Path) -> Result<(), String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("{CONFIG_ENV} is not valid JSON: {e}"))?;
    if !value.get("dbs").is_some_and(Value::is_array) {
        return Err(format!("{CONFIG_ENV} must be a JSON object with a \"dbs\" list"));
    }
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| format!("{}: has no parent folder", file.display()))?;
    let tmp = dir.join(format!(".{}.tmp", file_name(&file.to_string_lossy())));
    let body = serde_json::to_string_pretty(&value).expect("a Value always serialises");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot write: {e}", file.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            storage: "1Gi".into(),
            image: "litestream/litestream:0.5.17".into(),
            target: crate::replica::Target::S3 {
                bucket: "b".into(),
                endpoint: Some("http://s3:9000".into()),
                region: None,
            },
            secret: "s".into(),
            paths: vec!["/a/x.db".into(), "/b/y.db".into()],
            prefix: None,
            name: None,
            replica_paths: Vec::new(),
            tuning: crate::litestream_settings::Tuning {
                sync_interval: Some("1s".into()),
                ..Default::default()
            },
            native_sidecar: true,
            resources: crate::annotations::Resources::builtin(),
        }
    }

    #[test]
    fn each_database_gets_its_own_replica_path() {
        let s = settings();
        let config = build(&s, &replica_paths::resolve(&s, "ns/app").unwrap());
        let dbs = config["dbs"].as_array().unwrap();
        assert_eq!(dbs.len(), 2);
        assert_eq!(dbs[0]["replica"]["path"], "ns/app/x.db");
        assert_eq!(dbs[1]["replica"]["path"], "ns/app/y.db");
        assert_eq!(dbs[0]["replica"]["force-path-style"], true);
        assert_eq!(dbs[0]["replica"]["region"], "us-east-1");
        assert_eq!(dbs[1]["replica"]["sync-interval"], "1s");
    }

    #[test]
    fn write_refuses_what_is_not_a_config_and_writes_what_is() {
        let dir = std::env::temp_dir().join(format!("lifeboat-hook-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("litestream.yml");
        assert!(write("not json", &file).unwrap_err().contains("not valid JSON"));
        assert!(write("[]", &file).unwrap_err().contains("dbs"));
        let hostile = "x\"\n$(id)`id`${AWS_SECRET_ACCESS_KEY}";
        let mut s = settings();
        s.target = crate::replica::Target::S3 {
            bucket: hostile.into(),
            endpoint: None,
            region: None,
        };
        let raw = build(&s, &replica_paths::resolve(&s, "n/a").unwrap()).to_string();
        write(&raw, &file).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(back["dbs"][0]["replica"]["bucket"], hostile);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
