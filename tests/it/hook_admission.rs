//! The admission decision end to end: AdmissionReview fixtures as the API server sends them go
//! to the real `hook` over TLS; each patch is applied by an independent JSON Patch
//! implementation (python jsonpatch) and the result validated strictly against the
//! Kubernetes 1.33 Pod schema (kubernetes-validate).

use crate::support;

use crate::hook_common::*;
use crate::support::pki::Alg;
use serde_json::{json, Value};

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The patched Pod minus what the hook adds equals the original: nothing else changed.
fn strip_injected(pod: &Value, original: &Value) -> Value {
    let mut pod = pod.clone();
    pod["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(&format!("{PREFIX}/injected"));
    let ours = |v: &Value| v["name"].as_str().unwrap_or("").contains("litestream-hook");
    for field in ["volumes", "initContainers", "containers"] {
        if let Some(list) = pod["spec"][field].as_array_mut() {
            list.retain(|v| !ours(v));
            if list.is_empty() && original["spec"].get(field).is_none() {
                pod["spec"].as_object_mut().unwrap().remove(field);
                continue;
            }
            for c in list.iter_mut() {
                if let Some(m) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                    m.retain(|v| !ours(v));
                }
            }
        }
    }
    pod
}

#[test]
fn a_deployment_pod_gets_a_valid_targeted_patch() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let pod = deployment_pod(annotations(&[
        ("inject", "true"),
        ("path", "/var/lib/app/main.db,/cache/c.db"),
    ]));
    let response = hook.review(&review("6d3c6b8e-1", "shop", "CREATE", pod.clone(), false));
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["response"]["uid"], "6d3c6b8e-1");
    assert_eq!(response["response"]["allowed"], true);
    let patched = apply(&pod, &response);

    // Only add operations, and nothing but our additions changed.
    let ops: Value = {
        use std::process::Command;
        let b64 = response["response"]["patch"].as_str().unwrap();
        let out = Command::new(python())
            .args([
                "-c",
                "import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())",
                b64,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert!(ops.as_array().unwrap().iter().all(|o| o["op"] == "add"), "{ops}");
    let mut original = pod.clone();
    original["apiVersion"] = json!("v1");
    original["kind"] = json!("Pod");
    assert_eq!(strip_injected(&patched, &original), original);

    let spec = &patched["spec"];
    assert_eq!(patched["metadata"]["annotations"][format!("{PREFIX}/injected")], "true");
    assert_eq!(
        names(&spec["initContainers"]),
        [
            "litestream-hook-config",
            "litestream-hook-restore-0",
            "litestream-hook-restore-1",
            "litestream-hook-replicate"
        ]
    );
    let inits = spec["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["image"], HOOK_IMAGE);
    assert_eq!(
        inits[0]["args"],
        json!(["write-config", "/etc/litestream-hook/litestream.yml"])
    );
    assert_eq!(inits[3]["restartPolicy"], "Always");
    assert_eq!(inits[3]["image"], "litestream/litestream:0.5.17");
    assert_eq!(
        inits[1]["args"],
        json!([
            "restore",
            "-config",
            "/etc/litestream-hook/litestream.yml",
            "-no-expand-env",
            "-if-db-not-exists",
            "-if-replica-exists",
            "/var/lib/app/main.db"
        ])
    );
    // Credentials only by reference.
    let env = &inits[3]["env"];
    assert_eq!(
        env,
        &json!([
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "litestream-hook-secret", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "litestream-hook-secret", "key": "AWS_SECRET_ACCESS_KEY"}}}
        ])
    );
    // Both database folders in the app container, from one disk volume with a size limit.
    let volumes = spec["volumes"].as_array().unwrap();
    let data = volumes.iter().find(|v| v["name"] == "litestream-hook-data").unwrap();
    assert_eq!(data["emptyDir"], json!({"sizeLimit": "1Gi"}));
    let config_volume = volumes.iter().find(|v| v["name"] == "litestream-hook-config").unwrap();
    assert_eq!(config_volume["emptyDir"]["medium"], "Memory");
    let app_mounts: Vec<&str> = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        app_mounts.contains(&"/var/lib/app") && app_mounts.contains(&"/cache"),
        "{app_mounts:?}"
    );
    // Replica paths: namespace, Deployment name (hash stripped), file name.
    let config = config_of(&patched);
    let paths: Vec<&str> = config["dbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["replica"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["shop/web/main.db", "shop/web/c.db"]);
    assert_eq!(config["dbs"][0]["replica"]["bucket"], "litestream");
    assert!(config["dbs"][0]["replica"].get("endpoint").is_none());
}

#[test]
fn reinjecting_an_injected_pod_changes_nothing() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let pod = deployment_pod(annotations(&[("inject", "true")]));
    let first = hook.review(&review("u1", "ns", "CREATE", pod.clone(), false));
    let patched = apply(&pod, &first);
    let again = hook.review(&review("u2", "ns", "CREATE", patched, false));
    assert_eq!(again["response"]["uid"], "u2");
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none(), "{again}");
}

#[test]
fn a_bare_pod_without_annotations_volumes_or_init_containers_gets_them_created() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("NATIVE_SIDECAR", "false")]);
    // Minimal: only the inject annotation would make it... so the annotations map is the only one.
    let pod = json!({"metadata": {"name": "solo", "annotations": {format!("{PREFIX}/inject"): "true",
            format!("{PREFIX}/storage"): "2.5Gi", format!("{PREFIX}/endpoint"): "http://minio.storage:9000",
            format!("{PREFIX}/bucket"): "backups", format!("{PREFIX}/secret"): "s3-creds",
            format!("{PREFIX}/prefix"): "prod/eu", format!("{PREFIX}/sync-interval"): "500ms"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    let response = hook.review(&review("u", "team-a", "CREATE", pod.clone(), false));
    let patched = apply(&pod, &response);
    let spec = &patched["spec"];
    assert_eq!(names(&spec["containers"]), ["app", "litestream-hook-replicate"]);
    assert!(spec["containers"][1].get("restartPolicy").is_none());
    assert_eq!(
        names(&spec["initContainers"]),
        ["litestream-hook-config", "litestream-hook-restore-0"]
    );
    assert_eq!(spec["volumes"][0]["emptyDir"]["sizeLimit"], "2.5Gi");
    assert_eq!(spec["containers"][0]["volumeMounts"][0]["mountPath"], "/mnt");
    let replica = &config_of(&patched)["dbs"][0]["replica"];
    assert_eq!(replica["path"], "prod/eu/team-a/solo/litestream.db");
    assert_eq!(replica["endpoint"], "http://minio.storage:9000");
    assert_eq!(replica["force-path-style"], true);
    assert_eq!(replica["bucket"], "backups");
    assert_eq!(replica["sync-interval"], "500ms");
    assert_eq!(
        spec["containers"][1]["env"][1]["valueFrom"]["secretKeyRef"]["name"],
        "s3-creds"
    );

    // Per-Pod override of the cluster default.
    let mut pod2 = pod.clone();
    pod2["metadata"]["annotations"][format!("{PREFIX}/native-sidecar")] = json!("true");
    let patched2 = apply(
        &pod2,
        &hook.review(&review("u", "team-a", "CREATE", pod2.clone(), false)),
    );
    assert_eq!(names(&patched2["spec"]["containers"]), ["app"]);
    assert_eq!(patched2["spec"]["initContainers"][2]["restartPolicy"], "Always");
}

#[test]
fn app_init_containers_run_after_restore_and_see_the_databases() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "app:1", "volumeMounts": []}]);
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    let inits = patched["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(
        names(&patched["spec"]["initContainers"]),
        [
            "litestream-hook-config",
            "litestream-hook-restore-0",
            "litestream-hook-replicate",
            "migrate"
        ]
    );
    assert_eq!(inits[3]["volumeMounts"][0]["mountPath"], "/mnt");
}

#[test]
fn injected_containers_follow_the_pods_user() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    // Pod-level runAsUser: inherited, not overridden.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["securityContext"] = json!({"runAsUser": 1000, "fsGroup": 2000});
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    let sc = &patched["spec"]["initContainers"][1]["securityContext"];
    assert!(sc.get("runAsUser").is_none(), "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // Container-level only: copied from the app container.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 4242, "runAsGroup": 4343});
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    for c in patched["spec"]["initContainers"].as_array().unwrap() {
        assert_eq!(c["securityContext"]["runAsUser"], 4242, "{}", c["name"]);
        assert_eq!(c["securityContext"]["runAsGroup"], 4343);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    }
    // Unknown user (the image's, possibly root): default capabilities, so root can still write
    // files another user created; a Pod-level seccomp profile is left to apply.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["securityContext"] = json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}});
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    let sc = &patched["spec"]["initContainers"][1]["securityContext"];
    assert!(
        sc.get("capabilities").is_none() && sc.get("seccompProfile").is_none(),
        "{sc}"
    );
}

#[test]
fn variants_dry_run_and_non_pod_requests() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(
        &setup,
        &[
            ("VARIANT", "blue"),
            ("LITESTREAM_IMAGE", "mirror.example/litestream:0.5.17"),
        ],
    );
    let blue = format!("blue.{PREFIX}");
    // The base prefix is not ours in this variant.
    let plain = deployment_pod(annotations(&[("inject", "true")]));
    let r = hook.review(&review("u0", "ns", "CREATE", plain, false));
    assert!(r["response"].get("patch").is_none());
    let pod = deployment_pod(json!({format!("{blue}/inject"): "true"}));
    let r = hook.review(&review("u1", "ns", "CREATE", pod.clone(), true));
    let patched = apply(&pod, &r);
    assert_eq!(patched["metadata"]["annotations"][format!("{blue}/injected")], "true");
    assert_eq!(
        names(&patched["spec"]["initContainers"])[0],
        "blue-litestream-hook-config"
    );
    assert_eq!(
        patched["spec"]["initContainers"][1]["image"],
        "mirror.example/litestream:0.5.17"
    );
    // UPDATE, DELETE, other kinds, subresources: allowed, unchanged, uid echoed.
    for (i, op) in ["UPDATE", "DELETE", "CONNECT"].iter().enumerate() {
        let uid = format!("op-{i}");
        let r = hook.review(&review(&uid, "ns", op, pod.clone(), false));
        assert_eq!(r["response"]["uid"], uid.as_str());
        assert_eq!(r["response"]["allowed"], true);
        assert!(r["response"].get("patch").is_none());
    }
    let mut other = review(
        "k",
        "ns",
        "CREATE",
        json!({"metadata": {"name": "c"}, "data": {}}),
        false,
    );
    other["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let r = hook.review(&other);
    assert_eq!(
        (r["response"]["uid"].as_str(), r["response"]["allowed"].as_bool()),
        (Some("k"), Some(true))
    );
    assert!(r["response"].get("patch").is_none());
    let mut binding = review("b", "ns", "CREATE", pod, false);
    binding["request"]["subResource"] = json!("binding");
    assert!(hook.review(&binding)["response"].get("patch").is_none());
}

#[test]
fn bad_annotation_values_are_denied_naming_the_annotation() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let cases = [
        ("inject", "TRUE"),
        ("storage", "lots"),
        ("storage", "1Gi; rm -rf /"),
        ("bucket", "Bad_Bucket"),
        ("bucket", "b\"\n  - path: /etc/passwd"),
        ("secret", "../../etc"),
        ("path", "relative/x.db"),
        ("path", "/a/x.db\n- path: /etc/shadow"),
        ("path", "/a/x.db,/b/x.db"),
        ("endpoint", "javascript:alert(1)"),
        ("endpoint", "http://x\" && curl evil"),
        ("image", "$(curl evil)"),
        ("region", "eu west"),
        ("name", "../escape"),
        ("prefix", "a//b"),
        ("sync-interval", "1s; sleep 9"),
        ("native-sidecar", "sometimes"),
        ("not-a-key", "1"),
    ];
    let mut client = hook.client();
    for (i, (key, value)) in cases.iter().enumerate() {
        let pod = deployment_pod(annotations(&[("inject", "true"), (key, value)]));
        let body = review(&format!("d{i}"), "ns", "CREATE", pod, false).to_string();
        let reply = client.post("/mutate", "application/json", body.as_bytes());
        assert_eq!(reply.status, 200);
        let r: Value = serde_json::from_slice(&reply.body).unwrap();
        let resp = &r["response"];
        assert_eq!(resp["uid"], format!("d{i}"));
        assert_eq!(resp["allowed"], false, "{key}={value:?} was allowed");
        assert!(resp.get("patch").is_none());
        assert_eq!(resp["status"]["code"], 400);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{PREFIX}/{key}")), "{key}: {message}");
    }
    assert_eq!(
        hook.metric("hook_admissions_total{result=\"denied\"}"),
        cases.len() as f64
    );
    assert_eq!(hook.metric("hook_denials_total{annotation=\"storage\"}"), 2.0);
    assert_eq!(hook.metric("hook_denials_total{annotation=\"other\"}"), 1.0);
}

#[test]
fn hostile_and_unicode_values_that_pass_stay_inert_data() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let hostile_path = "/data/$(touch pwned)`id`'\"; {a= b} $(AWS_SECRET_ACCESS_KEY) $$ #データ.db";
    let pod = deployment_pod(json!({
        format!("{PREFIX}/inject"): "true",
        format!("{PREFIX}/path"): hostile_path,
        format!("{PREFIX}/name"): "ünïcode-is-not-ok",
    }));
    let r = hook.review(&review("h0", "ns", "CREATE", pod, false));
    assert_eq!(r["response"]["allowed"], false);
    assert!(r["response"]["status"]["message"].as_str().unwrap().contains("/name"));

    let mut pod = deployment_pod(json!({
        format!("{PREFIX}/inject"): "true",
        format!("{PREFIX}/path"): hostile_path,
        "example.com/ノート": "値 with \"quotes\" and\nnewlines",
    }));
    pod["metadata"]["labels"]["emoji"] = json!("ok");
    let r = hook.review(&review("h1", "ns", "CREATE", pod.clone(), false));
    let patched = apply(&pod, &r);
    // The value is one argv entry and one JSON string, byte for byte.
    let restore = &patched["spec"]["initContainers"][1];
    let arg = restore["args"].as_array().unwrap().last().unwrap().as_str().unwrap();
    let secret_env = |n: &str| (n == "AWS_SECRET_ACCESS_KEY").then(|| "LEAKED".to_string());
    assert_eq!(kube_expand(arg, &secret_env), hostile_path);
    let config = config_of(&patched);
    assert_eq!(config["dbs"][0]["path"], hostile_path);
    assert_eq!(config["dbs"].as_array().unwrap().len(), 1);
    assert_eq!(
        config["dbs"][0]["replica"]["path"],
        "ns/web/$(touch pwned)`id`'\"; {a= b} $(AWS_SECRET_ACCESS_KEY) $$ #データ.db"
    );
    // No container has a shell command anywhere.
    for c in patched["spec"]["initContainers"].as_array().unwrap() {
        assert!(c.get("command").is_none());
    }
    assert_eq!(
        patched["metadata"]["annotations"]["example.com/ノート"],
        "値 with \"quotes\" and\nnewlines"
    );
}

#[test]
fn conflicts_the_api_server_would_reject_are_denied_instead() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "kube-api-access-abcde", "mountPath": "/mnt"}));
    let r = hook.review(&review("c1", "ns", "CREATE", pod, false));
    assert_eq!(r["response"]["allowed"], false);
    assert!(r["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("{PREFIX}/path")));
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "litestream-hook-data", "emptyDir": {}}));
    let r = hook.review(&review("c2", "ns", "CREATE", pod, false));
    assert_eq!(r["response"]["allowed"], false);
    assert!(r["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("litestream-hook-data"));
    // No name and no generateName (and no name annotation): cannot pick a stable replica path.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["metadata"].as_object_mut().unwrap().remove("generateName");
    let r = hook.review(&review("c3", "ns", "CREATE", pod, false));
    assert_eq!(r["response"]["allowed"], false);
    assert!(r["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("{PREFIX}/name")));
}

/// The hook's peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(hook: &Hook) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hook.proc.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `bodies` at once, one connection each; returns the parsed answers.
fn concurrently(hook: &Hook, bodies: Vec<String>) -> Vec<Value> {
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (addr, config) = (hook.addr, client_config(&hook.ca_pem));
            std::thread::spawn(move || {
                let mut c = Client::try_connect(addr, &config).unwrap();
                let r = c.post("/mutate?timeout=10s", "application/json", body.as_bytes());
                assert_eq!(r.status, 200, "{}", r.text());
                serde_json::from_slice::<Value>(&r.body).unwrap()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_path_list_of_any_length_is_denied_at_once() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    // 30,000 entries (about 390 KB): quadratic checking took most of a minute.
    let long: Vec<String> = (0..30_000).map(|i| format!("/d/{i}.db")).collect();
    let pod = deployment_pod(annotations(&[("inject", "true"), ("path", &long.join(","))]));
    let body = review("long", "ns", "CREATE", pod, false).to_string();
    let started = std::time::Instant::now();
    let answers = concurrently(&hook, vec![body; 4]);
    for a in &answers {
        assert_eq!(a["response"]["allowed"], false);
        let message = a["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("at most 16") && message.contains("30000"), "{message}");
    }
    // Generous for a loaded debug build; the quadratic code needed over 50 s per request.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let r = hook.review(&review(
        "ok",
        "ns",
        "CREATE",
        deployment_pod(annotations(&[("inject", "true")])),
        false,
    ));
    assert_eq!(r["response"]["allowed"], true);
}

#[test]
fn a_pod_with_70000_containers_costs_little_memory() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let mut pod = deployment_pod(annotations(&[("inject", "true"), ("path", "/a/x.db,/b/y.db")]));
    let containers: Vec<Value> = (0..70_000)
        .map(|i| json!({"name": format!("c{i}"), "image": "i"}))
        .collect();
    pod["spec"]["containers"] = Value::Array(containers);
    let body = review("many", "ns", "CREATE", pod, false).to_string();
    assert!(body.len() > 2_000_000 && body.len() < 3_200_000, "{}", body.len());
    let before = peak_rss_kib(&hook);
    let answers = concurrently(&hook, vec![body; 4]);
    for a in &answers {
        assert_eq!(a["response"]["allowed"], false);
        let message = a["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("70000 containers"), "{message}");
    }
    // Four bodies of 2.3 MB each in flight; parsed into a tree they took 1.5 GiB.
    let grown = peak_rss_kib(&hook).saturating_sub(before);
    assert!(grown < 48 * 1024, "peak RSS grew by {grown} KiB");
}

#[test]
fn denials_echo_a_bounded_part_of_what_they_refuse() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let key = format!("{PREFIX}/{}", "k".repeat(200_000));
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["metadata"]["annotations"][&key] = json!("1");
    let r = hook.review(&review("big-key", "ns", "CREATE", pod, false));
    let resp = &r["response"];
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.len() < 1200 && message.contains("200"),
        "{} bytes",
        message.len()
    );
    let audit = resp["auditAnnotations"]["denied-annotation"].as_str().unwrap();
    assert!(audit.len() < 400, "{} bytes", audit.len());
    // A container name as long (the API server validates names only after admission).
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["containers"][0]["name"] = json!(format!("litestream-hook-restore-{}", "x".repeat(200_000)));
    let r = hook.review(&review("big-name", "ns", "CREATE", pod, false));
    let message = r["response"]["status"]["message"].as_str().unwrap();
    assert!(message.len() < 1200, "{} bytes", message.len());
    for line in hook.log_text().lines() {
        assert!(line.len() < 4096, "a log line of {} bytes", line.len());
    }
}

/// The denial message for `pod`, or None when it was allowed.
fn denial(hook: &Hook, pod: Value) -> Option<String> {
    let r = hook.review(&review("d", "ns", "CREATE", pod, false));
    (r["response"]["allowed"] == false).then(|| r["response"]["status"]["message"].as_str().unwrap().to_string())
}

fn with_mount(path: &str, mount: &str) -> Value {
    let mut pod = deployment_pod(annotations(&[("inject", "true"), ("path", path)]));
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "app-data", "emptyDir": {}}));
    pod["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "app-data", "mountPath": mount}));
    pod
}

#[test]
fn an_app_mount_that_would_hide_a_database_from_litestream_is_denied() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    for (path, mount) in [
        // Between our mount (/data) and the second database's folder.
        ("/data/a.db,/data/sub/b.db", "/data/sub"),
        ("/data/a.db,/data/sub/deeper/b.db", "/data/sub"),
        // At a database file, or its WAL.
        ("/data/a.db,/data/sub/b.db", "/data/sub/b.db"),
        ("/data/a.db", "/data/a.db-wal"),
        // Our own mount folder, however it is spelt.
        ("/mnt/x.db", "/mnt/"),
        ("/mnt/x.db", "/mnt/."),
        ("/mnt/x.db", "//mnt"),
        ("/mnt/x.db", "/./mnt"),
        ("/mnt/x.db", "/mnt/sub/.."),
        ("/data/a.db,/data/sub/b.db", "//data//sub/"),
    ] {
        let message = denial(&hook, with_mount(path, mount))
            .unwrap_or_else(|| panic!("{path} with a mount at {mount} was allowed"));
        assert!(message.contains(&format!("{PREFIX}/path")), "{message}");
    }
    // Mounts beside a database, or above our mount, hide nothing: allowed, and valid.
    for (path, mount) in [
        ("/data/a.db", "/data/cache"),
        ("/var/lib/app/a.db", "/var"),
        ("/data/a.db", "/database"),
    ] {
        let pod = with_mount(path, mount);
        let r = hook.review(&review("ok", "ns", "CREATE", pod.clone(), false));
        assert_eq!(r["response"]["allowed"], true, "{path} with {mount}: {r}");
        apply(&pod, &r);
    }
}

#[test]
fn a_database_in_or_above_the_config_folder_is_denied() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    for path in [
        "/etc/litestream-hook/x.db",
        "/etc/litestream-hook/sub/x.db",
        "/etc/x.db",
    ] {
        let pod = deployment_pod(annotations(&[("inject", "true"), ("path", path)]));
        let message = denial(&hook, pod).unwrap_or_else(|| panic!("{path} was allowed"));
        assert!(message.contains(&format!("{PREFIX}/path")), "{message}");
    }
    let pod = deployment_pod(annotations(&[
        ("inject", "true"),
        ("path", "/etc/litestream-hookish/x.db"),
    ]));
    let r = hook.review(&review("ok", "ns", "CREATE", pod.clone(), false));
    apply(&pod, &r);
}

fn injected(patched: &Value) -> Vec<Value> {
    let spec = &patched["spec"];
    spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap())
        .filter(|c| c["name"].as_str().unwrap().starts_with("litestream-hook"))
        .cloned()
        .collect()
}

#[test]
fn the_injected_user_can_start_and_is_the_apps_not_the_meshs() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    // The restricted Pod: runAsNonRoot without a user. The litestream image runs as root,
    // which the kubelet refuses: a fixed non-root user instead.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["securityContext"] = json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    for c in injected(&patched) {
        let sc = &c["securityContext"];
        assert_eq!(
            (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
            (Some(65532), Some(65532)),
            "{c}"
        );
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["readOnlyRootFilesystem"], true);
    }
    // A Pod-level group is kept.
    pod["spec"]["securityContext"]["runAsGroup"] = json!(3000);
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    assert!(injected(&patched)[0]["securityContext"].get("runAsGroup").is_none());
    // A mesh proxy's user is not the app's: istio-proxy (1337) injected first is skipped.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    let app = pod["spec"]["containers"][0].clone();
    let proxy = json!({"name": "istio-proxy", "image": "istio/proxyv2:1.24", "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}});
    pod["spec"]["containers"] = json!([proxy, app]);
    pod["spec"]["initContainers"] =
        json!([{"name": "linkerd-init", "image": "l", "securityContext": {"runAsUser": 2102}}]);
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    for c in injected(&patched) {
        assert!(c["securityContext"].get("runAsUser").is_none(), "{c}");
    }
    pod["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 1000});
    let patched = apply(&pod, &hook.review(&review("u", "ns", "CREATE", pod.clone(), false)));
    for c in injected(&patched) {
        assert_eq!(c["securityContext"]["runAsUser"], 1000, "{c}");
    }
}

#[test]
fn injected_containers_request_resources_and_keep_a_pod_guaranteed() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(
        &setup,
        &[("DEFAULT_CPU_LIMIT", "none"), ("DEFAULT_MEMORY_LIMIT", "128Mi")],
    );
    let pod = deployment_pod(annotations(&[("inject", "true")]));
    let patched = apply(&pod, &hook.review(&review("r", "ns", "CREATE", pod.clone(), false)));
    for c in injected(&patched) {
        assert_eq!(
            c["resources"],
            json!({"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}),
            "{}",
            c["name"]
        );
    }
    // Per-Pod annotations win.
    let pod = deployment_pod(annotations(&[
        ("inject", "true"),
        ("cpu-request", "250m"),
        ("memory-limit", "1Gi"),
        ("cpu-limit", "2"),
    ]));
    let patched = apply(&pod, &hook.review(&review("r", "ns", "CREATE", pod.clone(), false)));
    assert_eq!(
        injected(&patched)[1]["resources"],
        json!({"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    );
    // A Guaranteed Pod (limits = requests everywhere) stays Guaranteed.
    let mut pod = deployment_pod(annotations(&[("inject", "true"), ("cpu-request", "100m")]));
    pod["spec"]["containers"][0]["resources"] =
        json!({"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"cpu": "1", "memory": "256Mi"}});
    let patched = apply(&pod, &hook.review(&review("r", "ns", "CREATE", pod.clone(), false)));
    for c in injected(&patched) {
        assert_eq!(
            c["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}}),
            "{}",
            c["name"]
        );
    }
    // A request above its limit would be refused by the API server: denied here, named.
    let pod = deployment_pod(annotations(&[("inject", "true"), ("memory-request", "1Gi")]));
    let message = denial(&hook, pod).expect("denied");
    assert!(message.contains(&format!("{PREFIX}/memory-request")), "{message}");
}

#[test]
fn values_litestream_or_the_runtime_would_reject_are_denied() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    for (key, value) in [
        ("sync-interval", "9999999h"),
        ("sync-interval", "48h"),
        ("path", "/data/a\u{FFFE}.db"),
        ("path", "/data/a\u{FDD0}.db"),
        ("storage", "100m"),
        ("storage", "0.5"),
        ("image", "Litestream/Litestream:0.5.17"),
        ("image", "litestream/litestream:"),
        ("endpoint", "http://@"),
        ("endpoint", "http://minio:99999"),
        ("endpoint", "http://user:secret@minio:9000"),
        ("cpu-request", "0.1m"),
        ("memory-limit", "500m"),
    ] {
        let pod = deployment_pod(annotations(&[("inject", "true"), (key, value)]));
        let message = denial(&hook, pod).unwrap_or_else(|| panic!("{key}={value:?} was allowed"));
        assert!(message.contains(&format!("{PREFIX}/{key}")), "{key}: {message}");
    }
}

#[test]
fn several_writers_get_a_warning_and_windows_pods_are_denied() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    // A Deployment's Pod (ReplicaSet owner): admitted, with a warning kubectl shows.
    let pod = deployment_pod(annotations(&[("inject", "true")]));
    let r = hook.review(&review("w", "ns", "CREATE", pod, false));
    let warnings = r["response"]["warnings"].as_array().expect("warnings");
    assert!(warnings[0].as_str().unwrap().contains("replicas: 1"), "{warnings:?}");
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["metadata"]["ownerReferences"][0]["kind"] = json!("DaemonSet");
    let r = hook.review(&review("w", "ns", "CREATE", pod, false));
    assert!(
        r["response"]["warnings"][0].as_str().unwrap().contains("DaemonSet"),
        "{r}"
    );
    // A StatefulSet member has its own replica path: no warning.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["metadata"]["ownerReferences"][0]["kind"] = json!("StatefulSet");
    pod["metadata"]["name"] = json!("db-0");
    let r = hook.review(&review("w", "ns", "CREATE", pod, false));
    assert!(r["response"].get("warnings").is_none(), "{r}");
    // Windows: the Litestream image is Linux-only and the injected securityContext fields are
    // forbidden there.
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["spec"]["os"] = json!({"name": "windows"});
    let message = denial(&hook, pod).expect("denied");
    assert!(message.contains("Windows"), "{message}");
}

/// Runs `hook inject -f <object as a file> args...`; returns (exit code, stdout as JSON or Null, stderr).
fn inject_offline(object: &Value, args: &[&str]) -> (i32, Value, String) {
    let dir = support::temp_dir("inject");
    let file = dir.path().join("in.json");
    std::fs::write(&file, object.to_string()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hook"));
    support::scrub(&mut cmd);
    for var in ["VARIANT", "NATIVE_SIDECAR", "LOG_LEVEL"] {
        cmd.env_remove(var);
    }
    let out = cmd
        .env("HOOK_IMAGE", HOOK_IMAGE)
        .args(["inject", "-f", path_str(&file)])
        .args(args)
        .output()
        .unwrap();
    let stdout = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn deployment(replicas: u32, annotations: Value) -> Value {
    let pod = deployment_pod(annotations);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": pod["metadata"]["annotations"]},
                "spec": pod["spec"]}}
    })
}

#[test]
fn hook_inject_offline_makes_the_webhooks_decision() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let a = annotations(&[("inject", "true"), ("path", "/var/lib/app/main.db")]);
    let (code, out, stderr) = inject_offline(&deployment(1, a.clone()), &[]);
    assert_eq!(code, 0, "{stderr}");
    // A valid Deployment (strict 1.33 schema), its template injected as the webhook injects
    // the Deployment's Pods.
    run_python(
        "import json,sys,kubernetes_validate; kubernetes_validate.validate(json.loads(sys.argv[1]), '1.33', strict=True)",
        &[&out.to_string()],
    );
    let template = &out["spec"]["template"];
    let pod = deployment_pod(a.clone());
    let webhook = apply(&pod, &hook.review(&review("u", "shop", "CREATE", pod.clone(), false)));
    assert_eq!(template["spec"]["initContainers"], webhook["spec"]["initContainers"]);
    assert_eq!(template["spec"]["volumes"], webhook["spec"]["volumes"]);
    assert_eq!(template["spec"]["containers"], webhook["spec"]["containers"]);
    assert_eq!(config_of(template)["dbs"][0]["replica"]["path"], "shop/web/main.db");
    assert_eq!(
        template["metadata"]["annotations"][format!("{PREFIX}/injected")],
        "true"
    );
    // The same warnings as the webhook's, on stderr.
    assert!(stderr.contains("replicas: 1"), "{stderr}");
    // Injected once: the webhook leaves the Pods of the result alone, and so does inject.
    let (code, again, _) = inject_offline(&out, &[]);
    assert_eq!((code, &again), (0, &out));
    // A CronJob's template, a List, a namespace from -n.
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 1 * * *", "jobTemplate": {"spec": {"template": {
            "metadata": {"annotations": a.clone()},
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "job", "image": "job:1"}]}}}}}});
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [cron, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]});
    let (code, _, stderr) = inject_offline(&list, &["-n", "batch"]);
    assert_eq!(code, 1, "a ConfigMap has no Pod template: {stderr}");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [list["items"][0].clone()]});
    let (code, out, stderr) = inject_offline(&list, &["-n", "batch"]);
    assert_eq!(code, 0, "{stderr}");
    let template = &out["items"][0]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        config_of(template)["dbs"][0]["replica"]["path"],
        "batch/nightly/main.db"
    );
    // Denials exit 1 naming the annotation; a StatefulSet of several Pods needs the webhook.
    let bad = annotations(&[("inject", "true"), ("storage", "100m")]);
    let (code, _, stderr) = inject_offline(&deployment(1, bad), &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("{PREFIX}/storage")), "{stderr}");
    let mut sts = deployment(3, a);
    sts["kind"] = json!("StatefulSet");
    let (code, _, stderr) = inject_offline(&sts, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("own replica path"), "{stderr}");
}

#[test]
fn a_reinvocation_gives_containers_added_later_the_database_mounts() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let pod = deployment_pod(annotations(&[
        ("inject", "true"),
        ("path", "/var/lib/app/main.db,/cache/c.db"),
    ]));
    let first = apply(&pod, &hook.review(&review("u1", "ns", "CREATE", pod.clone(), false)));
    // A later webhook (vault-agent, say) adds a container and an init container; with
    // reinvocationPolicy: IfNeeded the API server calls the hook again.
    let mut later = first.clone();
    later["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "vault-agent", "image": "hashicorp/vault:1.18"}));
    later["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "vault-agent-init", "image": "hashicorp/vault:1.18", "volumeMounts": []}));
    let r = hook.review(&review("u2", "ns", "CREATE", later.clone(), false));
    let again = apply(&later, &r);
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .map(|m| m.iter().map(|m| m["mountPath"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let spec = &again["spec"];
    let agent = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vault-agent")
        .unwrap();
    assert_eq!(mounts(agent), ["/cache", "/var/lib/app"]);
    let init = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vault-agent-init")
        .unwrap();
    assert_eq!(mounts(init), ["/cache", "/var/lib/app"]);
    // Nothing else changed: the containers injected the first time are as they were.
    assert_eq!(spec["initContainers"][0], first["spec"]["initContainers"][0]);
    assert_eq!(spec["containers"][0], first["spec"]["containers"][0]);
    // Called once more, nothing is missing: no patch.
    let r = hook.review(&review("u3", "ns", "CREATE", again.clone(), false));
    assert!(r["response"].get("patch").is_none(), "{r}");
    // A later container whose own mount would hide a database: denied.
    let mut bad = first.clone();
    bad["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "x", "emptyDir": {}}));
    bad["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "image": "i", "volumeMounts": [{"name": "x", "mountPath": "/cache/"}]}));
    let message = denial(&hook, bad).expect("denied");
    assert!(message.contains("late"), "{message}");
}
