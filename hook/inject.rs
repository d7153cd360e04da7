//! The JSON Patch that adds Litestream to a Pod: targeted `add` operations only.
//!
//! The Pod is never re-serialised: every operation adds one thing at one RFC 6901 path, so
//! fields this hook does not know survive untouched. Added, in order:
//! - the marker annotation `<prefix>/injected` (a marked Pod is left alone: idempotent);
//! - a disk emptyDir for the databases (`sizeLimit` from `storage`) and a memory emptyDir for
//!   the config;
//! - the database folders mounted into every app container and app init container (one
//!   mount per folder, each a `subPath` of the one data volume);
//! - in front of the app's init containers: the config writer (the hook's own image running
//!   `write-config`), one `litestream restore -if-db-not-exists -if-replica-exists` per
//!   database, and (native sidecar mode) `litestream replicate` with `restartPolicy: Always`;
//!   otherwise `litestream replicate` is appended to the containers.
//!
//! Every `$` in injected args and env values is doubled, so Kubernetes' `$(VAR)` expansion
//! cannot splice a variable (say, the secret key) into a value taken from an annotation.
//!
//! Injected containers run as the Pod runs: with a Pod-level `runAsUser` they inherit it;
//! otherwise they copy `runAsUser`/`runAsGroup` from the first app container that sets them,
//! so Litestream can read and write the database files the app creates.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};

use crate::annotations::{dir_name, Denial, Settings, MARKER};
use crate::litestream_config::{self, CONFIG_ENV};
use crate::pod::{Bounded, Container as PodContainer, Metadata, Pod, Spec, MAX_CONTAINERS, MAX_MOUNTS, MAX_VOLUMES};

/// Where the config volume is mounted in the injected containers.
pub const CONFIG_DIR: &str = "/etc/litestream-hook";
/// The config file Litestream reads.
pub const CONFIG_FILE: &str = "/etc/litestream-hook/litestream.yml";

/// The names of everything injected; distinct per VARIANT so two variants can coexist.
pub struct Names {
    pub data_volume: String,
    pub config_volume: String,
    pub config_container: String,
    pub restore_prefix: String,
    pub replicate_container: String,
}

impl Names {
    pub fn new(variant: Option<&str>) -> Names {
        let base = match variant {
            Some(v) => format!("{v}-litestream-hook"),
            None => "litestream-hook".to_string(),
        };
        Names {
            data_volume: format!("{base}-data"),
            config_volume: format!("{base}-config"),
            config_container: format!("{base}-config"),
            restore_prefix: format!("{base}-restore-"),
            replicate_container: format!("{base}-replicate"),
        }
    }
}

/// Everything [`patch`] needs besides the Pod.
pub struct Context<'a> {
    /// The namespace of the admission request (a new Pod usually has none in its metadata).
    pub namespace: &'a str,
    /// The annotation prefix (with the VARIANT, if any).
    pub prefix: &'a str,
    pub names: &'a Names,
    /// The image running `hook write-config`.
    pub hook_image: &'a str,
}

/// Escapes Kubernetes' `$(VAR)` expansion in container args and env values: the kubelet
/// replaces `$(NAME)` with the container's variable NAME (e.g. `$(AWS_SECRET_ACCESS_KEY)`)
/// and `$$` with `$`, so every `$` is doubled to reach the program exactly as written.
pub fn escape_expansion(value: &str) -> String {
    value.replace('$', "$$")
}

/// Escapes one JSON Pointer segment (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The name replicas are stored under, stable across restarts of the same workload.
///
/// A Pod with a fixed name (bare Pods, StatefulSet members) uses it. A Pod created with
/// `generateName` uses that without its trailing `-`, and without the ReplicaSet's
/// `-<pod-template-hash>` when labelled with it, so every Pod of a Deployment shares one name.
pub fn owner_name(pod: &Pod) -> Option<String> {
    let meta = pod.metadata.as_ref()?;
    if let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name.to_string());
    }
    let generate = meta.generate_name.as_deref()?;
    let mut name = generate.trim_end_matches('-').to_string();
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .and_then(Value::as_str);
    if let Some(hash) = hash {
        if let Some(stripped) = name.strip_suffix(&format!("-{hash}")) {
            name = stripped.to_string();
        }
    }
    Some(name).filter(|n| !n.is_empty())
}

/// The folder in the bucket for this Pod's databases: `[<prefix>/]<namespace>/<name>`.
pub fn replica_base(pod: &Pod, settings: &Settings, ctx: &Context<'_>) -> Result<String, Denial> {
    let name = match &settings.name {
        Some(n) => n.clone(),
        None => owner_name(pod).ok_or_else(|| Denial {
            annotation: format!("{}/name", ctx.prefix),
            message:
                "the Pod has neither a name nor a generateName to derive its replica path from; set this annotation"
                    .into(),
        })?,
    };
    let mut base = String::new();
    if let Some(p) = &settings.prefix {
        base.push_str(p);
        base.push('/');
    }
    base.push_str(ctx.namespace);
    base.push('/');
    base.push_str(&name);
    Ok(base)
}

/// The folders to mount: each database's folder, minus folders inside another one.
/// Returns `(folder, subPath)` pairs.
pub fn mounts(paths: &[String]) -> Vec<(String, String)> {
    let mut dirs: Vec<&str> = paths.iter().map(|p| dir_name(p)).collect();
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<&str> = Vec::new();
    for dir in dirs {
        if !kept.iter().any(|k| dir.starts_with(&format!("{k}/"))) {
            kept.push(dir);
        }
    }
    kept.iter()
        .enumerate()
        .map(|(i, d)| (d.to_string(), format!("db{i}")))
        .collect()
}

/// One JSON Patch operation; the hook only ever adds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Op {
    op: &'static str,
    pub path: String,
    pub value: Value,
}

fn add(path: &str, value: Value) -> Op {
    Op {
        op: "add",
        path: path.to_string(),
        value,
    }
}

/// What [`patch`] returns for a Pod it can inject.
#[derive(Debug)]
pub struct Injection {
    pub ops: Vec<Op>,
    /// Risky but valid setups, for the AdmissionReview's `warnings`.
    pub warnings: Vec<String>,
}

fn whole(message: String) -> Denial {
    Denial {
        annotation: String::new(),
        message,
    }
}

/// The patch for `pod`, or the reason it cannot be injected: the conflicts first, then the
/// containers, then the operations that add them.
pub fn patch(pod: &Pod, settings: &Settings, ctx: &Context<'_>) -> Result<Injection, Denial> {
    let meta = pod
        .metadata
        .as_ref()
        .ok_or_else(|| whole("the Pod has no metadata".into()))?;
    let spec = pod.spec.as_ref().ok_or_else(|| whole("the Pod has no spec".into()))?;
    check_bounds(spec)?;
    if pod.containers().is_empty() {
        return Err(whole("the Pod has no containers".into()));
    }
    let base = replica_base(pod, settings, ctx)?;
    let mounts = mounts(&settings.paths);
    check_conflicts(pod, settings, &mounts, ctx)?;
    let built = containers(pod, settings, ctx, &base, &mounts);
    Ok(Injection {
        ops: operations(meta, spec, pod, ctx, settings, built),
        warnings: warnings(pod, settings, ctx),
    })
}

/// Refuses Pods whose lists are longer than the hook reads (see `pod`).
fn check_bounds(spec: &Spec) -> Result<(), Denial> {
    let count = |list: &Option<Bounded<PodContainer, MAX_CONTAINERS>>| list.as_ref().map_or(0, |b| b.total);
    let containers = count(&spec.containers) + count(&spec.init_containers);
    if containers > MAX_CONTAINERS {
        return Err(whole(format!(
            "the Pod has {containers} containers and init containers; this hook injects into at most {MAX_CONTAINERS}"
        )));
    }
    if spec.volumes.as_ref().is_some_and(Bounded::truncated) {
        return Err(whole(format!(
            "the Pod has more than {MAX_VOLUMES} volumes, more than this hook reads"
        )));
    }
    let all = spec.containers.iter().chain(spec.init_containers.iter());
    if all
        .flat_map(|b| b.items.iter())
        .any(|c| c.volume_mounts.as_ref().is_some_and(Bounded::truncated))
    {
        return Err(whole(format!(
            "a container has more than {MAX_MOUNTS} volume mounts, more than this hook reads"
        )));
    }
    Ok(())
}

/// Refuses what the API server would refuse, with a reason the user can act on.
fn check_conflicts(
    pod: &Pod,
    settings: &Settings,
    mounts: &[(String, String)],
    ctx: &Context<'_>,
) -> Result<(), Denial> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.os.as_ref())
        .and_then(|o| o.name.as_deref())
        == Some("windows")
    {
        return Err(whole(
            "the Pod runs on Windows (spec.os.name); Litestream's image is Linux-only".into(),
        ));
    }
    let names = ctx.names;
    let path_denial = |message: String| Denial {
        annotation: format!("{}/path", ctx.prefix),
        message,
    };
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.map_or(&[][..], |v| &v.items) {
        let name = volume.name.as_deref().unwrap_or("");
        if name == names.data_volume || name == names.config_volume {
            return Err(whole(format!(
                "the Pod already has a volume named {name:?}, which this hook adds"
            )));
        }
    }
    let ours = |name: &str| {
        name == names.config_container || name == names.replicate_container || name.starts_with(&names.restore_prefix)
    };
    for c in pod.containers().iter().chain(pod.init_containers()) {
        let name = c.name();
        if ours(name) {
            return Err(whole(format!(
                "the Pod already has a container named {}, which this hook adds",
                quote_short(name)
            )));
        }
        for m in c.mounts() {
            let at = normalize(m.mount_path.as_deref().unwrap_or(""));
            if let Some(problem) = shadowing(&at, mounts, &settings.paths) {
                return Err(path_denial(format!(
                    "container {} mounts a volume at {}, {problem}",
                    quote_short(name),
                    quote_short(m.mount_path.as_deref().unwrap_or(""))
                )));
            }
        }
    }
    Ok(())
}

/// A mount path as the container runtime resolves it: `//mnt`, `/./mnt`, `/mnt/.` and
/// `/mnt/` are all `/mnt`; `..` goes up (never above `/`).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `inner` is `outer` or below it (both normalised).
fn within(inner: &str, outer: &str) -> bool {
    inner == outer || outer == "/" || inner.strip_prefix(outer).is_some_and(|r| r.starts_with('/'))
}

/// Why an app mount at `at` (normalised) breaks a database, if it does: at one of our mount
/// folders (the API server would also refuse a duplicate), or between our mount and a
/// database folder, or at a database file (or its -wal/-shm), so that the app would write
/// the database into its own volume while Litestream watches ours, an empty folder.
fn shadowing(at: &str, mounts: &[(String, String)], paths: &[String]) -> Option<String> {
    if let Some((dir, _)) = mounts.iter().find(|(dir, _)| dir == at) {
        return Some(format!(
            "where this hook mounts the database folder {dir}; use another folder for the database or the volume"
        ));
    }
    for db in paths {
        let dir = dir_name(db);
        let ours = mounts
            .iter()
            .map(|(d, _)| d.as_str())
            .find(|d| within(dir, d))
            .unwrap_or(dir);
        if within(at, ours) && within(dir, at) {
            return Some(format!(
                "which hides the database folder {dir} from the volume Litestream replicates: the app would write {db} into its own volume and nothing would be backed up"
            ));
        }
        if [db.clone(), format!("{db}-wal"), format!("{db}-shm")].contains(&at.to_string()) {
            return Some(format!(
                "at the database file {db} (or its -wal/-shm): the app would write it into its own volume and nothing would be backed up"
            ));
        }
    }
    None
}

/// A name quoted for a message, at most about 100 bytes of it.
fn quote_short(s: &str) -> String {
    format!("{:?}", crate::annotations::clip(s, 100))
}

/// The containers to add, and the mounts every app container gets.
struct Built {
    data_mounts: Vec<VolumeMount>,
    inits: Vec<Container>,
    sidecars: Vec<Container>,
}

fn containers(pod: &Pod, settings: &Settings, ctx: &Context<'_>, base: &str, mounts: &[(String, String)]) -> Built {
    let names = ctx.names;
    let config = litestream_config::build(settings, base).to_string();
    let security = security_context(pod);
    let resources = resources(pod, &settings.resources);
    let data_mounts: Vec<VolumeMount> = mounts
        .iter()
        .map(|(dir, sub)| VolumeMount {
            name: names.data_volume.clone(),
            mount_path: dir.clone(),
            sub_path: Some(sub.clone()),
            ..VolumeMount::default()
        })
        .collect();
    let config_mount = VolumeMount {
        name: names.config_volume.clone(),
        mount_path: CONFIG_DIR.into(),
        ..VolumeMount::default()
    };
    let mut litestream_mounts = data_mounts.clone();
    litestream_mounts.push(config_mount.clone());
    let credentials = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].map(|key| EnvVar {
        name: key.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: settings.secret.clone(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    let litestream = |name: String, args: &[&str]| Container {
        name,
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args.iter().map(|a| escape_expansion(a)).collect()),
        env: Some(credentials.to_vec()),
        volume_mounts: Some(litestream_mounts.clone()),
        security_context: Some(security.clone()),
        resources: Some(resources.clone()),
        ..Container::default()
    };

    let mut inits: Vec<Container> = vec![Container {
        name: names.config_container.clone(),
        image: Some(ctx.hook_image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["write-config".into(), CONFIG_FILE.into()]),
        env: Some(vec![EnvVar {
            name: CONFIG_ENV.into(),
            value: Some(escape_expansion(&config)),
            ..EnvVar::default()
        }]),
        volume_mounts: Some(vec![config_mount.clone()]),
        security_context: Some(security.clone()),
        resources: Some(resources.clone()),
        ..Container::default()
    }];
    for (i, db) in settings.paths.iter().enumerate() {
        inits.push(litestream(
            format!("{}{i}", names.restore_prefix),
            &[
                "restore",
                "-config",
                CONFIG_FILE,
                "-no-expand-env",
                "-if-db-not-exists",
                "-if-replica-exists",
                db,
            ],
        ));
    }
    let mut replicate = litestream(
        names.replicate_container.clone(),
        &["replicate", "-config", CONFIG_FILE, "-no-expand-env"],
    );
    let mut sidecars = Vec::new();
    if settings.native_sidecar {
        replicate.restart_policy = Some("Always".into());
        inits.push(replicate);
    } else {
        sidecars.push(replicate);
    }
    Built {
        data_mounts,
        inits,
        sidecars,
    }
}

/// The operations, in order: marker, volumes, the database mounts in every app container
/// (before init containers shift), our init containers in front, the classic sidecar.
fn operations(
    meta: &Metadata,
    spec: &Spec,
    pod: &Pod,
    ctx: &Context<'_>,
    settings: &Settings,
    built: Built,
) -> Vec<Op> {
    let names = ctx.names;
    let mut ops = Vec::new();
    let marker = format!("{}/{MARKER}", ctx.prefix);
    match &meta.annotations {
        Some(_) => ops.push(add(
            &format!("/metadata/annotations/{}", escape(&marker)),
            json!("true"),
        )),
        None => ops.push(add("/metadata/annotations", json!({ marker: "true" }))),
    }
    let volumes = [
        Volume {
            name: names.data_volume.clone(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity(settings.storage.clone())),
            }),
            ..Volume::default()
        },
        Volume {
            name: names.config_volume.clone(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Volume::default()
        },
    ]
    .map(to_value);
    append(&mut ops, spec.volumes.is_some(), "/spec/volumes", volumes.to_vec());
    let data_mounts: Vec<Value> = built.data_mounts.into_iter().map(to_value).collect();
    for (field, list) in [
        ("containers", pod.containers()),
        ("initContainers", pod.init_containers()),
    ] {
        for (i, c) in list.iter().enumerate() {
            append(
                &mut ops,
                c.volume_mounts.is_some(),
                &format!("/spec/{field}/{i}/volumeMounts"),
                data_mounts.clone(),
            );
        }
    }
    let inits: Vec<Value> = built.inits.into_iter().map(to_value).collect();
    if spec.init_containers.is_some() {
        for (i, c) in inits.into_iter().enumerate() {
            ops.push(add(&format!("/spec/initContainers/{i}"), c));
        }
    } else {
        ops.push(add("/spec/initContainers", Value::Array(inits)));
    }
    append(
        &mut ops,
        true,
        "/spec/containers",
        built.sidecars.into_iter().map(to_value).collect(),
    );
    ops
}

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
fn security_context(pod: &Pod) -> SecurityContext {
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
fn resources(pod: &Pod, settings: &crate::annotations::Resources) -> ResourceRequirements {
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
fn warnings(pod: &Pod, settings: &Settings, ctx: &Context<'_>) -> Vec<String> {
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

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("Kubernetes types always serialise")
}

/// Adds `items` to the array at `at`: appended one by one when it `exists`, created whole
/// when it does not.
fn append(ops: &mut Vec<Op>, exists: bool, at: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if exists {
        for item in items {
            ops.push(add(&format!("{at}/-"), item));
        }
    } else {
        ops.push(add(at, Value::Array(items)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{Defaults, BASE_PREFIX};

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn op_paths(pod: &Pod, s: &Settings, ctx: &Context<'_>) -> Vec<String> {
        patch(pod, s, ctx).unwrap().ops.into_iter().map(|o| o.path).collect()
    }

    fn settings(paths: &[&str]) -> Settings {
        let d = Defaults::default();
        Settings {
            storage: d.storage,
            image: d.image,
            bucket: d.bucket,
            secret: d.secret,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            endpoint: None,
            region: None,
            prefix: None,
            name: None,
            sync_interval: None,
            native_sidecar: true,
            resources: crate::annotations::Resources::builtin(),
        }
    }

    #[test]
    fn owner_names_are_stable() {
        let rs =
            pod(json!({"metadata": {"generateName": "web-7d9f8c6b5-", "labels": {"pod-template-hash": "7d9f8c6b5"}}}));
        assert_eq!(owner_name(&rs).as_deref(), Some("web"));
        let sts = pod(json!({"metadata": {"name": "db-0", "generateName": "db-"}}));
        assert_eq!(owner_name(&sts).as_deref(), Some("db-0"));
        let job = pod(json!({"metadata": {"generateName": "migrate-"}}));
        assert_eq!(owner_name(&job).as_deref(), Some("migrate"));
        assert_eq!(owner_name(&pod(json!({"metadata": {}}))), None);
    }

    #[test]
    fn folders_inside_others_share_their_mount() {
        let m = mounts(&[
            "/data/a.db".into(),
            "/data/sub/b.db".into(),
            "/other/c.db".into(),
            "/data2/d.db".into(),
        ]);
        let dirs: Vec<&str> = m.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(dirs, ["/data", "/data2", "/other"]);
    }

    #[test]
    fn dollar_signs_survive_kubernetes_expansion() {
        assert_eq!(
            escape_expansion("/d/$(AWS_SECRET_ACCESS_KEY)$$x.db"),
            "/d/$$(AWS_SECRET_ACCESS_KEY)$$$$x.db"
        );
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }

    /// The context both patch tests run in: namespace `ns`, the base prefix, image `hook:1`.
    fn test_context(names: &Names) -> Context<'_> {
        Context {
            namespace: "ns",
            prefix: BASE_PREFIX,
            names,
            hook_image: "hook:1",
        }
    }

    #[test]
    fn existing_arrays_get_appends_and_missing_ones_are_created() {
        let names = Names::new(None);
        let ctx = test_context(&names);
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}));
        let paths = op_paths(&p, &settings(&["/mnt/x.db"]), &ctx);
        assert_eq!(
            paths,
            [
                "/metadata/annotations",
                "/spec/volumes",
                "/spec/containers/0/volumeMounts",
                "/spec/initContainers"
            ]
        );
        let p = pod(json!({"metadata": {"name": "p", "annotations": {}}, "spec": {
            "volumes": [], "initContainers": [{"name": "migrate", "volumeMounts": []}],
            "containers": [{"name": "app", "volumeMounts": []}]}}));
        let mut s = settings(&["/mnt/x.db"]);
        s.native_sidecar = false;
        let paths = op_paths(&p, &s, &ctx);
        assert_eq!(
            paths,
            [
                "/metadata/annotations/litestream-hook.kaidotio.github.io~1injected",
                "/spec/volumes/-",
                "/spec/volumes/-",
                "/spec/containers/0/volumeMounts/-",
                "/spec/initContainers/0/volumeMounts/-",
                "/spec/initContainers/0",
                "/spec/initContainers/1",
                "/spec/containers/-"
            ]
        );
    }

    #[test]
    fn a_mount_already_at_the_database_folder_is_denied() {
        let names = Names::new(None);
        let ctx = test_context(&names);
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "volumeMounts": [{"name": "v", "mountPath": "/mnt/"}]}]}}));
        let err = patch(&p, &settings(&["/mnt/x.db"]), &ctx).unwrap_err();
        assert_eq!(err.annotation, format!("{BASE_PREFIX}/path"));
    }
}
