//! AWS Signature Version 4 for S3 requests: the canonical request, the string to sign, the
//! signing key and the `Authorization` header, with HMAC-SHA256 and SHA-256 from ring.
//! Only what S3 needs: header-based signing (no presigned URLs), `x-amz-content-sha256` as the
//! payload hash (the body's SHA-256, or `UNSIGNED-PAYLOAD` for streamed bodies), and the
//! session token of temporary credentials as `x-amz-security-token`.

use ring::{digest, hmac};

use super::Credentials;

/// The payload hash of a body whose integrity is carried otherwise (a signed `Content-MD5` the
/// server verifies, or TLS): the body is not hashed for the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The SHA-256 of an empty body, the payload hash of every GET, HEAD and DELETE.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One request to sign. `path` is already URI-encoded; `query` is the canonical query string
/// (sorted, encoded), empty when there is none.
pub struct Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Extra headers to sign besides host, x-amz-content-sha256 and x-amz-date (lowercase names).
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

/// The headers to send: `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` when the
/// credentials carry one, and `authorization`.
pub fn sign(req: &Request<'_>, creds: &Credentials, region: &str, unix_secs: u64) -> Vec<(&'static str, String)> {
    let (amz_date, date) = amz_dates(unix_secs);
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), req.authority.to_string()),
        ("x-amz-content-sha256".into(), req.payload_sha256.to_string()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    if let Some(token) = creds.session_token.as_ref() {
        headers.push(("x-amz-security-token".into(), token.expose().to_string()));
    }
    for (k, v) in req.headers {
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method, req.path, req.query, req.payload_sha256
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac_sha256(format!("AWS4{}", creds.secret_key.expose()).as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, to_sign.as_bytes()));
    let mut out = vec![
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", req.payload_sha256.to_string()),
    ];
    if let Some(token) = creds.session_token.as_ref() {
        out.push(("x-amz-security-token", token.expose().to_string()));
    }
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key
        ),
    ));
    out
}

/// The hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// AWS's URI encoding: unreserved characters as they are, everything else `%XX`; `/` kept
/// unless `slash` (query values, bucket names).
pub fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(YYYYMMDDTHHMMSSZ, YYYYMMDD)` for a Unix time (civil-from-days, proleptic Gregorian).
pub fn amz_dates(secs: u64) -> (String, String) {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}{m:02}{d:02}");
    (
        format!("{date}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60),
        date,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn dates_and_signing_pieces() {
        assert_eq!(amz_dates(0), ("19700101T000000Z".into(), "19700101".into()));
        assert_eq!(amz_dates(1_440_938_160).0, "20150830T123600Z");
        assert_eq!(amz_dates(951_782_400).1, "20000229");
        assert_eq!(uri_encode("a b/c~", false), "a%20b/c~");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        // AWS's documented example signing key (Signature V4 test suite: "get-vanilla").
        let mut key = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn documented_s3_get_object_example() {
        // AWS's S3 Signature V4 example "GET Object" (a Range header, us-east-1, 2013-05-24).
        let creds = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
        };
        let req = Request {
            method: "GET",
            authority: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: "",
            headers: &[("range", "bytes=0-9")],
            payload_sha256: EMPTY_SHA256,
        };
        let headers = sign(&req, &creds, "us-east-1", 1_369_353_600);
        let auth = &headers.iter().find(|(k, _)| *k == "authorization").unwrap().1;
        assert!(
            auth.ends_with("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"));
    }
}
