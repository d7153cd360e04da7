//! `hook inject -f FILE [-n NAMESPACE]`: the injection of `/mutate`, offline, for GitOps, CI
//! and debugging (as `istioctl kube-inject`).
//!
//! FILE (`-` for stdin) holds JSON: a Pod, a Deployment, ReplicaSet, StatefulSet, DaemonSet,
//! Job or CronJob (their Pod template is injected), or a `List` of them (as `kubectl get -o
//! json` writes; YAML goes through `kubectl create --dry-run=client -o json -f x.yaml`). The
//! decision is [`admission::decide`], the one `/mutate` makes, on a view of the template
//! named as the workload's Pods will be named, so replica paths and warnings match what the
//! webhook would produce; the operations are applied to the template itself. The result goes
//! to stdout as JSON; warnings and denials go to the log (stderr); a denial exits 1.

use std::io::Read;

use serde_json::Value;

use crate::admission::{self, Decision};
use crate::pod::Pod;

/// Files larger than this are refused (no Kubernetes object is near it).
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Runs `hook inject` with `args` (after `inject`); returns the exit code.
pub fn run(args: &[String], config: &admission::Config) -> i32 {
    let (file, namespace) = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            log::error!(error = e.as_str(); "usage: hook inject -f FILE|- [-n NAMESPACE]");
            return 2;
        }
    };
    let text = match read(&file) {
        Ok(t) => t,
        Err(e) => {
            log::error!(file = file.as_str(), error = e.as_str(); "cannot read the input");
            return 1;
        }
    };
    let mut doc: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            log::error!(file = file.as_str(), error:% = e; "the input is not JSON (convert YAML with kubectl create --dry-run=client -o json -f FILE)");
            return 1;
        }
    };
    let result = if doc.get("kind").and_then(Value::as_str) == Some("List") {
        match doc.get_mut("items").and_then(Value::as_array_mut) {
            Some(items) => items
                .iter_mut()
                .try_for_each(|item| inject_object(item, namespace.as_deref(), config)),
            None => Err("a List without items".into()),
        }
    } else {
        inject_object(&mut doc, namespace.as_deref(), config)
    };
    match result {
        Ok(()) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("a Value always serialises")
            );
            0
        }
        Err(e) => {
            log::error!(error = e.as_str(); "not injected");
            1
        }
    }
}

fn parse_args(args: &[String]) -> Result<(String, Option<String>), String> {
    let mut file = None;
    let mut namespace = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = || it.clone().next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "-f" | "--filename" => file = Some(value()?),
            "-n" | "--namespace" => namespace = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
        it.next();
    }
    Ok((file.ok_or("-f FILE is required")?, namespace))
}

fn read(file: &str) -> Result<String, String> {
    let mut text = String::new();
    let reader: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).map_err(|e| e.to_string())?)
    };
    reader
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    Ok(text)
}

/// Where the Pod template of `kind` is, and the controller its Pods get.
fn template_of(kind: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match kind {
        "Pod" => ("", None),
        "Deployment" | "ReplicaSet" => ("/spec/template", Some("ReplicaSet")),
        "DaemonSet" => ("/spec/template", Some("DaemonSet")),
        "StatefulSet" => ("/spec/template", Some("StatefulSet")),
        "Job" => ("/spec/template", Some("Job")),
        "CronJob" => ("/spec/jobTemplate/spec/template", Some("Job")),
        _ => return None,
    })
}

/// Injects into one object in place.
fn inject_object(object: &mut Value, namespace: Option<&str>, config: &admission::Config) -> Result<(), String> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (at, controller) = template_of(&kind).ok_or_else(|| format!("cannot inject into a {kind:?}"))?;
    let namespace = namespace
        .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str))
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string();
    let replicas = object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    if kind == "StatefulSet" && replicas > 1 {
        return Err(format!(
            "StatefulSet {name}: each of its {replicas} Pods needs its own replica path ({name}-0, {name}-1, ...), which only the webhook can give them as they are created"
        ));
    }
    let template = object
        .pointer_mut(at)
        .filter(|t| t.is_object())
        .ok_or_else(|| format!("{kind} {name}: no Pod template at {at}"))?;
    // The Pod as the webhook will see it: named as the controller names its Pods.
    let mut view = template.clone();
    if let Some(controller) = controller {
        let meta = view
            .as_object_mut()
            .expect("checked above")
            .entry("metadata")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(meta) = meta.as_object_mut() {
            if controller == "StatefulSet" {
                meta.insert("name".into(), Value::String(format!("{name}-0")));
            } else {
                meta.insert("generateName".into(), Value::String(format!("{name}-")));
            }
            meta.insert(
                "ownerReferences".into(),
                serde_json::json!([{"kind": controller, "name": name, "controller": true}]),
            );
        }
    }
    let pod: Pod = serde_json::from_value(view).map_err(|e| format!("{kind} {name}: not a Pod template: {e}"))?;
    match admission::decide(&pod, &namespace, config) {
        Decision::Skip(why) => {
            log::info!(kind = kind.as_str(), name = name.as_str(), reason = why; "left unchanged");
            Ok(())
        }
        Decision::Deny(denial) => Err(format!("{kind} {name}: {denial}")),
        Decision::Inject { injection, .. } => {
            for warning in &injection.warnings {
                log::warn!(kind = kind.as_str(), name = name.as_str(); "{warning}");
            }
            for op in injection.ops {
                let value = serde_json::from_str(op.value.get()).expect("the patch's values are JSON");
                add(template, &op.path, value).map_err(|e| format!("{kind} {name}: {e}"))?;
            }
            Ok(())
        }
    }
}

/// Applies one JSON Patch `add` (RFC 6902 §4.1) at `path` in `root`.
fn add(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = tokens.split_last().ok_or("an add at the document root")?;
    let mut target = root;
    for t in parents {
        target = match target {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("{path}: no {t:?} to add into"))?;
    }
    match target {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
            if i > a.len() {
                return Err(format!("{path}: index out of range"));
            }
            a.insert(i, value);
        }
        _ => return Err(format!("{path}: the parent is not an object or array")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adds_follow_rfc_6902() {
        let mut doc = json!({"a": {"b~/c": [1, 3]}});
        add(&mut doc, "/a/b~0~1c/1", json!(2)).unwrap();
        add(&mut doc, "/a/b~0~1c/-", json!(4)).unwrap();
        add(&mut doc, "/a/d", json!({})).unwrap();
        assert_eq!(doc, json!({"a": {"b~/c": [1, 2, 3, 4], "d": {}}}));
        assert!(add(&mut doc, "/a/b~0~1c/9", json!(0)).is_err());
        assert!(add(&mut doc, "/x/y", json!(0)).is_err());
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            args(&["-f", "x.json", "-n", "ns"]),
            Ok(("x.json".into(), Some("ns".into())))
        );
        assert!(args(&["-n", "ns"]).is_err());
        assert!(args(&["-f"]).is_err());
        assert!(args(&["--what"]).is_err());
    }
}
