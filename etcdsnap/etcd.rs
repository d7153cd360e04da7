//! etcd cluster health over the v3 HTTPS JSON gateway, with client certificates.
//!
//! Before a snapshot is taken the cluster must be able to serve it consistently:
//! 1. `POST /v3/cluster/member/list` on the first configured endpoint that answers gives
//!    the members and their advertised client URLs;
//! 2. `POST /v3/maintenance/status` on every voting member (in parallel): reachable, no
//!    errors, and who it believes the leader is (`leader` == that member's
//!    `header.member_id` identifies the leader);
//! 3. `POST /v3/maintenance/alarm` (action GET): any active alarm (NOSPACE, CORRUPT) refuses.
//!
//! A quorum of healthy voting members is required, not all of them. Every refusal is a
//! FAILED_PRECONDITION whose message names the cluster, the counts and each failing member.
//! The member chosen to take the snapshot is the leader (the most up-to-date member).

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use crate::status::Status;

/// TLS material for an etcd cluster's client port (PEM).
#[derive(Clone)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// An etcd user (clusters with `auth enable`); the password never printed.
#[derive(Clone, Debug)]
pub struct UserAuth {
    pub username: String,
    pub password: lifeboat::secret::Secret,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { .. }")
    }
}

/// A u64 the gateway writes as a JSON string ("123"), or as a number.
fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(de::Error::custom),
        Value::Number(n) => n.as_u64().ok_or_else(|| de::Error::custom("not an unsigned integer")),
        Value::Null => Ok(0),
        other => Err(de::Error::custom(format!("expected an integer, got {other}"))),
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
pub struct Header {
    #[serde(default, deserialize_with = "u64_any", alias = "memberId")]
    pub member_id: u64,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Member {
    #[serde(rename = "ID", default, deserialize_with = "u64_any")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

#[derive(Debug, Deserialize)]
struct MemberList {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Debug, Deserialize, Clone, Default)]
pub struct MemberStatus {
    #[serde(default)]
    pub header: Header,
    #[serde(rename = "dbSize", default, deserialize_with = "u64_any")]
    pub db_size: u64,
    #[serde(default, deserialize_with = "u64_any")]
    pub leader: u64,
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AlarmMember {
    #[serde(rename = "memberID", default, deserialize_with = "u64_any")]
    member_id: u64,
    #[serde(default)]
    alarm: Value,
}

#[derive(Debug, Deserialize)]
struct AlarmList {
    #[serde(default)]
    alarms: Vec<AlarmMember>,
}

/// The outcome of a successful health check.
#[derive(Debug, Clone)]
pub struct Healthy {
    /// Client URL of the member to snapshot (the leader).
    pub member_url: String,
    pub member_name: String,
    /// The largest database size reported by a healthy member, in bytes.
    pub db_size: u64,
    pub voting_members: usize,
    pub healthy_members: usize,
    /// Client URLs of the healthy members that are not the leader.
    pub follower_urls: Vec<String>,
}

/// Talks to one etcd cluster's client endpoints.
pub struct EtcdClient {
    agent: ureq::Agent,
    /// Cluster name for messages (`namespace/cluster`).
    cluster: String,
    /// The token of [`EtcdClient::authenticate`], sent as `Authorization`.
    token: Option<lifeboat::secret::Secret>,
}

impl EtcdClient {
    pub fn new(cluster: &str, tls: &ClientTls, timeout: Duration) -> Result<EtcdClient, Status> {
        let ca = lifeboat::tls::ureq_roots(&tls.ca)
            .map_err(|e| Status::precondition(format!("etcd cluster {cluster}: client TLS ca.crt: {e}")))?;
        let client = lifeboat::tls::ureq_client_cert(&tls.cert, &tls.key)
            .map_err(|e| Status::precondition(format!("etcd cluster {cluster}: client TLS tls.crt/tls.key: {e}")))?;
        let tls = lifeboat::tls::ureq_tls()
            .root_certs(ca)
            .client_cert(Some(client))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(EtcdClient {
            agent,
            cluster: cluster.to_string(),
            token: None,
        })
    }

    /// Whether the cluster has `auth enable`d: `/v3/auth/status` on the first endpoint that
    /// answers says so, or (etcd 3.5, asked without a user) refuses with "user name not
    /// found" / "user name is empty"; `None` when no endpoint answers (the health check then
    /// says why).
    pub fn auth_enabled(&self, endpoints: &[String]) -> Option<bool> {
        #[derive(Deserialize)]
        struct AuthStatus {
            #[serde(default)]
            enabled: bool,
        }
        endpoints
            .iter()
            .find_map(|ep| match self.post::<AuthStatus>(ep, "/v3/auth/status", "{}") {
                Ok(s) => Some(s.enabled),
                Err(e) if e.starts_with("HTTP ") && e.contains("user name") => Some(true),
                Err(_) => None,
            })
    }

    /// Logs in as `auth` (`/v3/auth/authenticate` on the first endpoint that answers) and sends
    /// the token with every later request. A refused password is FAILED_PRECONDITION naming
    /// `secret`, never echoing the password.
    pub fn authenticate(&mut self, endpoints: &[String], auth: &UserAuth, secret: &str) -> Result<(), Status> {
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let body = serde_json::json!({"name": auth.username, "password": auth.password.expose()}).to_string();
        let mut tried = Vec::new();
        for ep in endpoints {
            match self.post::<Token>(ep, "/v3/auth/authenticate", &body) {
                Ok(t) if !t.token.is_empty() => {
                    self.token = Some(lifeboat::secret::Secret::new(t.token));
                    return Ok(());
                }
                Ok(_) => tried.push(format!("{ep}: no token in the answer (is auth enabled?)")),
                Err(e) if e.contains("authentication failed") => {
                    return Err(Status::precondition(format!(
                        "etcd cluster {}: user {:?} of Secret {secret} was refused: {e}",
                        self.cluster, auth.username
                    )))
                }
                Err(e) => tried.push(format!("{ep}: {e}")),
            }
        }
        Err(Status::precondition(format!(
            "etcd cluster {}: cannot log in as user {:?} of Secret {secret}: {}",
            self.cluster,
            auth.username,
            tried.join("; ")
        )))
    }

    /// `POST {endpoint}{path}` with a JSON body; the parsed answer or a one-line reason.
    fn post<T: serde::de::DeserializeOwned>(&self, endpoint: &str, path: &str, body: &str) -> Result<T, String> {
        let url = format!("{}{path}", endpoint.trim_end_matches('/'));
        let mut req = self.agent.post(&url).content_type("application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", t.expose());
        }
        let mut resp = req.send(body).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .map_err(|e| format!("reading the answer: {e}"))?;
        if status != 200 {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .or_else(|| v.get("error"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| crate::status::truncate(text.trim(), 200));
            return Err(format!("HTTP {status}: {msg}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))
    }

    /// Checks quorum, leader and alarms; the member to snapshot, or why not.
    pub fn check(&self, endpoints: &[String]) -> Result<Healthy, Status> {
        let cluster = &self.cluster;
        if endpoints.is_empty() {
            return Err(Status::precondition(format!(
                "etcd cluster {cluster}: no client endpoints"
            )));
        }
        // 1. Membership from the first endpoint that answers.
        let mut tried = Vec::new();
        let mut members = None;
        for ep in endpoints {
            match self.post::<MemberList>(ep, "/v3/cluster/member/list", "{}") {
                Ok(list) => {
                    members = Some(list.members);
                    break;
                }
                Err(e) => tried.push(format!("{ep}: {e}")),
            }
        }
        let Some(members) = members else {
            return Err(Status::precondition(format!(
                "etcd cluster {cluster} is unavailable: no endpoint answered the member list ({})",
                tried.join("; ")
            )));
        };
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        if voters.is_empty() {
            return Err(Status::precondition(format!(
                "etcd cluster {cluster}: member list has no voting members"
            )));
        }
        // 2. Status of every voter, in parallel (a dead member costs one timeout, not n).
        let results: Vec<(&Member, Result<MemberStatus, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = voters
                .iter()
                .map(|m| {
                    let m = *m;
                    s.spawn(move || {
                        let r = match m.client_urls.first() {
                            None => Err("has not started (no client URL)".to_string()),
                            Some(url) => self.post::<MemberStatus>(url, "/v3/maintenance/status", "{}"),
                        };
                        (m, r)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("status thread does not panic"))
                .collect()
        });
        let mut healthy: Vec<(&Member, MemberStatus)> = Vec::new();
        let mut failures = Vec::new();
        let mut reachable = 0;
        for (m, r) in results {
            let label = member_label(m);
            match r {
                Ok(st) => {
                    reachable += 1;
                    // Active alarms are listed in every member's errors; they are judged below
                    // from the alarm list, and do not make a member unhealthy for quorum.
                    let errors: Vec<&String> = st.errors.iter().filter(|e| !e.contains("alarm:")).collect();
                    if errors.is_empty() {
                        healthy.push((m, st));
                    } else {
                        let list: Vec<&str> = errors.iter().map(|e| e.as_str()).collect();
                        failures.push(format!("{label}: {}", list.join(", ")));
                    }
                }
                Err(e) => failures.push(format!("{label}: {e}")),
            }
        }
        let quorum = voters.len() / 2 + 1;
        if healthy.len() < quorum {
            return Err(Status::precondition(format!(
                "etcd cluster {cluster} has lost quorum: {} of {} voting members healthy ({reachable} reachable), {quorum} needed; {}",
                healthy.len(),
                voters.len(),
                failures.join("; ")
            )));
        }
        // 3. A leader that all healthy members agree on, and that is a member.
        let leader = healthy.iter().map(|(_, st)| st.leader).find(|l| *l != 0);
        let Some(leader) = leader else {
            return Err(Status::precondition(format!(
                "etcd cluster {cluster} has no leader (reported by {} healthy members)",
                healthy.len()
            )));
        };
        let Some((leader_member, leader_status)) = healthy
            .iter()
            .find(|(m, st)| st.header.member_id == leader || m.id == leader)
        else {
            let known = members.iter().any(|m| m.id == leader);
            return Err(Status::precondition(if known {
                format!(
                    "etcd cluster {cluster}: the leader {leader:x} is not reachable; {}",
                    failures.join("; ")
                )
            } else {
                format!("etcd cluster {cluster} has no leader: members name {leader:x}, which is not a member")
            }));
        };
        let leader_url = leader_member.client_urls[0].clone();
        // 4. No active alarm (NOSPACE makes the cluster read-only; CORRUPT means bad data).
        let alarms: AlarmList = self
            .post(&leader_url, "/v3/maintenance/alarm", r#"{"action":"GET"}"#)
            .map_err(|e| {
                Status::precondition(format!("etcd cluster {cluster}: listing alarms on {leader_url}: {e}"))
            })?;
        if !alarms.alarms.is_empty() {
            let list: Vec<String> = alarms
                .alarms
                .iter()
                .map(|a| {
                    let name = match &a.alarm {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => alarm_name(n.as_u64().unwrap_or(0)).to_string(),
                        _ => "NONE".to_string(),
                    };
                    let who = members
                        .iter()
                        .find(|m| m.id == a.member_id)
                        .map(member_label)
                        .unwrap_or_else(|| format!("{:x}", a.member_id));
                    format!("{name} on {who}")
                })
                .collect();
            return Err(Status::precondition(format!(
                "etcd cluster {cluster} has an active alarm: {}; snapshots are refused until it is resolved and disarmed",
                list.join(", ")
            )));
        }
        let db_size = healthy
            .iter()
            .map(|(_, st)| st.db_size)
            .max()
            .unwrap_or(leader_status.db_size);
        let follower_urls = healthy
            .iter()
            .filter(|(m, st)| m.id != leader && st.header.member_id != leader)
            .filter_map(|(m, _)| m.client_urls.first().cloned())
            .collect();
        Ok(Healthy {
            follower_urls,
            member_url: leader_url,
            member_name: leader_member.name.clone(),
            db_size,
            voting_members: voters.len(),
            healthy_members: healthy.len(),
        })
    }
}

fn member_label(m: &Member) -> String {
    let name = if m.name.is_empty() {
        "(unstarted)"
    } else {
        m.name.as_str()
    };
    match m.client_urls.first() {
        Some(u) => format!("member {name} ({u})"),
        None => format!("member {name}"),
    }
}

fn alarm_name(n: u64) -> &'static str {
    match n {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_answers() {
        // Shapes as etcd 3.5's gateway writes them (64-bit integers as strings).
        let list: MemberList = serde_json::from_str(
            r#"{"header":{"cluster_id":"3249","member_id":"331","raft_term":"2"},
               "members":[{"ID":"331","name":"m0","peerURLs":["https://127.0.0.1:2"],"clientURLs":["https://127.0.0.1:1"]},
                          {"ID":"7","peerURLs":["https://127.0.0.1:3"],"isLearner":true}]}"#,
        )
        .unwrap();
        assert_eq!(list.members[0].id, 331);
        assert_eq!(list.members[0].client_urls, ["https://127.0.0.1:1"]);
        assert!(list.members[1].is_learner && list.members[1].client_urls.is_empty());
        let st: MemberStatus = serde_json::from_str(
            r#"{"header":{"cluster_id":"3249","member_id":"331","revision":"1","raft_term":"2"},"version":"3.5.1",
                "dbSize":"20480","leader":"331","raftIndex":"4","raftTerm":"2","raftAppliedIndex":"4","dbSizeInUse":"16384"}"#,
        )
        .unwrap();
        assert_eq!((st.header.member_id, st.leader, st.db_size), (331, 331, 20480));
        let alarms: AlarmList =
            serde_json::from_str(r#"{"header":{},"alarms":[{"memberID":"331","alarm":"NOSPACE"}]}"#).unwrap();
        assert_eq!(alarms.alarms[0].member_id, 331);
        let none: AlarmList = serde_json::from_str(r#"{"header":{}}"#).unwrap();
        assert!(none.alarms.is_empty());
    }

    #[test]
    fn unreachable_endpoints_are_refused_with_each_reason() {
        let pki = test_tls();
        let client = EtcdClient::new("ns/main", &pki, Duration::from_secs(2)).unwrap();
        // Port 1 on loopback: connection refused, fast.
        let err = client.check(&["https://127.0.0.1:1".to_string()]).unwrap_err();
        assert_eq!(err.code, crate::status::Code::FailedPrecondition);
        assert!(
            err.message.contains("etcd cluster ns/main is unavailable"),
            "{}",
            err.message
        );
        assert!(err.message.contains("https://127.0.0.1:1"), "{}", err.message);
    }

    #[test]
    fn bad_tls_material_names_the_file() {
        let mut pki = test_tls();
        // A certificate where the key should be: refused, naming the Secret key, echoing nothing.
        pki.key = pki.cert.clone();
        let err = EtcdClient::new("ns/main", &pki, Duration::from_secs(1)).err().unwrap();
        assert!(err.message.contains("tls.key"), "{}", err.message);
        assert!(!err.message.contains("BEGIN"), "{}", err.message);
    }

    fn test_tls() -> ClientTls {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        ClientTls {
            ca: ca.cert.pem().into_bytes(),
            cert: ca.cert.pem().into_bytes(),
            key: ca.signing_key.serialize_pem().into_bytes(),
        }
    }
}
