//! The CSI GroupController service: VolumeGroupSnapshots, one consistent etcd snapshot per
//! source volume (each volume is one etcd cluster's handle PVC).
//!
//! Argument rules follow the spec (and what csi-sanity checks): a missing name, missing
//! source volumes or a missing group id is INVALID_ARGUMENT; an unknown id is NOT_FOUND on
//! Get and success on Delete; `snapshot_ids` may be empty on Get and Delete.

use std::sync::Arc;

use protobuf::{EnumOrUnknown, MessageField};

use crate::controller::{check_name, timestamp, to_proto};
use crate::engine::{Engine, GroupView};
use crate::ids::MAX_GROUP_VOLUMES;
use crate::params;
use crate::proto::csi;
use crate::proto::csi::group_controller_service_capability::rpc::Type as RpcType;
use crate::status::Status;

pub struct GroupController {
    engine: Arc<Engine>,
}

fn to_proto_group(g: &GroupView) -> csi::VolumeGroupSnapshot {
    let mut out = csi::VolumeGroupSnapshot::new();
    out.group_snapshot_id = g.id.clone();
    out.snapshots = g.snapshots.iter().map(to_proto).collect();
    out.creation_time = MessageField::some(timestamp(g.created));
    out.ready_to_use = g.ready;
    out
}

/// Checks the source volume list: present, bounded, no empty entries, no duplicates.
pub fn check_volumes(ids: &[String]) -> Result<(), Status> {
    if ids.is_empty() {
        return Err(Status::invalid(
            "CreateVolumeGroupSnapshot: source_volume_ids is required",
        ));
    }
    if ids.len() > MAX_GROUP_VOLUMES {
        return Err(Status::invalid(format!(
            "CreateVolumeGroupSnapshot: {} source volumes, at most {MAX_GROUP_VOLUMES} allowed",
            ids.len()
        )));
    }
    for (i, id) in ids.iter().enumerate() {
        if id.is_empty() {
            return Err(Status::invalid(format!(
                "CreateVolumeGroupSnapshot: source_volume_ids[{i}] is empty"
            )));
        }
        if ids[..i].contains(id) {
            return Err(Status::invalid(format!(
                "CreateVolumeGroupSnapshot: source volume {id:?} is listed twice"
            )));
        }
    }
    Ok(())
}

impl GroupController {
    pub fn new(engine: Arc<Engine>) -> GroupController {
        GroupController { engine }
    }

    pub fn capabilities(
        &self,
        _req: csi::GroupControllerGetCapabilitiesRequest,
    ) -> Result<csi::GroupControllerGetCapabilitiesResponse, Status> {
        let mut rpc = csi::group_controller_service_capability::RPC::new();
        rpc.type_ = EnumOrUnknown::new(RpcType::CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT);
        let mut cap = csi::GroupControllerServiceCapability::new();
        cap.set_rpc(rpc);
        let mut resp = csi::GroupControllerGetCapabilitiesResponse::new();
        resp.capabilities.push(cap);
        Ok(resp)
    }

    pub fn create(
        &self,
        req: csi::CreateVolumeGroupSnapshotRequest,
    ) -> Result<csi::CreateVolumeGroupSnapshotResponse, Status> {
        check_name(&req.name, "CreateVolumeGroupSnapshot")?;
        check_volumes(&req.source_volume_ids)?;
        let params = params::parse(&req.parameters, params::For::Group, "CreateVolumeGroupSnapshot")?;
        let group = self.engine.create_group(&req.name, &req.source_volume_ids, &params)?;
        let mut resp = csi::CreateVolumeGroupSnapshotResponse::new();
        resp.group_snapshot = MessageField::some(to_proto_group(&group));
        Ok(resp)
    }

    pub fn get(&self, req: csi::GetVolumeGroupSnapshotRequest) -> Result<csi::GetVolumeGroupSnapshotResponse, Status> {
        if req.group_snapshot_id.is_empty() {
            return Err(Status::invalid("GetVolumeGroupSnapshot: group_snapshot_id is required"));
        }
        let group = self.engine.get_group(&req.group_snapshot_id, &req.snapshot_ids)?;
        let mut resp = csi::GetVolumeGroupSnapshotResponse::new();
        resp.group_snapshot = MessageField::some(to_proto_group(&group));
        Ok(resp)
    }

    pub fn delete(
        &self,
        req: csi::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<csi::DeleteVolumeGroupSnapshotResponse, Status> {
        if req.group_snapshot_id.is_empty() {
            return Err(Status::invalid(
                "DeleteVolumeGroupSnapshot: group_snapshot_id is required",
            ));
        }
        self.engine.delete_group(&req.group_snapshot_id, &req.snapshot_ids)?;
        Ok(csi::DeleteVolumeGroupSnapshotResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Code;

    #[test]
    fn volume_lists() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_volumes(&v(&["etcd/a", "etcd/b"])).is_ok());
        assert_eq!(check_volumes(&[]).unwrap_err().code, Code::InvalidArgument);
        assert!(check_volumes(&v(&["etcd/a", ""]))
            .unwrap_err()
            .message
            .contains("[1] is empty"));
        assert!(check_volumes(&v(&["etcd/a", "etcd/a"]))
            .unwrap_err()
            .message
            .contains("twice"));
        let many: Vec<String> = (0..=MAX_GROUP_VOLUMES).map(|i| format!("etcd/v{i}")).collect();
        assert!(check_volumes(&many).is_err());
    }
}
