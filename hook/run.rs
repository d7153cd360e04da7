//! How the injected containers run: their user and security context, their resources, and
//! the admission warnings for setups that work but risk the backup.
//!
//! Injected containers run as the Pod runs: with a Pod-level `runAsUser` they inherit it;
//! otherwise they copy `runAsUser`/`runAsGroup` from the first app container that sets them
//! (service-mesh containers skipped), so Litestream can read and write the database files the
//! app creates; `runAsNonRoot` with no user anywhere gives [`NON_ROOT_USER`].

use k8s_openapi::api::core::v1::{Capabilities, ResourceRequirements, SeccompProfile, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::annotations::Settings;
use crate::inject::Context;
use crate::pod::{Container as PodContainer, Pod};

/// Sidecars of service meshes, whose user says nothing about who writes the database files
/// (istio-proxy runs as 1337 and is exempt from the mesh's own traffic redirect).
const MESH_CONTAINERS: &[&str] = &[
    "istio-proxy",
    "istio-init",
    "istio-validation",
    "linkerd-proxy",
    "linkerd-init",
    "linkerd-network-validator",
    "kuma-sidecar",
    "kuma-init",
    "consul-dataplane",
    "consul-connect-inject-init",
];

/// The user for injected containers when the Pod must run as non-root but names no user
/// (the distroless "nonroot" user, as the original litestream-hook used).
pub const NON_ROOT_USER: i64 = 65532;

/// The securityContext of injected containers (see the module documentation).
///
/// Known to run as non-root (a non-zero `runAsUser` or `runAsNonRoot: true`), they also drop
/// every capability, so they pass the "restricted" Pod Security Standard wherever the app
/// does. As root (the image's default user) they keep the default capabilities: root
/// without CAP_DAC_OVERRIDE could not write the database files an app running as another
/// user creates. Without a Pod-level seccomp profile they use `RuntimeDefault`. Their root
/// filesystem is read-only: they write only to their volumes.
pub fn security_context(pod: &Pod) -> SecurityContext {
    let mut sc = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    };
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let mut user = pod_sc.and_then(|p| p.run_as_user);
    let mut non_root = pod_sc.and_then(|p| p.run_as_non_root) == Some(true);
    if user.is_none() {
        let first = pod
            .containers()
            .iter()
            .chain(pod.init_containers())
            .filter(|c| !MESH_CONTAINERS.contains(&c.name()))
            .filter_map(|c| c.security_context.as_ref())
            .find(|s| s.run_as_user.is_some());
        if let Some(app) = first {
            sc.run_as_user = app.run_as_user;
            sc.run_as_group = app.run_as_group;
            user = sc.run_as_user;
            if app.run_as_non_root == Some(true) {
                sc.run_as_non_root = Some(true);
                non_root = true;
            }
        }
    }
    if user.is_none() && non_root {
        // runAsNonRoot without a user: the litestream image's user is root, which the kubelet
        // refuses to start; run as a fixed non-root user (group too, unless the Pod sets one).
        sc.run_as_user = Some(NON_ROOT_USER);
        if pod_sc.and_then(|p| p.run_as_group).is_none() {
            sc.run_as_group = Some(NON_ROOT_USER);
        }
        user = sc.run_as_user;
    }
    if non_root || user.is_some_and(|u| u != 0) {
        sc.capabilities = Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        });
    }
    if pod_sc.and_then(|p| p.seccomp_profile.as_ref()).is_none() {
        sc.seccomp_profile = Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        });
    }
    sc
}

/// Whether the Pod is in the Guaranteed QoS class: every container (init containers too)
/// has CPU and memory limits, and requests equal to them where given.
fn guaranteed(pod: &Pod) -> bool {
    let all: Vec<&PodContainer> = pod.containers().iter().chain(pod.init_containers()).collect();
    !all.is_empty()
        && all.iter().all(|c| {
            let Some(r) = c.resources.as_ref() else {
                return false;
            };
            ["cpu", "memory"].iter().all(|k| {
                let limit = r.limits.as_ref().and_then(|l| l.get(*k));
                let request = r.requests.as_ref().and_then(|l| l.get(*k));
                limit.is_some() && request.is_none_or(|q| Some(q) == limit)
            })
        })
}

/// The requests and limits of injected containers. In a Guaranteed Pod they are made equal
/// (each the limit, or the request when no limit is set) so the Pod stays Guaranteed.
pub fn resources(pod: &Pod, settings: &crate::annotations::Resources) -> ResourceRequirements {
    let map = |pairs: [(&str, &Option<String>); 2]| {
        let m: std::collections::BTreeMap<String, Quantity> = pairs
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    if guaranteed(pod) {
        let cpu = settings.cpu_limit.clone().or_else(|| settings.cpu_request.clone());
        let memory = settings
            .memory_limit
            .clone()
            .or_else(|| settings.memory_request.clone());
        let both = map([("cpu", &cpu), ("memory", &memory)]);
        return ResourceRequirements {
            requests: both.clone(),
            limits: both,
            ..ResourceRequirements::default()
        };
    }
    ResourceRequirements {
        requests: map([("cpu", &settings.cpu_request), ("memory", &settings.memory_request)]),
        limits: map([("cpu", &settings.cpu_limit), ("memory", &settings.memory_limit)]),
        ..ResourceRequirements::default()
    }
}

/// Risky but valid setups, returned as admission warnings (`kubectl` prints them).
pub fn warnings(pod: &Pod, settings: &Settings, ctx: &Context<'_>) -> Vec<String> {
    let mut out = Vec::new();
    match pod.controller_kind() {
        Some("ReplicaSet") => out.push(format!(
            "litestream-hook: every Pod of this Deployment replicates to the same replica path ({}); with more than one replica, or while a rolling update surges, several Litestream processes write it at once and corrupt the backup: use replicas: 1 with strategy Recreate, or a StatefulSet",
            settings.name.as_deref().map_or("derived from the Deployment's name", |_| "set by the name annotation")
        )),
        Some("DaemonSet") => out.push(format!(
            "litestream-hook: every Pod of this DaemonSet replicates to the same replica path (and the {}/name annotation is the same on each), so the Pods on different nodes overwrite one backup: use a StatefulSet",
            ctx.prefix
        )),
        _ => {}
    }
    out
}
