//! The CSI Identity service: who the plugin is, what services it offers, whether it is ready.

use lifeboat::ops_http::ReadyCheck;
use protobuf::well_known_types::wrappers::BoolValue;
use protobuf::{EnumOrUnknown, MessageField};

use crate::proto::csi;
use crate::proto::csi::plugin_capability::service::Type as ServiceType;
use crate::status::Status;

pub struct Identity {
    name: String,
    version: String,
    /// Ready when the Kubernetes API answers (shared with `/ready`).
    ready: ReadyCheck,
}

impl Identity {
    pub fn new(name: &str, ready: ReadyCheck) -> Identity {
        Identity {
            name: name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready,
        }
    }

    pub fn plugin_info(&self, _req: csi::GetPluginInfoRequest) -> Result<csi::GetPluginInfoResponse, Status> {
        let mut resp = csi::GetPluginInfoResponse::new();
        resp.name = self.name.clone();
        resp.vendor_version = self.version.clone();
        Ok(resp)
    }

    /// CONTROLLER_SERVICE (CreateSnapshot/DeleteSnapshot) and GROUP_CONTROLLER_SERVICE.
    pub fn plugin_capabilities(
        &self,
        _req: csi::GetPluginCapabilitiesRequest,
    ) -> Result<csi::GetPluginCapabilitiesResponse, Status> {
        let mut resp = csi::GetPluginCapabilitiesResponse::new();
        for t in [ServiceType::CONTROLLER_SERVICE, ServiceType::GROUP_CONTROLLER_SERVICE] {
            let mut service = csi::plugin_capability::Service::new();
            service.type_ = EnumOrUnknown::new(t);
            let mut cap = csi::PluginCapability::new();
            cap.set_service(service);
            resp.capabilities.push(cap);
        }
        Ok(resp)
    }

    /// Ready (true) when the Kubernetes API answers; a healthy plugin still waiting for
    /// the API says ready=false rather than failing, as the spec asks.
    pub fn probe(&self, _req: csi::ProbeRequest) -> Result<csi::ProbeResponse, Status> {
        let ready = match (self.ready)() {
            Ok(()) => true,
            Err(why) => {
                log::debug!(reason = why.as_str(); "probe: not ready");
                false
            }
        };
        let mut resp = csi::ProbeResponse::new();
        resp.ready = MessageField::some(BoolValue {
            value: ready,
            ..Default::default()
        });
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn info_capabilities_and_probe() {
        let id = Identity::new("etcdsnap.lifeboat.dev", Arc::new(|| Err("api down".to_string())));
        let info = id.plugin_info(Default::default()).unwrap();
        assert_eq!(info.name, "etcdsnap.lifeboat.dev");
        assert!(!info.vendor_version.is_empty());
        let caps = id.plugin_capabilities(Default::default()).unwrap();
        let types: Vec<_> = caps
            .capabilities
            .iter()
            .map(|c| c.service().type_.enum_value().unwrap())
            .collect();
        assert_eq!(
            types,
            [ServiceType::CONTROLLER_SERVICE, ServiceType::GROUP_CONTROLLER_SERVICE]
        );
        assert!(!id.probe(Default::default()).unwrap().ready.value);
        let id = Identity::new("x.y", Arc::new(|| Ok(())));
        assert!(id.probe(Default::default()).unwrap().ready.value);
    }
}
