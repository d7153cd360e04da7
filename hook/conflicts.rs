//! What a Pod must not have for the hook to inject into it: more than the hook reads, names
//! the hook adds, Windows, or app mounts that would hide a database from Litestream.

use crate::annotations::{dir_name, Denial, Settings};
use crate::inject::{whole, Context};
use crate::pod::{Bounded, Container as PodContainer, Pod, Spec, MAX_CONTAINERS, MAX_MOUNTS, MAX_VOLUMES};

/// Refuses Pods whose lists are longer than the hook reads (see `pod`).
pub fn check_bounds(spec: &Spec) -> Result<(), Denial> {
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
pub fn check_conflicts(
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
        if name == names.data_volume || name == names.config_volume || name == names.ssh_volume {
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
pub fn shadowing(at: &str, mounts: &[(String, String)], paths: &[String]) -> Option<String> {
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
pub fn quote_short(s: &str) -> String {
    format!("{:?}", crate::annotations::clip(s, 100))
}
