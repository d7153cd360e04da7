//! The empty-source guard: an empty source must not silently wipe the destination.
//!
//! `rclone sync` makes the destination look like the source, so a source that lists empty
//! (a wrong prefix, a bucket emptied by accident, a replica not yet filled) deletes
//! everything in the destination, bounded only by `--max-delete`. s3sync refuses that case
//! unless `ALLOW_EMPTY_SOURCE=true` says an empty destination is really wanted.

/// Whether the sync may go ahead; `Err` explains the refusal.
/// `source_objects` / `dest_objects`: the objects rclone would see on each side.
pub fn check(source_objects: u64, dest_objects: u64, allow_empty_source: bool) -> Result<(), String> {
    if source_objects > 0 || dest_objects == 0 {
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

    const FULL: u64 = 3;
    const EMPTY: u64 = 0;

    #[test]
    fn only_empty_source_into_full_destination_is_refused() {
        assert!(check(FULL, FULL, false).is_ok());
        assert!(check(FULL, EMPTY, false).is_ok());
        assert!(check(EMPTY, EMPTY, false).is_ok());
        assert!(check(EMPTY, FULL, false).unwrap_err().contains("ALLOW_EMPTY_SOURCE"));
        assert!(check(EMPTY, FULL, true).is_ok());
    }
}
