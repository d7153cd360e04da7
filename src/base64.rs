//! Standard base64 with padding (RFC 4648 §4): AdmissionReview patches, Secret data and
//! kubeconfig `*-data` fields. k8s-openapi's `ByteString` is exactly "bytes carried as
//! base64 in JSON", so its (already compiled) codec does the work; no codec is written here.

use serde_json::Value;

/// `bytes` as standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(Value::String(s)) => s,
        // ByteString always serializes to a JSON string.
        _ => unreachable!("ByteString serializes to a string"),
    }
}

/// Standard base64 with padding (surrounding whitespace ignored) to bytes.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    serde_json::from_value::<k8s_openapi::ByteString>(Value::String(text.trim().to_string()))
        .map(|b| b.0)
        .map_err(|_| "not valid base64".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_both_ways() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert!(decode("not base64!").is_err());
    }
}
