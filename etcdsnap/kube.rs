//! A small blocking client for the Kubernetes API over HTTPS (ureq + rustls), in the order
//! a request flows: [`kubeconfig`] (with [`yaml`]) or the pod's service account give the
//! credentials; [`transport`] holds the connection and sends one request with bounded
//! retries; [`calls`] are the typed calls (k8s-openapi types as JSON, lists as `List<T>`).
//!
//! Credentials come from the pod's service account (token re-read on every request, since
//! projected tokens rotate; CA from the mounted `ca.crt`; `KUBERNETES_SERVICE_HOST/PORT`) or,
//! on a workstation, from the current context of `KUBECONFIG` (server, CA file or data,
//! bearer token, token file, or client certificate). Paths come from the k8s-openapi type
//! ([`path`]). Failures become [`KubeError`]s that keep the HTTP status and the API's
//! `Status` reason, and map to gRPC codes in [`KubeError::to_status`]. Tokens are never
//! logged or put into an error.

mod calls;
mod kubeconfig;
mod transport;
mod yaml;

use std::fmt;

use k8s_openapi::{NamespaceResourceScope, Resource};

use crate::status::{Code, Status};

pub use transport::Kube;

/// A failed API call: what we tried, the HTTP status (none for transport failures), the
/// `Status.reason` and the message.
#[derive(Debug, Clone)]
pub struct KubeError {
    pub op: String,
    pub status: Option<u16>,
    pub reason: String,
    pub message: String,
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(
                f,
                "{}: Kubernetes API answered {code} {}: {}",
                self.op, self.reason, self.message
            ),
            None => write!(f, "{}: Kubernetes API unreachable: {}", self.op, self.message),
        }
    }
}

impl std::error::Error for KubeError {}

impl KubeError {
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status == Some(409) && self.reason != "AlreadyExists"
    }

    pub fn is_already_exists(&self) -> bool {
        self.status == Some(409) && self.reason == "AlreadyExists"
    }

    /// The gRPC status for this failure.
    pub fn to_status(&self) -> Status {
        let code = match self.status {
            None => Code::Unavailable,
            Some(400 | 422) => Code::Internal,
            Some(401) => Code::Unauthenticated,
            Some(403) => Code::PermissionDenied,
            Some(404) => Code::NotFound,
            Some(409) if self.reason == "AlreadyExists" => Code::AlreadyExists,
            Some(409 | 410) => Code::Aborted,
            Some(429) => Code::ResourceExhausted,
            Some(504) => Code::DeadlineExceeded,
            Some(500..=599) => Code::Unavailable,
            Some(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}

impl From<KubeError> for Status {
    fn from(e: KubeError) -> Status {
        e.to_status()
    }
}

/// The path of a namespaced collection of `T`, or of its object `name`: `/api/v1/...` for
/// the core group, `/apis/GROUP/VERSION/...` for the others.
pub fn path<T: Resource<Scope = NamespaceResourceScope>>(namespace: &str, name: Option<&str>) -> String {
    let base = if T::GROUP.is_empty() {
        format!("/api/{}", T::VERSION)
    } else {
        format!("/apis/{}/{}", T::GROUP, T::VERSION)
    };
    let collection = format!("{base}/namespaces/{namespace}/{}", T::URL_PATH_SEGMENT);
    match name {
        Some(n) => format!("{collection}/{n}"),
        None => collection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};

    #[test]
    fn paths_come_from_the_types() {
        assert_eq!(path::<Pod>("ns", None), "/api/v1/namespaces/ns/pods");
        assert_eq!(
            path::<ConfigMap>("kube-system", Some("c")),
            "/api/v1/namespaces/kube-system/configmaps/c"
        );
        assert_eq!(
            path::<PersistentVolumeClaim>("ns", Some("p")),
            "/api/v1/namespaces/ns/persistentvolumeclaims/p"
        );
        assert_eq!(path::<Job>("ns", Some("j")), "/apis/batch/v1/namespaces/ns/jobs/j");
    }

    #[test]
    fn api_errors_map_to_grpc_codes() {
        let e = |status, reason: &str| KubeError {
            op: "POST /x".into(),
            status,
            reason: reason.into(),
            message: "m".into(),
        };
        assert_eq!(e(Some(404), "NotFound").to_status().code, Code::NotFound);
        assert_eq!(e(Some(409), "AlreadyExists").to_status().code, Code::AlreadyExists);
        assert_eq!(e(Some(409), "Conflict").to_status().code, Code::Aborted);
        assert!(e(Some(409), "Conflict").is_conflict());
        assert_eq!(e(Some(403), "Forbidden").to_status().code, Code::PermissionDenied);
        assert_eq!(e(Some(422), "Invalid").to_status().code, Code::Internal);
        assert_eq!(e(Some(503), "").to_status().code, Code::Unavailable);
        assert_eq!(e(None, "").to_status().code, Code::Unavailable);
        let text = e(Some(403), "Forbidden").to_string();
        assert!(text.contains("POST /x") && text.contains("403 Forbidden"), "{text}");
    }
}
