//! From a CSI volume id to the etcd cluster it stands for: endpoints and client TLS.
//!
//! The volume id `namespace/pvc` names a "handle" PersistentVolumeClaim labelled with the
//! cluster (`etcd.io/cluster: main` by default; the key is configurable). In that namespace:
//! * client endpoints: the PVC annotation `etcd.io/endpoints` (comma-separated `https://`
//!   URLs), else the Endpoints of the Service named by the annotation `etcd.io/service`
//!   (default: the cluster name). A ready address with a hostname (a StatefulSet behind a
//!   headless Service) becomes `https://<hostname>.<service>.<namespace>.svc:<port>`, so the
//!   name matches the members' serving certificates; otherwise its IP is used. The port is
//!   the one named `client` (or `etcd-client`), else 2379, else the only one.
//! * client TLS: the Secret named by the annotation `etcd.io/client-tls-secret` (default
//!   `<cluster>-client-tls`) with `ca.crt`, `tls.crt`, `tls.key`.
//! * etcd user and password (optional, for clusters with `auth enable`): the Secret named by
//!   the annotation `etcd.io/auth-secret`, a `kubernetes.io/basic-auth` Secret with `username`
//!   and `password`. Without the annotation no user is sent.

use k8s_openapi::api::core::v1::{Endpoints, PersistentVolumeClaim, Secret, Service};

use crate::etcd::{ClientTls, UserAuth};
use crate::ids::{self, VolumeId};
use crate::kube::{path, Kube};
use crate::status::Status;

pub const ANNOTATION_ENDPOINTS: &str = "etcd.io/endpoints";
pub const ANNOTATION_SERVICE: &str = "etcd.io/service";
pub const ANNOTATION_TLS_SECRET: &str = "etcd.io/client-tls-secret";
pub const ANNOTATION_AUTH_SECRET: &str = "etcd.io/auth-secret";
/// Every annotation of a handle PVC that discovery reads (`etcdsnap --print-config-schema`).
pub const ANNOTATIONS: [&str; 4] = [
    ANNOTATION_ENDPOINTS,
    ANNOTATION_SERVICE,
    ANNOTATION_TLS_SECRET,
    ANNOTATION_AUTH_SECRET,
];

/// Where a volume's etcd cluster is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub volume: VolumeId,
    /// The cluster's name (the label value).
    pub cluster: String,
    pub endpoints: Vec<String>,
    pub tls_secret: String,
    pub tls: ClientTls,
    /// The Secret with the etcd user and password, and what it holds.
    pub auth: Option<(String, UserAuth)>,
}

impl Target {
    /// `namespace/cluster`, for messages and metrics.
    pub fn cluster_id(&self) -> String {
        format!("{}/{}", self.volume.namespace, self.cluster)
    }
}

/// NOT_FOUND unless `volume_id` is a handle PVC: `namespace/name` of a PVC with the
/// cluster label.
pub fn handle_exists(kube: &Kube, cluster_label: &str, volume_id: &str) -> Result<(), Status> {
    let not_found = || Status::not_found(format!("volume {volume_id:?} not found"));
    let volume = ids::parse_volume_id(volume_id).map_err(|_| not_found())?;
    let pvc: Option<PersistentVolumeClaim> =
        kube.get(&path::<PersistentVolumeClaim>(&volume.namespace, Some(&volume.name)))?;
    match pvc {
        Some(p) if p.metadata.labels.as_ref().is_some_and(|l| l.contains_key(cluster_label)) => Ok(()),
        Some(_) => Err(Status::not_found(format!(
            "volume {volume_id:?} not found: PersistentVolumeClaim {volume} has no {cluster_label} label, so it is no etcdsnap volume"
        ))),
        None => Err(not_found()),
    }
}

/// Looks up the handle PVC and everything it points to.
pub fn resolve(kube: &Kube, cluster_label: &str, volume_id: &str) -> Result<Target, Status> {
    let volume = ids::parse_volume_id(volume_id)?;
    let ns = volume.namespace.as_str();
    let pvc: PersistentVolumeClaim = kube
        .get(&path::<PersistentVolumeClaim>(ns, Some(&volume.name)))?
        .ok_or_else(|| {
            Status::not_found(format!(
                "source volume {volume}: PersistentVolumeClaim {volume} not found"
            ))
        })?;
    let labels = pvc.metadata.labels.clone().unwrap_or_default();
    let cluster = labels.get(cluster_label).cloned().ok_or_else(|| {
        Status::invalid(format!(
            "source volume {volume}: PersistentVolumeClaim {volume} has no {cluster_label} label, so it stands for no etcd cluster"
        ))
    })?;
    let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
    let cluster_id = format!("{ns}/{cluster}");
    let endpoints = match annotations.get(ANNOTATION_ENDPOINTS) {
        Some(list) => parse_endpoint_list(list).map_err(|e| {
            Status::precondition(format!(
                "etcd cluster {cluster_id}: annotation {ANNOTATION_ENDPOINTS} on {volume}: {e}"
            ))
        })?,
        None => {
            let service = annotations
                .get(ANNOTATION_SERVICE)
                .cloned()
                .unwrap_or_else(|| cluster.clone());
            service_endpoints(kube, ns, &service).map_err(|e| e.context(format!("etcd cluster {cluster_id}")))?
        }
    };
    let tls_secret = annotations
        .get(ANNOTATION_TLS_SECRET)
        .cloned()
        .unwrap_or_else(|| format!("{cluster}-client-tls"));
    let tls = client_tls(kube, ns, &tls_secret).map_err(|e| e.context(format!("etcd cluster {cluster_id}")))?;
    let auth = match annotations.get(ANNOTATION_AUTH_SECRET) {
        None => None,
        Some(name) => Some((
            name.clone(),
            user_auth(kube, ns, name).map_err(|e| e.context(format!("etcd cluster {cluster_id}")))?,
        )),
    };
    Ok(Target {
        volume,
        cluster,
        endpoints,
        tls_secret,
        tls,
        auth,
    })
}

/// `https://a:2379, https://b:2379` → URLs; only https.
pub fn parse_endpoint_list(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err("lists no endpoint".into());
    }
    for u in &urls {
        let rest = u
            .strip_prefix("https://")
            .ok_or_else(|| format!("{u:?} is not an https:// URL (etcdsnap talks to etcd over TLS only)"))?;
        if rest.is_empty() || rest.contains('/') && !rest.ends_with('/') {
            return Err(format!("{u:?} is not a client URL such as https://etcd-0.etcd:2379"));
        }
    }
    Ok(urls)
}

fn service_endpoints(kube: &Kube, ns: &str, service: &str) -> Result<Vec<String>, Status> {
    let svc: Option<Service> = kube.get(&path::<Service>(ns, Some(service)))?;
    if svc.is_none() {
        return Err(Status::precondition(format!(
            "Service {ns}/{service} not found, and the handle PVC has no {ANNOTATION_ENDPOINTS} annotation"
        )));
    }
    let eps: Endpoints = kube
        .get(&path::<Endpoints>(ns, Some(service)))?
        .ok_or_else(|| Status::precondition(format!("Service {ns}/{service} has no Endpoints")))?;
    let urls = endpoint_urls(&eps, ns, service);
    if urls.is_empty() {
        return Err(Status::precondition(format!(
            "Service {ns}/{service} has no ready addresses with a client port"
        )));
    }
    Ok(urls)
}

/// Member URLs from an Endpoints object (see the module documentation).
pub fn endpoint_urls(eps: &Endpoints, ns: &str, service: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for subset in eps.subsets.iter().flatten() {
        let ports = subset.ports.clone().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| matches!(p.name.as_deref(), Some("client" | "etcd-client")))
            .or_else(|| ports.iter().find(|p| p.port == 2379))
            .or(if ports.len() == 1 { ports.first() } else { None });
        let Some(port) = port else { continue };
        for addr in subset.addresses.iter().flatten() {
            let host = match addr.hostname.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => format!("{h}.{service}.{ns}.svc"),
                None if addr.ip.contains(':') => format!("[{}]", addr.ip),
                None => addr.ip.clone(),
            };
            let url = format!("https://{host}:{}", port.port);
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

fn client_tls(kube: &Kube, ns: &str, name: &str) -> Result<ClientTls, Status> {
    let secret: Secret = kube
        .get(&path::<Secret>(ns, Some(name)))?
        .ok_or_else(|| Status::precondition(format!("client TLS Secret {ns}/{name} not found")))?;
    let data = secret.data.unwrap_or_default();
    let take = |key: &str| {
        data.get(key)
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Status::precondition(format!("client TLS Secret {ns}/{name} has no {key}")))
    };
    Ok(ClientTls {
        ca: take("ca.crt")?,
        cert: take("tls.crt")?,
        key: take("tls.key")?,
    })
}

/// `username` and `password` of a basic-auth Secret (the password only as a [`Secret`]).
fn user_auth(kube: &Kube, ns: &str, name: &str) -> Result<UserAuth, Status> {
    let secret: Secret = kube
        .get(&path::<Secret>(ns, Some(name)))?
        .ok_or_else(|| Status::precondition(format!("etcd auth Secret {ns}/{name} not found")))?;
    let data = secret.data.unwrap_or_default();
    let take = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Status::precondition(format!("etcd auth Secret {ns}/{name} has no {key}")))
    };
    Ok(UserAuth {
        username: take("username")?,
        password: lifeboat::secret::Secret::new(take("password")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_annotation() {
        assert_eq!(
            parse_endpoint_list(" https://a:2379 ,https://b:2379,").unwrap(),
            ["https://a:2379", "https://b:2379"]
        );
        assert!(parse_endpoint_list("http://a:2379").unwrap_err().contains("https://"));
        assert!(parse_endpoint_list(" , ").is_err());
    }

    #[test]
    fn endpoints_to_urls() {
        let eps: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "main"},
            "subsets": [
                {"addresses": [{"ip": "10.0.0.1", "hostname": "main-0"}, {"ip": "10.0.0.2", "hostname": "main-1"}],
                 "ports": [{"name": "peer", "port": 2380}, {"name": "client", "port": 2379}]},
                {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 32379}]},
                {"addresses": [{"ip": "fd00::1"}], "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]},
                {"addresses": [{"ip": "fd00::2"}], "ports": [{"name": "x", "port": 2379}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            endpoint_urls(&eps, "etcd", "main"),
            [
                "https://main-0.main.etcd.svc:2379",
                "https://main-1.main.etcd.svc:2379",
                "https://127.0.0.1:32379",
                "https://[fd00::2]:2379"
            ]
        );
    }
}
