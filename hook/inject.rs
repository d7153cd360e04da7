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
//! What the Pod must not have is checked first (`conflicts`); how the injected containers run
//! (user, security context, resources) and what is worth a warning is in `run`.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::annotations::{dir_name, Denial, Kind, Settings, MARKER};
use crate::litestream_config::{self, CONFIG_ENV};
use crate::pod::{Metadata, Pod, Spec};
use crate::{conflicts, replica, run};

/// Where the config volume is mounted in the injected containers.
pub const CONFIG_DIR: &str = "/etc/litestream-hook";
/// The config file Litestream reads.
pub const CONFIG_FILE: &str = "/etc/litestream-hook/litestream.yml";

/// The names of everything injected; distinct per VARIANT so two variants can coexist.
pub struct Names {
    pub data_volume: String,
    pub config_volume: String,
    /// The SSH key from the Secret (SFTP replicas only).
    pub ssh_volume: String,
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
            ssh_volume: format!("{base}-ssh"),
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

/// One JSON Patch operation; the hook only ever adds. The value is kept as the JSON text it
/// serialises to (written straight from the Kubernetes types, with no tree in between: the
/// patch is most of the work of a review).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Op {
    op: &'static str,
    pub path: String,
    pub value: Box<RawValue>,
}

fn add(path: &str, value: Box<RawValue>) -> Op {
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

pub(crate) fn whole(message: String) -> Denial {
    Denial {
        annotation: String::new(),
        message,
    }
}

/// For a Pod injected before (reinvocation, `reinvocationPolicy: IfNeeded`): the database
/// mounts for app containers a later webhook added (Istio's, Vault's...), which have none.
/// `None` when every app container has them.
pub fn top_up(pod: &Pod, settings: &Settings, ctx: &Context<'_>) -> Result<Option<Injection>, Denial> {
    let names = ctx.names;
    let ours = |name: &str| {
        name == names.config_container || name == names.replicate_container || name.starts_with(&names.restore_prefix)
    };
    let mounts = mounts(&settings.paths);
    let data_mounts: Vec<Box<RawValue>> = mounts
        .iter()
        .map(|(dir, sub)| {
            to_json(&VolumeMount {
                name: names.data_volume.clone(),
                mount_path: dir.clone(),
                sub_path: Some(sub.clone()),
                ..VolumeMount::default()
            })
        })
        .collect();
    let mut ops = Vec::new();
    for (field, list) in [
        ("containers", pod.containers()),
        ("initContainers", pod.init_containers()),
    ] {
        for (i, c) in list.iter().enumerate() {
            if ours(c.name()) {
                continue;
            }
            let has_ours = c
                .mounts()
                .iter()
                .any(|m| m.name.as_deref() == Some(names.data_volume.as_str()));
            if has_ours {
                continue;
            }
            for m in c.mounts() {
                let at = conflicts::normalize(m.mount_path.as_deref().unwrap_or(""));
                if let Some(problem) = conflicts::shadowing(&at, &mounts, &settings.paths) {
                    return Err(Denial {
                        annotation: format!("{}/path", ctx.prefix),
                        message: format!(
                            "container {} (added after the injection) mounts a volume at {}, {problem}",
                            conflicts::quote_short(c.name()),
                            conflicts::quote_short(m.mount_path.as_deref().unwrap_or(""))
                        ),
                    });
                }
            }
            append(
                &mut ops,
                c.volume_mounts.is_some(),
                &format!("/spec/{field}/{i}/volumeMounts"),
                data_mounts.clone(),
            );
        }
    }
    Ok((!ops.is_empty()).then_some(Injection {
        ops,
        warnings: Vec::new(),
    }))
}

/// The patch for `pod`, or the reason it cannot be injected: the conflicts first, then the
/// containers, then the operations that add them.
pub fn patch(pod: &Pod, settings: &Settings, ctx: &Context<'_>) -> Result<Injection, Denial> {
    let meta = pod
        .metadata
        .as_ref()
        .ok_or_else(|| whole("the Pod has no metadata".into()))?;
    let spec = pod.spec.as_ref().ok_or_else(|| whole("the Pod has no spec".into()))?;
    conflicts::check_bounds(spec)?;
    if pod.containers().is_empty() {
        return Err(whole("the Pod has no containers".into()));
    }
    let base = replica_base(pod, settings, ctx)?;
    let replicas = crate::replica_paths::resolve(settings, &base).map_err(|message| Denial {
        annotation: format!("{}/replica-path", ctx.prefix),
        message,
    })?;
    let mounts = mounts(&settings.paths);
    conflicts::check_conflicts(pod, settings, &mounts, ctx)?;
    let built = containers(pod, settings, ctx, &replicas, &mounts);
    Ok(Injection {
        ops: operations(meta, spec, pod, ctx, settings, built),
        warnings: run::warnings(pod, settings, ctx),
    })
}

/// The containers to add, and the mounts every app container gets.
struct Built {
    data_mounts: Vec<VolumeMount>,
    inits: Vec<Container>,
    sidecars: Vec<Container>,
}

fn containers(
    pod: &Pod,
    settings: &Settings,
    ctx: &Context<'_>,
    replicas: &[String],
    mounts: &[(String, String)],
) -> Built {
    let names = ctx.names;
    let config = litestream_config::build(settings, replicas).to_string();
    let security = run::security_context(pod);
    let resources = run::resources(pod, &settings.resources);
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
    if settings.target.kind() == Kind::Sftp {
        // Inside the config folder: mounted after it, and no database can be there.
        litestream_mounts.push(VolumeMount {
            name: names.ssh_volume.clone(),
            mount_path: replica::SSH_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let credentials: Vec<EnvVar> = settings
        .target
        .kind()
        .env_keys()
        .iter()
        .map(|&key| EnvVar {
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
        })
        .collect();
    let litestream = |name: String, args: &[&str]| Container {
        name,
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args.iter().map(|a| escape_expansion(a)).collect()),
        env: (!credentials.is_empty()).then(|| credentials.clone()),
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
            to_json(&"true"),
        )),
        None => ops.push(add("/metadata/annotations", to_json(&json!({ marker: "true" })))),
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
    ];
    let mut volumes: Vec<Box<RawValue>> = volumes.iter().map(to_json).collect();
    if settings.target.kind() == Kind::Sftp {
        volumes.push(to_json(&ssh_volume(&names.ssh_volume, &settings.secret)));
    }
    append(&mut ops, spec.volumes.is_some(), "/spec/volumes", volumes);
    let data_mounts: Vec<Box<RawValue>> = built.data_mounts.iter().map(to_json).collect();
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
    let inits: Vec<Box<RawValue>> = built.inits.iter().map(to_json).collect();
    if spec.init_containers.is_some() {
        for (i, c) in inits.into_iter().enumerate() {
            ops.push(add(&format!("/spec/initContainers/{i}"), c));
        }
    } else {
        ops.push(add("/spec/initContainers", array(&inits)));
    }
    append(
        &mut ops,
        true,
        "/spec/containers",
        built.sidecars.iter().map(to_json).collect(),
    );
    ops
}

/// The Secret's SSH key as a file. Mode 0444: Secret files belong to root (and the Pod's
/// fsGroup, if any), and the Litestream containers run as a non-root user; only they mount it.
fn ssh_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: replica::SSH_KEY.into(),
                path: replica::SSH_KEY_FILE.into(),
                mode: None,
            }]),
            default_mode: Some(0o444),
            optional: None,
        }),
        ..Volume::default()
    }
}

/// `v` as JSON text.
fn to_json<T: serde::Serialize>(v: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).expect("Kubernetes types always serialise")
}

/// A JSON array of `items` (each written as it is, not parsed again).
fn array(items: &[Box<RawValue>]) -> Box<RawValue> {
    to_json(&items)
}

/// Adds `items` to the array at `at`: appended one by one when it `exists`, created whole
/// when it does not.
fn append(ops: &mut Vec<Op>, exists: bool, at: &str, items: Vec<Box<RawValue>>) {
    if items.is_empty() {
        return;
    }
    if exists {
        for item in items {
            ops.push(add(&format!("{at}/-"), item));
        }
    } else {
        ops.push(add(at, array(&items)));
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
            target: crate::replica::Target::S3 {
                bucket: d.bucket.unwrap(),
                endpoint: None,
                region: None,
            },
            secret: d.secret,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            prefix: None,
            name: None,
            replica_paths: Vec::new(),
            tuning: Default::default(),
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
