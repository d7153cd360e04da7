//! Test-only: an in-memory Kubernetes API on 127.0.0.1 (tiny_http, plain HTTP) for the unit
//! tests of the state machine, so they run the real [`Kube`] client, record store and
//! lifecycle code against objects a table sets up.
//!
//! What it does: GET/POST/PUT/DELETE of objects by path, `resourceVersion` checks on PUT (409),
//! 409 AlreadyExists on POST, LIST of a collection with an equality label selector, pod logs
//! from [`FakeApi::set_log`], and injected failures ([`FakeApi::fail`]). What it does not: no
//! schema validation, no controllers (Job status and pods are what the test writes), no
//! garbage collection, no watch, no set-based selectors (answered 400).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::kube::Kube;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    logs: BTreeMap<String, String>,
    /// Path prefix -> HTTP status answered to every request under it.
    failures: Vec<(String, u16)>,
    next_rv: u64,
    requests: Vec<(String, String)>,
}

pub struct FakeApi {
    state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    pub url: String,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, String) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code})
            .to_string(),
    )
}

fn matches(obj: &Value, selector: &str) -> Option<bool> {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    for term in selector.split(',').filter(|t| !t.is_empty()) {
        let (k, v) = term.split_once('=')?;
        if k.contains(' ') || v.contains(' ') {
            return None;
        }
        if labels.and_then(|l| l.get(k)).and_then(Value::as_str) != Some(v) {
            return Some(false);
        }
    }
    Some(true)
}

impl State {
    fn handle(&mut self, method: &str, url: &str, body: &str) -> (u16, String) {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        self.requests.push((method.to_string(), path.to_string()));
        if let Some((_, code)) = self.failures.iter().find(|(p, _)| path.starts_with(p.as_str())) {
            return status(*code, "InternalError", "injected failure");
        }
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.replace("%2F", "/").replace("%3D", "=").replace("%2C", ","),
                )
            })
            .collect();
        match method {
            "GET" if path.ends_with("/log") => match self.logs.get(path) {
                Some(text) => (200, text.clone()),
                None => status(404, "NotFound", "no such pod"),
            },
            "GET" => {
                if let Some(obj) = self.objects.get(path) {
                    return (200, obj.to_string());
                }
                // namespaces/{ns}/{plural} is a collection, namespaces/{ns}/{plural}/{name} an object.
                let rest = path.split_once("/namespaces/").map_or("", |(_, r)| r);
                if rest.split('/').count() != 2 {
                    return status(404, "NotFound", "not found");
                }
                let prefix = format!("{path}/");
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let mut items = Vec::new();
                for (p, obj) in &self.objects {
                    if p.starts_with(&prefix) && !p[prefix.len()..].contains('/') {
                        match matches(obj, &selector) {
                            Some(true) => items.push(obj.clone()),
                            Some(false) => {}
                            None => return status(400, "BadRequest", "unsupported selector"),
                        }
                    }
                }
                // As the apiserver answers: `<Kind>List` of the items' apiVersion.
                let kind = items.first().map(|first| {
                    (
                        format!("{}List", first["kind"].as_str().unwrap_or("")),
                        first["apiVersion"].clone(),
                    )
                });
                let mut list = json!({"metadata": {}, "items": items});
                if let Some((kind, api_version)) = kind {
                    list["kind"] = json!(kind);
                    list["apiVersion"] = api_version;
                }
                (200, list.to_string())
            }
            "POST" => {
                let mut obj: Value = match serde_json::from_str(body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let key = format!("{path}/{name}");
                if self.objects.contains_key(&key) {
                    return status(409, "AlreadyExists", "already exists");
                }
                self.next_rv += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", self.next_rv));
                obj["metadata"]["resourceVersion"] = json!(self.next_rv.to_string());
                self.objects.insert(key, obj.clone());
                (201, obj.to_string())
            }
            "PUT" => {
                let mut obj: Value = match serde_json::from_str(body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
                let Some(old) = self.objects.get(path) else {
                    return status(404, "NotFound", "not found");
                };
                if obj.pointer("/metadata/resourceVersion") != old.pointer("/metadata/resourceVersion") {
                    return status(409, "Conflict", "the object has been modified");
                }
                self.next_rv += 1;
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["resourceVersion"] = json!(self.next_rv.to_string());
                self.objects.insert(path.to_string(), obj.clone());
                (200, obj.to_string())
            }
            "DELETE" => match self.objects.remove(path) {
                Some(_) => (200, json!({"kind": "Status", "status": "Success"}).to_string()),
                None => status(404, "NotFound", "not found"),
            },
            _ => status(405, "MethodNotAllowed", "method not allowed"),
        }
    }
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake API"));
        let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
        let state = Arc::new(Mutex::new(State::default()));
        let (s, st) = (Arc::clone(&server), Arc::clone(&state));
        std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                let (code, text) = st.lock().unwrap().handle(req.method().as_str(), req.url(), &body);
                let _ = req.respond(tiny_http::Response::from_string(text).with_status_code(code));
            }
        });
        FakeApi { state, server, url }
    }

    /// A client for it, as the driver's own.
    pub fn kube(&self) -> Arc<Kube> {
        Arc::new(Kube::plain_http_for_tests(&self.url))
    }

    /// Stores `obj` at `path` (its full object path).
    pub fn put(&self, path: &str, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.next_rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.next_rv.to_string());
        if obj.pointer("/metadata/uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", st.next_rv));
        }
        st.objects.insert(path.to_string(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    pub fn set_log(&self, path: &str, text: &str) {
        self.state
            .lock()
            .unwrap()
            .logs
            .insert(path.to_string(), text.to_string());
    }

    /// Every request under `prefix` is answered with `code` from now on.
    pub fn fail(&self, prefix: &str, code: u16) {
        self.state.lock().unwrap().failures.push((prefix.to_string(), code));
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }
}
