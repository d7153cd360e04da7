//! Where each database's replica lives in the bucket, and the `replica-path` annotation that
//! moves one database's replica (migration: the original litestream-hook, or a hand-run
//! Litestream, kept its replicas elsewhere).
//!
//! By default a database's replica path is `[<prefix>/]<namespace>/<name>/<file name>`
//! (see `inject::replica_base`). `replica-path` is a comma list of `<database path>=<replica
//! path>` entries; an entry's replica path is the whole path in the bucket (the prefix,
//! namespace and name are not put in front of it, so any old layout can be reached, the bucket
//! root included). The database path is everything before the entry's last `=` (a database
//! path may contain `=`, a replica path may not), and must be one of the `path` annotation's.
//!
//! What Litestream 0.5 accepts as an S3 replica `path`: any text, but a value that looks like
//! a URL (`scheme://...`) is refused ("replica path cannot be a url"), and it is used as the
//! key prefix as written (`<path>/ltx/<level>/<file>`, no cleaning). So a path here is folder
//! names joined by `/`: no leading or trailing `/`, no empty, `.` or `..` segment (keys an S3
//! server or a later `path.Join` would clean into another database's), no `:` (which keeps
//! URLs out), `\`, `,`, `=`, control characters or Unicode non-characters (Litestream's YAML
//! parser refuses those), at most 512 bytes (S3 keys are at most 1024, and Litestream adds its
//! own suffix). Two databases of one Pod must not share a replica path, and one's must not be a
//! folder of another's: Litestream would mix their files, and a restore would bring back the
//! wrong database.

use crate::annotations::{file_name, yaml_printable, Settings};

/// The longest replica path accepted.
pub const MAX_REPLICA_PATH_BYTES: usize = 512;

/// Parses `replica-path` against the Pod's database `paths`: `(database path, replica path)`
/// pairs in the order given. Linear in the length of `raw` (the entries are counted first).
pub fn parse(raw: &str, paths: &[String]) -> Result<Vec<(String, String)>, String> {
    let entries = raw.bytes().filter(|&b| b == b',').count() + 1;
    if entries > paths.len() {
        return Err(format!(
            "{entries} entries for {} database(s): at most one entry per database in the path annotation",
            paths.len()
        ));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in raw.split(',') {
        let entry = entry.trim();
        let Some((db, replica)) = entry.rsplit_once('=') else {
            return Err(format!(
                "each entry must be <database path>=<replica path>, got {}",
                short(entry)
            ));
        };
        let (db, replica) = (db.trim(), replica.trim());
        if !paths.iter().any(|p| p == db) {
            return Err(format!(
                "{} is not one of the databases in the path annotation ({})",
                short(db),
                paths.iter().map(|p| short(p)).collect::<Vec<_>>().join(", ")
            ));
        }
        if out.iter().any(|(d, _)| d == db) {
            return Err(format!("{} is given twice", short(db)));
        }
        check(replica).map_err(|m| format!("{m}, got {} for {}", short(replica), short(db)))?;
        out.push((db.to_string(), replica.to_string()));
    }
    Ok(out)
}

/// A replica path Litestream 0.5 uses as written and no other database's path can clean into.
pub fn check(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_REPLICA_PATH_BYTES {
        return Err(format!("a replica path must be 1 to {MAX_REPLICA_PATH_BYTES} bytes"));
    }
    if s.chars().any(|c| matches!(c, ':' | '\\' | ',' | '=')) || !yaml_printable(s) {
        return Err(
            "a replica path must not contain ':', '\\', ',', '=', control characters or Unicode non-characters".into(),
        );
    }
    if s.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(
            "a replica path must be folder names joined by '/': no leading or trailing '/', no empty, '.' or '..' part"
                .into(),
        );
    }
    Ok(())
}

/// The replica path of every database of the Pod, in `settings.paths` order: the override, or
/// `<base>/<file name>`. Refuses two databases whose replicas would share a path or nest.
pub fn resolve(settings: &Settings, base: &str) -> Result<Vec<String>, String> {
    let resolved: Vec<String> = settings
        .paths
        .iter()
        .map(|db| match settings.replica_paths.iter().find(|(d, _)| d == db) {
            Some((_, replica)) => replica.clone(),
            None => format!("{base}/{}", file_name(db)),
        })
        .collect();
    for (i, a) in resolved.iter().enumerate() {
        for (j, b) in resolved.iter().enumerate().skip(i + 1) {
            let nested = |outer: &str, inner: &str| {
                inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/'
            };
            let (da, db) = (short(&settings.paths[i]), short(&settings.paths[j]));
            if a == b {
                return Err(format!("{da} and {db} would both replicate to {}", short(a)));
            }
            if nested(a, b) || nested(b, a) {
                return Err(format!(
                    "the replica of {da} ({}) and that of {db} ({}) are one inside the other; Litestream would mix their files",
                    short(a),
                    short(b)
                ));
            }
        }
    }
    Ok(resolved)
}

/// A value quoted for a message, at most 100 characters of it.
fn short(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}… ({} bytes)", s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbs() -> Vec<String> {
        vec!["/data/main.db".into(), "/cache/c=1.db".into()]
    }

    #[test]
    fn entries_name_a_database_and_its_path() {
        let got = parse(" /data/main.db = main.db , /cache/c=1.db=old/c", &dbs()).unwrap();
        assert_eq!(
            got,
            [
                ("/data/main.db".to_string(), "main.db".to_string()),
                ("/cache/c=1.db".to_string(), "old/c".to_string())
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (raw, why) in [
            ("main.db", "<database path>=<replica path>"),
            ("/data/other.db=x", "not one of the databases"),
            ("/data/main.db=x,/data/main.db=y", "given twice"),
            ("/data/main.db=x,/cache/c=1.db=y,/data/main.db=z", "at most one entry"),
            ("/data/main.db=", "1 to 512 bytes"),
            ("/data/main.db=/abs", "no leading"),
            ("/data/main.db=a/", "no leading or trailing"),
            ("/data/main.db=a//b", "no empty"),
            ("/data/main.db=a/../b", "'..'"),
            ("/data/main.db=./a", "'.'"),
            ("/data/main.db=s3://bucket/x", "':'"),
            ("/data/main.db=a\\b", "'\\'"),
            ("/data/main.db=a\u{FFFE}", "non-characters"),
            ("/data/main.db=a\nb", "control"),
        ] {
            let err = parse(raw, &dbs()).unwrap_err();
            assert!(err.contains(why), "{raw:?}: {err}");
        }
        let long = format!("/data/main.db={}", "a".repeat(513));
        assert!(parse(&long, &dbs()).unwrap_err().contains("512"));
        assert!(parse("/data/main.db=a:b", &dbs()).is_err());
        assert!(parse(&format!("/data/main.db={}", "a".repeat(512)), &dbs()).is_ok());
        // The count comes first: a list of any length is refused at once.
        let many = "x=y,".repeat(100_000);
        assert!(parse(&many, &dbs()).unwrap_err().contains("100001 entries"));
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut a = serde_json::Map::new();
        a.insert(format!("{}/inject", crate::annotations::BASE_PREFIX), "true".into());
        for (k, v) in pairs {
            a.insert(format!("{}/{k}", crate::annotations::BASE_PREFIX), (*v).into());
        }
        let defaults = crate::annotations::Defaults::default();
        crate::annotations::parse(Some(&a), crate::annotations::BASE_PREFIX, &defaults)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn overrides_replace_the_default_path_and_collisions_are_refused() {
        let s = settings(&[
            ("path", "/data/main.db,/cache/c.db"),
            ("replica-path", "/data/main.db=main.db"),
        ]);
        assert_eq!(resolve(&s, "ns/web").unwrap(), ["main.db", "ns/web/c.db"]);
        for (replica, why) in [
            ("/data/main.db=ns/web/c.db", "both replicate to"),
            ("/data/main.db=ns/web", "one inside the other"),
            ("/data/main.db=ns/web/c.db/x", "one inside the other"),
            ("/data/main.db=x,/cache/c.db=x", "both replicate to"),
            ("/data/main.db=x/y,/cache/c.db=x", "one inside the other"),
        ] {
            let s = settings(&[("path", "/data/main.db,/cache/c.db"), ("replica-path", replica)]);
            let err = resolve(&s, "ns/web").unwrap_err();
            assert!(err.contains(why), "{replica}: {err}");
        }
        // A shared start that is not a folder is no collision.
        let s = settings(&[
            ("path", "/data/main.db,/cache/c.db"),
            ("replica-path", "/data/main.db=ns/web/c.db2"),
        ]);
        assert!(resolve(&s, "ns/web").is_ok());
    }
}
