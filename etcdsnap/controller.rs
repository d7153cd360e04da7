//! The CSI Controller service, reduced to what a snapshot-only driver needs:
//! ControllerGetCapabilities (CREATE_DELETE_SNAPSHOT, without which the csi-snapshotter
//! sidecar exits; LIST_SNAPSHOTS, without which the sidecar takes every member of a group
//! snapshot for ready at once; GET_SNAPSHOT), CreateSnapshot, DeleteSnapshot, ListSnapshots
//! and GetSnapshot on the shared [`Engine`], and ValidateVolumeCapabilities, which the spec
//! requires of every Controller plugin. Every other Controller RPC is unregistered, so gRPC
//! answers UNIMPLEMENTED, as the spec allows for capabilities a plugin does not report.

use std::sync::Arc;

use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{EnumOrUnknown, MessageField};

use crate::engine::{Engine, SnapshotView};
use crate::ids;
use crate::params;
use crate::proto::csi;
use crate::proto::csi::controller_service_capability::rpc::Type as RpcType;
use crate::status::Status;

pub struct Controller {
    engine: Arc<Engine>,
}

/// A snapshot in its CSI form.
pub fn to_proto(s: &SnapshotView) -> csi::Snapshot {
    let mut out = csi::Snapshot::new();
    out.snapshot_id = s.id.clone();
    out.source_volume_id = s.volume_id.clone();
    out.group_snapshot_id = s.group_id.clone().unwrap_or_default();
    out.size_bytes = s.size_bytes;
    out.ready_to_use = s.ready;
    out.creation_time = MessageField::some(timestamp(s.created));
    out
}

pub fn timestamp(t: crate::metadata::Time) -> Timestamp {
    Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
        ..Default::default()
    }
}

/// Checks an idempotency name: present, bounded, no control characters (the spec's rule).
pub fn check_name(name: &str, what: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid(format!("{what}: name is required")));
    }
    if name.len() > ids::MAX_NAME_BYTES {
        return Err(Status::invalid(format!(
            "{what}: name is {} bytes, at most {} allowed",
            name.len(),
            ids::MAX_NAME_BYTES
        )));
    }
    if name
        .chars()
        .any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
    {
        return Err(Status::invalid(format!("{what}: name contains control characters")));
    }
    Ok(())
}

impl Controller {
    pub fn new(engine: Arc<Engine>) -> Controller {
        Controller { engine }
    }

    pub fn capabilities(
        &self,
        _req: csi::ControllerGetCapabilitiesRequest,
    ) -> Result<csi::ControllerGetCapabilitiesResponse, Status> {
        let mut resp = csi::ControllerGetCapabilitiesResponse::new();
        for t in [
            RpcType::CREATE_DELETE_SNAPSHOT,
            RpcType::LIST_SNAPSHOTS,
            RpcType::GET_SNAPSHOT,
        ] {
            let mut rpc = csi::controller_service_capability::RPC::new();
            rpc.type_ = EnumOrUnknown::new(t);
            let mut cap = csi::ControllerServiceCapability::new();
            cap.set_rpc(rpc);
            resp.capabilities.push(cap);
        }
        Ok(resp)
    }

    pub fn create_snapshot(&self, req: csi::CreateSnapshotRequest) -> Result<csi::CreateSnapshotResponse, Status> {
        check_name(&req.name, "CreateSnapshot")?;
        if req.source_volume_id.is_empty() {
            return Err(Status::invalid("CreateSnapshot: source_volume_id is required"));
        }
        let params = params::parse(&req.parameters, params::For::Snapshot, "CreateSnapshot")?;
        let snap = self.engine.create_snapshot(&req.name, &req.source_volume_id, &params)?;
        let mut resp = csi::CreateSnapshotResponse::new();
        resp.snapshot = MessageField::some(to_proto(&snap));
        Ok(resp)
    }

    pub fn list_snapshots(&self, req: csi::ListSnapshotsRequest) -> Result<csi::ListSnapshotsResponse, Status> {
        let (snaps, next) = self.engine.list_snapshots(
            &req.snapshot_id,
            &req.source_volume_id,
            req.max_entries,
            &req.starting_token,
        )?;
        let mut resp = csi::ListSnapshotsResponse::new();
        for s in &snaps {
            let mut entry = csi::list_snapshots_response::Entry::new();
            entry.snapshot = MessageField::some(to_proto(s));
            resp.entries.push(entry);
        }
        resp.next_token = next;
        Ok(resp)
    }

    pub fn get_snapshot(&self, req: csi::GetSnapshotRequest) -> Result<csi::GetSnapshotResponse, Status> {
        if req.snapshot_id.is_empty() {
            return Err(Status::invalid("GetSnapshot: snapshot_id is required"));
        }
        let snap = self.engine.get_snapshot(&req.snapshot_id)?;
        let mut resp = csi::GetSnapshotResponse::new();
        resp.snapshot = MessageField::some(to_proto(&snap));
        Ok(resp)
    }

    /// The volumes are handles that stand for etcd clusters: they are snapshotted, never
    /// published or mounted (etcdsnap has no Node service), so no capability is confirmed;
    /// the answer says why. Arguments are checked as the spec asks first.
    pub fn validate_volume_capabilities(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid("ValidateVolumeCapabilities: volume_id is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid(
                "ValidateVolumeCapabilities: volume_capabilities is required",
            ));
        }
        for (i, cap) in req.volume_capabilities.iter().enumerate() {
            if cap.access_type.is_none() {
                return Err(Status::invalid(format!(
                    "ValidateVolumeCapabilities: volume_capabilities[{i}] has no access type (block or mount)"
                )));
            }
            if cap.access_mode.is_none() {
                return Err(Status::invalid(format!(
                    "ValidateVolumeCapabilities: volume_capabilities[{i}] has no access mode"
                )));
            }
        }
        self.engine.volume_exists(&req.volume_id)?;
        let mut resp = csi::ValidateVolumeCapabilitiesResponse::new();
        resp.message = format!(
            "volume {} stands for an etcd cluster and is only snapshotted: etcdsnap has no Node service, \
             so it cannot be published or mounted with any access mode",
            req.volume_id
        );
        Ok(resp)
    }

    pub fn delete_snapshot(&self, req: csi::DeleteSnapshotRequest) -> Result<csi::DeleteSnapshotResponse, Status> {
        if req.snapshot_id.is_empty() {
            return Err(Status::invalid("DeleteSnapshot: snapshot_id is required"));
        }
        self.engine.delete_snapshot(&req.snapshot_id)?;
        Ok(csi::DeleteSnapshotResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        assert!(check_name("snapshot-1", "X").is_ok());
        assert!(check_name(&"n".repeat(128), "X").is_ok());
        assert_eq!(
            check_name("", "X").unwrap_err().code,
            crate::status::Code::InvalidArgument
        );
        assert!(check_name("a\u{1}b", "X").is_err());
        assert!(check_name("tab\tok", "X").is_ok());
        assert!(check_name(&"n".repeat(ids::MAX_NAME_BYTES + 1), "X").is_err());
    }

    #[test]
    fn snapshots_convert_to_csi() {
        let v = SnapshotView {
            id: "s-1".into(),
            volume_id: "etcd/main".into(),
            group_id: Some("g-1".into()),
            size_bytes: 20480,
            created: crate::metadata::Time { seconds: 5, nanos: 6 },
            ready: true,
        };
        let p = to_proto(&v);
        assert_eq!((p.snapshot_id.as_str(), p.group_snapshot_id.as_str()), ("s-1", "g-1"));
        assert_eq!(p.creation_time.seconds, 5);
        assert!(p.ready_to_use);
    }
}
