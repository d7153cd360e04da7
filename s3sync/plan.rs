//! The plan, made from both listings before rclone runs: which objects rclone cannot
//! represent, whether the source is empty, and how many deletions the sync needs — so a run
//! that would exceed a deletion limit is refused before anything is deleted (rclone's own
//! `--max-delete` deletes up to the limit and only then fails, so every run would delete more).
//!
//! Keys are compared relative to each side's prefix, as rclone maps them. A key rclone cannot
//! copy one to one (measured with rclone 1.75 against moto): one with an empty segment — a
//! leading `/`, `//` inside, or a trailing `/` (a "directory marker", which rclone skips or,
//! with `--s3-directory-markers`, replaces by markers of its own). Keys with `.` or `..`
//! segments are copied correctly once rclone's `Dot` encoding is off (`rclone.rs`).

use std::collections::BTreeMap;

use lifeboat::s3::Object;

/// How many keys a message names at most.
pub const NAMED: usize = 10;

/// One side's listing, relative to its prefix.
#[derive(Debug, Default)]
pub struct Side {
    /// Relative key → object, for the keys rclone can copy.
    pub objects: BTreeMap<String, Object>,
    /// Full keys rclone cannot represent.
    pub uncopyable: Vec<String>,
}

/// Whether rclone copies `rel` (a key relative to the prefix) one to one.
pub fn copyable(rel: &str) -> bool {
    !rel.is_empty() && !rel.split('/').any(str::is_empty)
}

/// Splits a listing under `key_prefix` into copyable objects and keys rclone cannot copy.
pub fn side(objects: Vec<Object>, key_prefix: &str) -> Side {
    let mut side = Side::default();
    for o in objects {
        let Some(rel) = o.key.strip_prefix(key_prefix) else {
            continue;
        };
        if copyable(rel) {
            side.objects.insert(rel.to_string(), o);
        } else {
            side.uncopyable.push(o.key);
        }
    }
    side
}

/// What the sync will have to do, as far as deletions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub source_objects: u64,
    pub dest_objects: u64,
    /// Destination objects the source does not have: what `rclone sync` deletes.
    pub deletions: u64,
    /// The first of them, for messages.
    pub first_deletions: Vec<String>,
}

pub fn plan(source: &Side, dest: &Side) -> Plan {
    let gone: Vec<&String> = dest
        .objects
        .keys()
        .filter(|k| !source.objects.contains_key(*k))
        .collect();
    Plan {
        source_objects: source.objects.len() as u64,
        dest_objects: dest.objects.len() as u64,
        deletions: gone.len() as u64,
        first_deletions: gone.iter().take(NAMED).map(|k| k.to_string()).collect(),
    }
}

/// A deletion limit that the plan exceeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tripped {
    /// `MAX_DELETE` or `MAX_DELETE_PERCENT`.
    pub limit: &'static str,
    /// The number of deletions the limit allows.
    pub allowed: u64,
    pub message: String,
}

/// The number of deletions both limits allow for a destination of `dest_objects`; the
/// percentage rounds up (50 % of one object allows deleting it; 0 % allows none).
pub fn allowed(max_delete: Option<u64>, max_percent: u8, dest_objects: u64) -> (u64, &'static str) {
    let by_percent = (dest_objects * u64::from(max_percent)).div_ceil(100);
    match max_delete {
        Some(n) if n <= by_percent => (n, "MAX_DELETE"),
        _ if max_percent >= 100 => (max_delete.unwrap_or(u64::MAX), "MAX_DELETE"),
        _ => (by_percent, "MAX_DELETE_PERCENT"),
    }
}

/// `Err` when the plan needs more deletions than `MAX_DELETE` (`None` = unlimited) or
/// `MAX_DELETE_PERCENT` of the destination allow.
pub fn check_limits(plan: &Plan, max_delete: Option<u64>, max_percent: u8) -> Result<(), Tripped> {
    let (allowed, limit) = allowed(max_delete, max_percent, plan.dest_objects);
    if plan.deletions <= allowed {
        return Ok(());
    }
    let what = if limit == "MAX_DELETE" {
        format!("MAX_DELETE={allowed}")
    } else {
        format!(
            "MAX_DELETE_PERCENT={max_percent} ({allowed} of {} destination objects)",
            plan.dest_objects
        )
    };
    Err(Tripped {
        limit,
        allowed,
        message: format!(
            "refusing to sync: it would delete {} destination objects, more than {what} allows; nothing was \
             copied or deleted. First of them: {}. Raise the limit if these deletions are intended, or check \
             SOURCE_PREFIX / DEST_PREFIX",
            plan.deletions,
            plan.first_deletions.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> Object {
        Object {
            key: key.into(),
            size: 1,
            etag: String::new(),
        }
    }

    #[test]
    fn keys_rclone_cannot_copy() {
        for ok in ["a", "a/./b", "a/../b", ".", "..", "x y/z", "a/b.txt"] {
            assert!(copyable(ok), "{ok}");
        }
        for bad in ["", "/a", "a//b", "dir/", "a/b/"] {
            assert!(!copyable(bad), "{bad}");
        }
        let s = side(vec![obj("p/a"), obj("p//x"), obj("p/"), obj("p/d/"), obj("q")], "p/");
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.uncopyable, ["p//x", "p/", "p/d/"]);
    }

    #[test]
    fn limits_are_checked_before_acting() {
        let src = side(vec![obj("a")], "");
        let dst = side((0..10).map(|i| obj(&format!("x{i}"))).chain([obj("a")]).collect(), "");
        let p = plan(&src, &dst);
        assert_eq!((p.deletions, p.dest_objects), (10, 11));
        let t = check_limits(&p, Some(3), 100).unwrap_err();
        assert_eq!((t.limit, t.allowed), ("MAX_DELETE", 3));
        assert!(
            t.message.contains("delete 10") && t.message.contains("MAX_DELETE=3"),
            "{}",
            t.message
        );
        let t = check_limits(&p, Some(1000), 50).unwrap_err();
        assert_eq!((t.limit, t.allowed), ("MAX_DELETE_PERCENT", 6));
        assert_eq!(allowed(None, 50, 1), (1, "MAX_DELETE_PERCENT"));
        assert_eq!(allowed(Some(7), 0, 100), (0, "MAX_DELETE_PERCENT"));
        assert!(check_limits(&p, None, 100).is_ok());
        assert!(check_limits(&p, Some(10), 100).is_ok());
        assert!(check_limits(&p, Some(0), 100).is_err());
    }
}
