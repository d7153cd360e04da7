//! The empty-source guard: an empty source must not silently wipe the destination.
//!
//! `rclone sync` makes the destination look like the source, so a source that lists empty
//! (a wrong prefix, a bucket emptied by accident, a replica not yet filled) deletes
//! everything in the destination, bounded only by `--max-delete`. s3sync refuses that case
//! unless `ALLOW_EMPTY_SOURCE=true` says an empty destination is really wanted.

use crate::preflight::Probe;

/// Whether the sync may go ahead; `Err` explains the refusal.
pub fn check(source: Probe, dest: Probe, allow_empty_source: bool) -> Result<(), String> {
    if source.has_objects || !dest.has_objects {
        return Ok(());
    }
    if allow_empty_source {
        log::warn!(
            "source is empty and ALLOW_EMPTY_SOURCE=true: the destination's objects will be deleted (up to MAX_DELETE)"
        );
        return Ok(());
    }
    Err(
        "refusing to sync: the source lists no objects but the destination has some, so the sync would delete them; \
         check SOURCE_BUCKET/SOURCE_PREFIX, or set ALLOW_EMPTY_SOURCE=true if emptying the destination is intended"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Probe = Probe { has_objects: true };
    const EMPTY: Probe = Probe { has_objects: false };

    #[test]
    fn only_empty_source_into_full_destination_is_refused() {
        assert!(check(FULL, FULL, false).is_ok());
        assert!(check(FULL, EMPTY, false).is_ok());
        assert!(check(EMPTY, EMPTY, false).is_ok());
        assert!(check(EMPTY, FULL, false).unwrap_err().contains("ALLOW_EMPTY_SOURCE"));
        assert!(check(EMPTY, FULL, true).is_ok());
    }
}
