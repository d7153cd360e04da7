//! One admission request in, one response out: `AdmissionReview` (`admission.k8s.io/v1`)
//! parsing, the decision, and the response with its base64 JSON Patch.
//!
//! Anything that is not a Pod CREATE is allowed unchanged (the webhook configuration should
//! not send it, but if it does, the hook is not the place to block it). A Pod that asks for
//! injection gets a patch, or is denied with a message naming the annotation at fault.
//! A body that is not an AdmissionReview gets HTTP 400 with a plain-text reason.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::annotations::{self, clip, Defaults, Denial, MAX_KEY_BYTES};
use crate::inject::{self, Context, Injection, Names};
use crate::pod::Pod;

/// Denial messages (and the log lines and audit annotations made from them) are at most this long.
const MAX_MESSAGE: usize = 1024;

/// What the hook was configured with, shared by every request.
pub struct Config {
    /// The annotation prefix (with the VARIANT, if any).
    pub prefix: String,
    pub names: Names,
    pub defaults: Defaults,
}

/// What happened to one request, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Injected,
    /// Allowed unchanged: not asked for, already injected, or not a Pod CREATE.
    Skipped,
    /// Refused with a message naming the problem.
    Denied,
    /// The body was not a usable AdmissionReview (HTTP 400).
    Invalid,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The HTTP answer to one admission request.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub outcome: Outcome,
    /// For the log line: what was decided and why.
    pub detail: String,
    /// The request uid, when there was one.
    pub uid: String,
    /// Denied only: the annotation at fault (empty when none is).
    pub annotation: String,
}

fn invalid(detail: String) -> Answer {
    let detail = clip(&detail, MAX_MESSAGE);
    Answer {
        status: 400,
        body: format!("{detail}\n"),
        outcome: Outcome::Invalid,
        detail,
        uid: String::new(),
        annotation: String::new(),
    }
}

/// The AdmissionReview envelope (`admission.k8s.io/v1`), without the object.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    operation: Option<String>,
    namespace: Option<String>,
    object: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    group: Option<String>,
    kind: Option<String>,
}

/// The second look at the same body: only the object, as the Pod the hook reads.
#[derive(Deserialize)]
struct ObjectOnly {
    request: ObjectRequest,
}

#[derive(Deserialize)]
struct ObjectRequest {
    object: Option<Pod>,
}

/// The `response` of an AdmissionReview.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_annotations: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The AdmissionReview that carries a [`Response`], written straight to JSON.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

impl<'a> Response<'a> {
    fn allow(uid: &'a str) -> Response<'a> {
        Response {
            uid,
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
            audit_annotations: None,
            warnings: Vec::new(),
        }
    }
}

/// Decides on one AdmissionReview body.
pub fn review(body: &[u8], config: &Config) -> Answer {
    let review: Review = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("the body is not an AdmissionReview: {e}")),
    };
    if review.api_version.as_deref() != Some("admission.k8s.io/v1") || review.kind.as_deref() != Some("AdmissionReview")
    {
        return invalid("expected an AdmissionReview with apiVersion admission.k8s.io/v1".into());
    }
    let Some(request) = review.request else {
        return invalid("the AdmissionReview has no request".into());
    };
    let Some(uid) = request.uid.filter(|u| !u.is_empty()) else {
        return invalid("the AdmissionReview request has no uid".into());
    };
    let respond = |response: Response<'_>, outcome: Outcome, detail: String, annotation: &str| Answer {
        status: 200,
        body: serde_json::to_string(&Envelope {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response,
        })
        .expect("a response always serialises"),
        outcome,
        detail,
        uid: uid.clone(),
        annotation: annotation.to_string(),
    };
    let allow = |detail: &str| respond(Response::allow(&uid), Outcome::Skipped, detail.to_string(), "");

    let kind = request.kind.as_ref();
    let is_pod = kind.and_then(|k| k.kind.as_deref()) == Some("Pod")
        && kind.and_then(|k| k.group.as_deref()).unwrap_or("").is_empty()
        && request.sub_resource.as_deref().unwrap_or("").is_empty();
    if !is_pod {
        return allow("not a Pod");
    }
    if request.operation.as_deref() != Some("CREATE") {
        return allow("not a CREATE");
    }
    let deny = |message: String, annotation: &str| {
        let message = clip(&message, MAX_MESSAGE);
        let annotation = clip(annotation, MAX_KEY_BYTES);
        let mut response = Response::allow(&uid);
        response.allowed = false;
        response.status = Some(json!({"status": "Failure", "code": 400, "reason": "BadRequest", "message": message}));
        if !annotation.is_empty() {
            response.audit_annotations = Some(json!({ "denied-annotation": annotation }));
        }
        respond(response, Outcome::Denied, message.clone(), &annotation)
    };
    let pod = match request
        .object
        .is_some()
        .then(|| serde_json::from_slice::<ObjectOnly>(body))
    {
        Some(Ok(ObjectOnly {
            request: ObjectRequest { object: Some(pod) },
        })) => pod,
        Some(Err(e)) => return deny(format!("the request's object is not a Pod: {e}"), ""),
        _ => return deny("the request carries no Pod object".into(), ""),
    };
    let namespace = request
        .namespace
        .as_deref()
        .or_else(|| pod.metadata.as_ref().and_then(|m| m.namespace.as_deref()))
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    match decide(&pod, namespace, config) {
        Decision::Skip(why) => allow(why),
        Decision::Deny(denial) => deny(denial.to_string(), &denial.annotation),
        Decision::Inject { injection, databases } => {
            let patch = serde_json::to_vec(&injection.ops).expect("a patch always serialises");
            let mut response = Response::allow(&uid);
            response.patch_type = Some("JSONPatch");
            response.patch = Some(base64(&patch));
            response.warnings = injection.warnings;
            respond(response, Outcome::Injected, format!("{databases} database(s)"), "")
        }
    }
}

/// What to do with one Pod.
pub enum Decision {
    /// Leave it unchanged, for this reason.
    Skip(&'static str),
    Inject {
        injection: Injection,
        databases: usize,
    },
    Deny(Denial),
}

/// Decides on one Pod in `namespace`: the same for `/mutate` and `hook inject`.
pub fn decide(pod: &Pod, namespace: &str, config: &Config) -> Decision {
    let annotations = pod.annotations();
    let injected = annotations::is_injected(annotations, &config.prefix);
    let settings = match annotations::parse(annotations, &config.prefix, &config.defaults) {
        Ok(Some(s)) => s,
        Ok(None) if injected => return Decision::Skip("already injected"),
        Ok(None) => return Decision::Skip("injection not requested"),
        // Injected under other defaults or by hand: left as it is.
        Err(_) if injected => return Decision::Skip("already injected"),
        Err(denial) => return Decision::Deny(denial),
    };
    let ctx = Context {
        namespace,
        prefix: &config.prefix,
        names: &config.names,
        hook_image: &config.defaults.hook_image,
    };
    if injected {
        // Called again (reinvocation): only what a later webhook's containers lack.
        return match inject::top_up(pod, &settings, &ctx) {
            Ok(Some(injection)) => Decision::Inject {
                injection,
                databases: settings.paths.len(),
            },
            Ok(None) => Decision::Skip("already injected"),
            Err(denial) => Decision::Deny(denial),
        };
    }
    match inject::patch(pod, &settings, &ctx) {
        Ok(injection) => Decision::Inject {
            injection,
            databases: settings.paths.len(),
        },
        Err(denial) => Decision::Deny(denial),
    }
}

/// Standard base64 with padding (RFC 4648 §4), as the `patch` field requires.
pub fn base64(bytes: &[u8]) -> String {
    lifeboat::base64::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            prefix: annotations::BASE_PREFIX.into(),
            names: Names::new(None),
            defaults: Defaults::default(),
        }
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in [
            &b"{"[..],
            b"[]",
            b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
            b"\xff\xfe",
        ] {
            let a = review(body, &config());
            assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(a.outcome, Outcome::Invalid);
        }
    }

    #[test]
    fn other_kinds_and_operations_pass_unchanged_with_the_uid() {
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "operation": "CREATE", "object": {}}});
        let a = review(body.to_string().as_bytes(), &config());
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
    }
}
