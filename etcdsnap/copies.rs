//! The driver's side of the S3 copies (see `export`): at Create, the Secret with the keys must
//! exist and hold them (so a missing Secret is a clear FAILED_PRECONDITION, not a Job stuck
//! on its configuration); at Delete, the copy is removed with the keys read from that Secret.
//! The keys are only ever held as [`Secret`]s in memory.

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use lifeboat::s3::{Credentials, ErrorKind};
use lifeboat::secret::Secret;

use crate::export::{self, ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN};
use crate::job::JobExport;
use crate::kube::{path, Kube};
use crate::metadata::ExportRecord;
use crate::status::{Code, Status};

impl ExportRecord {
    /// What the Job's export container needs.
    pub fn job_export(&self) -> JobExport {
        JobExport {
            target: self.target.clone(),
            key: self.key.clone(),
            secret: self.secret.clone(),
            part_size: self.part_size,
            compression: self.compression,
        }
    }
}

/// The keys in Secret `ns/name`.
pub fn credentials(kube: &Kube, ns: &str, name: &str) -> Result<Credentials, Status> {
    let secret: KubeSecret = kube
        .get(&path::<KubeSecret>(ns, Some(name)))?
        .ok_or_else(|| Status::precondition(format!("export: Secret {ns}/{name} (exportSecretName) not found")))?;
    let data = secret.data.unwrap_or_default();
    let take = |key: &str| -> Option<String> {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let missing = |key: &str| Status::precondition(format!("export: Secret {ns}/{name} has no {key}"));
    Ok(Credentials {
        access_key: take(ENV_ACCESS_KEY).ok_or_else(|| missing(ENV_ACCESS_KEY))?,
        secret_key: Secret::new(take(ENV_SECRET_KEY).ok_or_else(|| missing(ENV_SECRET_KEY))?),
        session_token: take(ENV_SESSION_TOKEN).map(Secret::new),
    })
}

/// At Create: the Secret exists and holds the keys.
pub fn check_secret(kube: &Kube, ns: &str, name: &str) -> Result<(), Status> {
    credentials(kube, ns, name).map(|_| ())
}

/// Deletes the copy (already gone is fine). A refusal or an unreachable server is an error,
/// so the CO retries the deletion and the record naming the copy is kept until then.
pub fn delete_copy(kube: &Kube, ns: &str, e: &ExportRecord) -> Result<(), Status> {
    let creds = credentials(kube, ns, &e.secret)?;
    let client = export::client(&e.target, creds);
    let url = e.target.url(&e.key);
    match client.delete_object(&e.key) {
        Ok(()) => {
            log::info!(url = url.as_str(); "S3 copy deleted");
            Ok(())
        }
        Err(err) => {
            let code = match err.kind {
                ErrorKind::Credentials => Code::PermissionDenied,
                ErrorKind::BucketMissing => Code::FailedPrecondition,
                _ => Code::Unavailable,
            };
            Err(Status::new(code, format!("deleting the S3 copy {url}: {err}")))
        }
    }
}
