//! Litestream settings passed through from annotations (per Pod) or the hook's environment
//! (cluster defaults): how often Litestream syncs, snapshots and validates, and how long it
//! keeps snapshots.
//!
//! Each is a Go duration where Litestream 0.5 has one (`cmd/litestream/main.go`): the replica's
//! `sync-interval`, and the top-level `snapshot.interval`, `snapshot.retention` and
//! `validation.interval`. Litestream refuses a zero or negative `sync-interval`,
//! `snapshot.interval` or `snapshot.retention` and a duration Go cannot hold; it takes a zero or
//! negative `validation.interval` without a word. Its YAML is read without strict fields, so a
//! misspelt key would be ignored silently: the keys are only ever written here, from this table.
//! The ranges are narrower than Litestream's "greater than 0", for what a backup needs: below
//! them Litestream would re-upload (snapshot) or re-download (validation) the whole database
//! all the time, above them there is no backup worth the name.

use std::time::Duration;

use crate::annotations::check_go_duration_in;

/// One setting: its annotation key (and `DEFAULT_` variable), where it goes in the config, and
/// the durations accepted.
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    /// `None`: a field of each database's replica; `Some(section)`: `<section>.<field>` at the
    /// top of the config.
    pub section: Option<&'static str>,
    pub field: &'static str,
    pub min: Duration,
    pub max: Duration,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Every setting passed through, in the order of [`Tuning::values`].
pub const SETTINGS: [Setting; 4] = [
    Setting {
        key: "sync-interval",
        env: "DEFAULT_SYNC_INTERVAL",
        section: None,
        field: "sync-interval",
        min: Duration::from_millis(10),
        max: Duration::from_secs(24 * 3600),
    },
    Setting {
        key: "snapshot-interval",
        env: "DEFAULT_SNAPSHOT_INTERVAL",
        section: Some("snapshot"),
        field: "interval",
        min: MINUTE,
        max: Duration::from_secs(8760 * 3600),
    },
    Setting {
        key: "retention",
        env: "DEFAULT_RETENTION",
        section: Some("snapshot"),
        field: "retention",
        min: HOUR,
        max: Duration::from_secs(87600 * 3600),
    },
    Setting {
        key: "validation-interval",
        env: "DEFAULT_VALIDATION_INTERVAL",
        section: Some("validation"),
        field: "interval",
        min: MINUTE,
        max: Duration::from_secs(8760 * 3600),
    },
];

/// The values of [`SETTINGS`] for one Pod (or the defaults); `None` leaves Litestream's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    pub sync_interval: Option<String>,
    pub snapshot_interval: Option<String>,
    pub retention: Option<String>,
    pub validation_interval: Option<String>,
}

impl Tuning {
    /// The values in [`SETTINGS`] order.
    pub fn values(&self) -> [&Option<String>; 4] {
        [
            &self.sync_interval,
            &self.snapshot_interval,
            &self.retention,
            &self.validation_interval,
        ]
    }

    /// Builds a `Tuning` from values in [`SETTINGS`] order.
    pub fn from_values(
        [sync_interval, snapshot_interval, retention, validation_interval]: [Option<String>; 4],
    ) -> Tuning {
        Tuning {
            sync_interval,
            snapshot_interval,
            retention,
            validation_interval,
        }
    }
}

/// Checks one value of `setting`.
pub fn check(setting: &Setting, value: &str) -> Result<(), String> {
    check_go_duration_in(value, setting.min, setting.max)
}

/// The cluster default `var` (a `DEFAULT_` variable of [`SETTINGS`]) from the environment,
/// checked like its annotation; a bad one is a configuration problem naming the variable.
pub fn read_default(env: &mut lifeboat::env::Env, var: &str) -> Option<String> {
    let Some(setting) = SETTINGS.iter().find(|s| s.env == var) else {
        env.problem(var, "is not a Litestream setting this hook passes through");
        return None;
    };
    env.parse_with(var, None, |v| check(setting, v).map(|_| Some(v.to_string())))
}

/// Puts the top-level settings (`snapshot`, `validation`) into `config`.
pub fn apply_top_level(tuning: &Tuning, config: &mut serde_json::Map<String, serde_json::Value>) {
    for (setting, value) in SETTINGS.iter().zip(tuning.values()) {
        if let (Some(section), Some(value)) = (setting.section, value) {
            let entry = config
                .entry(section)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(obj) = entry.as_object_mut() {
                obj.insert(setting.field.into(), value.clone().into());
            }
        }
    }
}

/// Puts the per-replica settings (`sync-interval`) into one replica's config.
pub fn apply_replica(tuning: &Tuning, replica: &mut serde_json::Map<String, serde_json::Value>) {
    for (setting, value) in SETTINGS.iter().zip(tuning.values()) {
        if let (None, Some(value)) = (setting.section, value) {
            replica.insert(setting.field.into(), value.clone().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let [sync, snapshot, retention, validation] = &SETTINGS;
        for (s, ok, bad) in [
            (sync, ["10ms", "1s", "24h"], ["0s", "9ms", "25h"]),
            (snapshot, ["1m", "24h", "8760h"], ["59s", "0s", "8761h"]),
            (retention, ["1h", "168h", "87600h"], ["59m", "-1h", "87601h"]),
            (validation, ["1m", "12h33m", "8760h"], ["0s", "30s", "9999999h"]),
        ] {
            for v in ok {
                assert!(check(s, v).is_ok(), "{} {v}", s.key);
            }
            for v in bad {
                assert!(check(s, v).is_err(), "{} {v}", s.key);
            }
        }
    }

    #[test]
    fn settings_land_where_litestream_reads_them() {
        let t = Tuning {
            sync_interval: Some("2s".into()),
            snapshot_interval: Some("1h".into()),
            retention: Some("72h".into()),
            validation_interval: Some("6h".into()),
        };
        let mut top = serde_json::Map::new();
        apply_top_level(&t, &mut top);
        assert_eq!(
            serde_json::Value::Object(top),
            serde_json::json!({"snapshot": {"interval": "1h", "retention": "72h"}, "validation": {"interval": "6h"}})
        );
        let mut replica = serde_json::Map::new();
        apply_replica(&t, &mut replica);
        assert_eq!(
            serde_json::Value::Object(replica),
            serde_json::json!({"sync-interval": "2s"})
        );
        let mut none = serde_json::Map::new();
        apply_top_level(&Tuning::default(), &mut none);
        assert!(none.is_empty());
    }
}
