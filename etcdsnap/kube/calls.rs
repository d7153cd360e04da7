//! The typed calls etcdsnap makes: GET (an object, or a text sub-resource such as pod logs),
//! LIST (all pages, as `List<T>`), POST, PUT, DELETE, and the readiness probe. Each answer
//! other than 2xx becomes a [`KubeError`] with the API's `Status` reason.

use k8s_openapi::{List, ListableResource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::transport::Method;
use super::{Kube, KubeError};

impl Kube {
    /// GET one object; `None` when it does not exist.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, KubeError> {
        let op = format!("GET {path}");
        let (status, bytes) = self.call(Method::Get, path, &[], None, &op)?;
        if status == 404 {
            return Ok(None);
        }
        self.check(&op, status, &bytes)?;
        self.decode(&op, &bytes).map(Some)
    }

    /// GET a text sub-resource (pod logs); `None` when it does not exist.
    pub fn get_text(&self, path: &str, query: &[(&str, &str)]) -> Result<Option<String>, KubeError> {
        let op = format!("GET {path}");
        let (status, bytes) = self.call(Method::Get, path, query, None, &op)?;
        if status == 404 {
            return Ok(None);
        }
        self.check(&op, status, &bytes)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// LIST a collection of `T` with a label selector (all pages, decoded as `List<T>`).
    pub fn list<T: ListableResource + DeserializeOwned>(
        &self,
        path: &str,
        label_selector: &str,
    ) -> Result<Vec<T>, KubeError> {
        let op = format!("LIST {path}?labelSelector={label_selector}");
        let mut items = Vec::new();
        let mut cont = String::new();
        // Bounded: 100 pages of 500 is far beyond what etcdsnap ever lists.
        for _ in 0..100 {
            let mut query = vec![("labelSelector", label_selector), ("limit", "500")];
            if !cont.is_empty() {
                query.push(("continue", cont.as_str()));
            }
            let (status, bytes) = self.call(Method::Get, path, &query, None, &op)?;
            self.check(&op, status, &bytes)?;
            let page: List<T> = self.decode(&op, &bytes)?;
            items.extend(page.items);
            cont = page.metadata.continue_.unwrap_or_default();
            if cont.is_empty() {
                return Ok(items);
            }
        }
        Err(KubeError {
            op,
            status: None,
            reason: "TooManyPages".into(),
            message: "more than 100 pages".into(),
        })
    }

    /// POST a new object; returns what the server stored.
    pub fn create<T: Serialize + DeserializeOwned>(&self, path: &str, object: &T) -> Result<T, KubeError> {
        self.send_object(Method::Post, path, object)
    }

    /// PUT (replace) an object; the server refuses with 409 when its resourceVersion is stale.
    pub fn replace<T: Serialize + DeserializeOwned>(&self, path: &str, object: &T) -> Result<T, KubeError> {
        self.send_object(Method::Put, path, object)
    }

    /// Sends `object` as JSON with `method` and decodes what the server stored.
    fn send_object<T: Serialize + DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        object: &T,
    ) -> Result<T, KubeError> {
        let op = format!("{} {path}", method.name());
        let body = serde_json::to_vec(object).map_err(|e| KubeError {
            op: op.clone(),
            status: None,
            reason: "Encode".into(),
            message: e.to_string(),
        })?;
        let (status, bytes) = self.call(method, path, &[], Some(("application/json", body)), &op)?;
        self.check(&op, status, &bytes)?;
        self.decode(&op, &bytes)
    }

    /// DELETE an object with background propagation (dependents are garbage-collected).
    /// Returns `false` when it was already gone.
    pub fn delete(&self, path: &str) -> Result<bool, KubeError> {
        let op = format!("DELETE {path}");
        let (status, bytes) = self.call(Method::Delete, path, &[("propagationPolicy", "Background")], None, &op)?;
        if status == 404 {
            return Ok(false);
        }
        self.check(&op, status, &bytes)?;
        Ok(true)
    }

    /// Whether the API server answers (`GET /readyz`).
    pub fn ready(&self) -> Result<(), String> {
        // One attempt: readiness reports the API server as it is now.
        let (status, body, _) = self
            .call_once(Method::Get, "/readyz", &[], None, "GET /readyz")
            .map_err(|e| e.to_string())?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!(
                "GET /readyz answered {status}: {}",
                crate::status::truncate(String::from_utf8_lossy(&body).trim(), 200)
            ))
        }
    }
}
