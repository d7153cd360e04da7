//! The parts of a Pod the hook reads, typed, with every list bounded while it is parsed.
//!
//! An AdmissionReview can carry a Pod of up to the body limit with any number of containers,
//! volumes or mounts. Parsing it into a `serde_json::Value` tree costs many times its size,
//! and a patch entry per container and mount multiplies it again (70,000 small containers
//! made a 24.5 MB patch). Here only the fields the hook uses are kept; everything else is
//! skipped without being stored, and each list keeps at most its bound ([`Bounded`]) while
//! counting the rest, so one request costs little more than its body, and a Pod over a bound
//! is denied by [`crate::inject`] with the count.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use serde_json::{Map, Value};

/// App containers plus app init containers the hook injects into, at most.
pub const MAX_CONTAINERS: usize = 128;
/// Volumes of a Pod, and volume mounts of one container, at most.
pub const MAX_VOLUMES: usize = 1024;
pub const MAX_MOUNTS: usize = 1024;
/// Owner references looked at (only the controller matters).
const MAX_OWNERS: usize = 16;

/// A JSON list of which the first `N` items are kept; `total` counts them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounded<T, const N: usize> {
    pub items: Vec<T>,
    pub total: usize,
}

impl<T, const N: usize> Bounded<T, N> {
    /// Whether items were dropped.
    pub fn truncated(&self) -> bool {
        self.total > self.items.len()
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seq<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Seq<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                let mut total = 0;
                loop {
                    if items.len() < N {
                        match seq.next_element::<T>()? {
                            Some(item) => items.push(item),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    total += 1;
                }
                Ok(Bounded { items, total })
            }
        }
        deserializer.deserialize_seq(Seq::<T, N>(PhantomData))
    }
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
pub struct Pod {
    pub metadata: Option<Metadata>,
    pub spec: Option<Spec>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub annotations: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub labels: Option<Map<String, Value>>,
    pub owner_references: Option<Bounded<OwnerReference, MAX_OWNERS>>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
pub struct OwnerReference {
    pub kind: Option<String>,
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub containers: Option<Bounded<Container, MAX_CONTAINERS>>,
    pub init_containers: Option<Bounded<Container, MAX_CONTAINERS>>,
    pub volumes: Option<Bounded<Named, MAX_VOLUMES>>,
    pub security_context: Option<PodSecurityContext>,
    pub os: Option<Named>,
}

/// Anything with a name (a volume; `spec.os`).
#[derive(Clone, Debug, Default, DeriveDeserialize)]
pub struct Named {
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: Option<String>,
    pub volume_mounts: Option<Bounded<VolumeMount, MAX_MOUNTS>>,
    pub security_context: Option<SecurityContext>,
    pub resources: Option<Resources>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: Option<String>,
    pub mount_path: Option<String>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub seccomp_profile: Option<IgnoredAny>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
}

#[derive(Clone, Debug, Default, DeriveDeserialize)]
pub struct Resources {
    #[serde(default, deserialize_with = "scalar_map")]
    pub requests: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub limits: Option<Map<String, Value>>,
}

/// A JSON object whose values are kept only when they are scalars (strings, numbers, booleans,
/// null): a list or object value (which no annotation, label or quantity is) is skipped
/// without being stored and kept as `null`, so it can still be refused by name. Parsed into a
/// tree, a crafted value such as `[{"a":0},...]` costs some 80 times its size.
fn scalar_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Map<String, Value>>, D::Error> {
    struct Scalar(Value);
    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Scalar;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar(Value::String(v.to_string())))
                }
                fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                    Ok(Scalar(Value::String(v)))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                    Ok(Scalar(Value::Bool(v)))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                    Ok(Scalar(Value::from(v)))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                    Ok(Scalar(Value::from(v)))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                    Ok(Scalar(Value::from(v)))
                }
                fn visit_unit<E>(self) -> Result<Scalar, E> {
                    Ok(Scalar(Value::Null))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Scalar(Value::Null))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Scalar(Value::Null))
                }
            }
            deserializer.deserialize_any(V)
        }
    }
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Option<Map<String, Value>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(Entries)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Map::new();
            while let Some((key, Scalar(value))) = map.next_entry::<String, Scalar>()? {
                out.insert(key, value);
            }
            Ok(Some(out))
        }
    }
    deserializer.deserialize_option(Entries)
}

impl Pod {
    pub fn containers(&self) -> &[Container] {
        self.spec
            .as_ref()
            .and_then(|s| s.containers.as_ref())
            .map_or(&[], |b| &b.items)
    }

    pub fn init_containers(&self) -> &[Container] {
        self.spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map_or(&[], |b| &b.items)
    }

    pub fn annotations(&self) -> Option<&Map<String, Value>> {
        self.metadata.as_ref().and_then(|m| m.annotations.as_ref())
    }

    /// The kind of the controlling owner (`ReplicaSet`, `DaemonSet`, ...), if any.
    pub fn controller_kind(&self) -> Option<&str> {
        let owners = self.metadata.as_ref()?.owner_references.as_ref()?;
        owners
            .items
            .iter()
            .find(|o| o.controller == Some(true))
            .and_then(|o| o.kind.as_deref())
    }
}

impl Container {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn mounts(&self) -> &[VolumeMount] {
        self.volume_mounts.as_ref().map_or(&[], |b| &b.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_their_bound_and_count_the_rest() {
        let containers: Vec<Value> = (0..1000)
            .map(|i| serde_json::json!({"name": format!("c{i}")}))
            .collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "unknown": {"deep": [1, 2, 3]}},
            "spec": {"containers": containers, "nodeName": "n"}
        }))
        .unwrap();
        let list = pod.spec.as_ref().unwrap().containers.as_ref().unwrap();
        assert_eq!((list.items.len(), list.total), (MAX_CONTAINERS, 1000));
        assert!(list.truncated());
        assert_eq!(pod.containers()[127].name(), "c127");
    }

    #[test]
    fn annotation_labels_and_quantities_keep_scalars_and_skip_trees() {
        let tree: Vec<Value> = (0..10_000).map(|i| serde_json::json!({"a": i})).collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "annotations": {"x/inject": "true", "x/path": tree, "x/n": 5, "x/b": false, "x/z": null},
                "labels": {"app": "web", "deep": {"k": [1, 2]}},
            },
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": "1Gi", "x": [1]}}}]}
        }))
        .unwrap();
        let a = pod.annotations().unwrap();
        assert_eq!(a["x/inject"], "true");
        assert_eq!(a["x/path"], Value::Null, "a list value is skipped, not stored");
        assert_eq!(
            (a["x/n"].clone(), a["x/b"].clone(), a["x/z"].clone()),
            (5.into(), false.into(), Value::Null)
        );
        let labels = pod.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(
            (labels["app"].clone(), labels["deep"].clone()),
            ("web".into(), Value::Null)
        );
        let limits = pod.containers()[0].resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(
            (limits["cpu"].clone(), limits["memory"].clone()),
            (1.into(), "1Gi".into())
        );
        assert_eq!(limits["x"], Value::Null);
        let none: Pod = serde_json::from_value(serde_json::json!({"metadata": {"annotations": null}})).unwrap();
        assert!(none.annotations().is_none());
        let absent: Pod = serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap();
        assert!(absent.annotations().is_none());
    }
}
