//! The group snapshot operations (GroupController): create, get and delete a group, and how a
//! group's progress is read from its members. A group is a record naming one snapshot per
//! volume; each member follows the single-snapshot life in `engine` and `lifecycle`.

use std::time::Instant;

use crate::engine::{
    check_same_parameters, check_snapshot_ids, cut_poll, is_cut, not_cut_yet, same_volumes, view, Engine, GroupView,
    LOCK_WAIT,
};
use crate::ids;
use crate::lifecycle::failure_status;
use crate::metadata::{GroupRecord, SnapshotRecord, State, Time};
use crate::params::{GroupConsistency, Params};
use crate::status::{Code, Status};

impl Engine {
    /// CreateVolumeGroupSnapshot: idempotent by `name`; ALREADY_EXISTS for other volumes;
    /// OK only once etcd has cut every member.
    pub fn create_group(&self, name: &str, volume_ids: &[String], params: &Params) -> Result<GroupView, Status> {
        let gid = ids::group_id(&self.cfg.driver_name, name);
        let what = format!("CreateVolumeGroupSnapshot {name:?}");
        {
            let _guard = self.locks.lock(&gid, LOCK_WAIT)?;
            match self.store.get::<GroupRecord>(&gid)? {
                Some(group) => self.check_same_volumes(name, &group, volume_ids, params)?,
                None => self.start_group(&gid, name, volume_ids, params)?,
            }
        }
        let started = Instant::now();
        loop {
            let (view, cut) = {
                let _guard = self.locks.lock(&gid, LOCK_WAIT)?;
                let group = self.store.get::<GroupRecord>(&gid)?.ok_or_else(|| {
                    Status::new(
                        Code::Aborted,
                        format!("{what}: group snapshot {gid} was deleted meanwhile; retry"),
                    )
                })?;
                self.progress_or_clear(&group)?
            };
            if let Some(pending) = cut {
                let waited = started.elapsed();
                if waited >= self.cfg.create_wait {
                    return Err(not_cut_yet(&what, &pending, waited));
                }
                std::thread::sleep(cut_poll(&self.cfg, waited));
                continue;
            }
            return Ok(view);
        }
    }

    /// Checks every cluster, then writes the group record and starts every member; all or
    /// nothing.
    fn start_group(&self, gid: &str, name: &str, volume_ids: &[String], params: &Params) -> Result<(), Status> {
        if volume_ids.len() > 1 && params.group_consistency == GroupConsistency::Strict {
            return Err(Status::invalid(format!(
                "CreateVolumeGroupSnapshot {name:?}: source volumes {} would be {} separate etcd snapshots (one Job \
                 each) with no common point in time, so the group would not be write-order consistent; snapshot \
                 each in a group of its own, or set the class parameter {}: per-volume to accept one point in time \
                 per volume",
                volume_ids.join(", "),
                volume_ids.len(),
                crate::params::GROUP_CONSISTENCY
            )));
        }
        // Resolve and check every cluster before creating anything, so a refusal leaves nothing.
        let mut checked = Vec::new();
        for v in volume_ids {
            checked.push(self.healthy_target(v)?);
        }
        let created = Time::now();
        let group = GroupRecord {
            id: gid.to_string(),
            name: name.to_string(),
            volume_ids: volume_ids.to_vec(),
            snapshot_ids: volume_ids.iter().map(|v| ids::member_snapshot_id(gid, v)).collect(),
            created,
            complete: false,
            parameters: Some(params.given.clone()),
        };
        if !self.store.create(&group)? {
            // Another driver instance created it meanwhile.
            let group = self.store.get::<GroupRecord>(gid)?.ok_or_else(|| {
                Status::new(
                    Code::Aborted,
                    format!("group snapshot {gid} changed concurrently; retry"),
                )
            })?;
            return self.check_same_volumes(name, &group, volume_ids, params);
        }
        for ((target, health), (sid, v)) in checked.iter().zip(group.snapshot_ids.iter().zip(volume_ids)) {
            let started_one = {
                let _g = self.locks.lock(sid, LOCK_WAIT)?;
                self.start(sid, Some(gid), "", v, target, health, created, params)
            };
            if let Err(e) = started_one {
                // Undo the whole group: a group snapshot is all or nothing.
                for sid in &group.snapshot_ids {
                    let _g = self.locks.lock(sid, LOCK_WAIT)?;
                    if let Err(e) = self.delete_snapshot_locked(sid) {
                        log::warn!(snapshot = sid.as_str(), error = e.message.as_str(); "cleanup after a failed group create");
                    }
                }
                if let Err(e) = self.store.delete(gid) {
                    log::warn!(group = gid, error = e.message.as_str(); "cleanup after a failed group create");
                }
                return Err(e);
            }
        }
        self.store.update::<GroupRecord>(gid, |g| {
            let changed = !g.complete;
            g.complete = true;
            changed
        })?;
        log::info!(group = gid, volumes = volume_ids.len(); "group snapshot started");
        Ok(())
    }

    fn check_same_volumes(
        &self,
        name: &str,
        group: &GroupRecord,
        volume_ids: &[String],
        params: &Params,
    ) -> Result<(), Status> {
        if same_volumes(&group.volume_ids, volume_ids) {
            return check_same_parameters(&format!("group snapshot {name:?}"), group.parameters.as_ref(), params);
        }
        Err(Status::new(
            Code::AlreadyExists,
            format!(
                "group snapshot {name:?} already exists with source volumes {:?}, not {volume_ids:?}",
                group.volume_ids
            ),
        ))
    }

    /// The group's progress; a failed group is reported once and cleared, so the CO's next
    /// retry starts afresh. The caller holds the group's lock.
    fn progress_or_clear(&self, group: &GroupRecord) -> Result<(GroupView, Option<SnapshotRecord>), Status> {
        match self.group_progress(group) {
            Err(failed) if failed.code != Code::Unavailable && failed.code != Code::Aborted => {
                for sid in &group.snapshot_ids {
                    let _g = self.locks.lock(sid, LOCK_WAIT)?;
                    self.delete_snapshot_locked(sid)?;
                }
                self.store.delete(&group.id)?;
                Err(failed)
            }
            other => other,
        }
    }

    /// GetVolumeGroupSnapshot: NOT_FOUND for an unknown id.
    pub fn get_group(&self, gid: &str, snapshot_ids: &[String]) -> Result<GroupView, Status> {
        let not_found = || Status::not_found(format!("group snapshot {gid} not found"));
        if !ids::is_our_id(gid, "g-") {
            return Err(not_found());
        }
        let _guard = self.locks.lock(gid, LOCK_WAIT)?;
        let group = self.store.get::<GroupRecord>(gid)?.ok_or_else(not_found)?;
        check_snapshot_ids(&group, snapshot_ids)?;
        Ok(self.group_progress(&group)?.0)
    }

    /// DeleteVolumeGroupSnapshot: removes every member and the group; succeeds when absent.
    /// `snapshot_ids` may name members too (only those of this group are touched).
    pub fn delete_group(&self, gid: &str, snapshot_ids: &[String]) -> Result<(), Status> {
        if !ids::is_our_id(gid, "g-") {
            return Ok(());
        }
        let _guard = self.locks.lock(gid, LOCK_WAIT)?;
        let mut members: Vec<String> = Vec::new();
        if let Some(group) = self.store.get::<GroupRecord>(gid)? {
            check_snapshot_ids(&group, snapshot_ids)?;
            members.extend(group.snapshot_ids);
        }
        for sid in snapshot_ids {
            if !members.contains(sid) && ids::is_our_id(sid, "s-") {
                if let Some(rec) = self.store.get::<SnapshotRecord>(sid)? {
                    if rec.group_id.as_deref() == Some(gid) {
                        members.push(sid.clone());
                    }
                }
            }
        }
        for sid in &members {
            let _g = self.locks.lock(sid, LOCK_WAIT)?;
            self.delete_snapshot_locked(sid)?;
        }
        self.store.delete(gid)?;
        log::info!(group = gid, snapshots = members.len(); "group snapshot deleted");
        Ok(())
    }

    /// The group with every member refreshed, and the first member not cut yet, if any; an
    /// error when a member failed or vanished. The group's creation_time is its last cut.
    fn group_progress(&self, group: &GroupRecord) -> Result<(GroupView, Option<SnapshotRecord>), Status> {
        let mut snapshots = Vec::new();
        let mut pending = None;
        let mut last_cut: Option<Time> = None;
        for (sid, volume) in group.snapshot_ids.iter().zip(&group.volume_ids) {
            let rec = match self.store.get::<SnapshotRecord>(sid)? {
                Some(rec) => {
                    let _g = self.locks.lock(sid, LOCK_WAIT)?;
                    self.refresh_locked(rec)?
                }
                None if group.complete => {
                    // Deleted on its own (DeleteSnapshot): the group reports what is left.
                    log::warn!(group = group.id.as_str(), snapshot = sid.as_str(), volume = volume.as_str();
                        "a member of the group snapshot was deleted");
                    continue;
                }
                None => {
                    return Err(Status::internal(format!(
                        "group snapshot {}: creating the snapshot of volume {volume} was interrupted",
                        group.id
                    )))
                }
            };
            if rec.state == State::Failed {
                return Err(failure_status(&rec).context(format!("group snapshot {}", group.id)));
            }
            let v = view(&rec);
            if is_cut(&rec) {
                last_cut = Some(match last_cut {
                    Some(t) if t.as_secs_f64() >= v.created.as_secs_f64() => t,
                    _ => v.created,
                });
            } else if pending.is_none() {
                pending = Some(rec);
            }
            snapshots.push(v);
        }
        let view = GroupView {
            id: group.id.clone(),
            ready: snapshots.iter().all(|s| s.ready),
            snapshots,
            created: last_cut.filter(|_| pending.is_none()).unwrap_or(group.created),
        };
        Ok((view, pending))
    }
}
