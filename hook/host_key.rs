//! SSH public host keys, read as Go's `x/crypto/ssh` (Litestream's SFTP client) reads them, so
//! a key the hook accepts is one Litestream can parse and its client can be offered.

use crate::values::yaml_printable;

/// The host key algorithms Go's `x/crypto/ssh` client (Litestream's) asks servers for. The
/// `sk-` (security key) types parse, but no server can present one to it; `ssh-dss` is long
/// gone from OpenSSH.
const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// A public host key as `ssh-keyscan`, `known_hosts` (without the host) or a `.pub` file has
/// it: `<algorithm> <base64> [comment]`; returns `<algorithm> <base64>`. The base64 must decode
/// to a key blob of the same algorithm, as Go checks when it parses it.
pub fn check(s: &str) -> Result<String, String> {
    const WHY: &str = "must be the server's public host key, `<algorithm> <base64>` as `ssh-keyscan HOST` prints it after the host (such as ecdsa-sha2-nistp256 AAAAE2Vj...), of the type Go's client asks for first: ECDSA, then RSA, then ed25519";
    if s.len() > 8192 || !yaml_printable(s) {
        return Err(WHY.into());
    }
    let mut parts = s.split_ascii_whitespace();
    let (Some(algorithm), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(WHY.into());
    };
    if !HOST_KEY_TYPES.contains(&algorithm) {
        let known = HOST_KEY_TYPES.join(", ");
        return Err(format!("{WHY}; the algorithm must be one of {known}"));
    }
    let bytes = lifeboat::base64::decode(blob).map_err(|_| format!("{WHY}; the key is not valid base64"))?;
    if !key_blob_ok(algorithm, &bytes) {
        return Err(format!("{WHY}; the key's data is not a {algorithm} key"));
    }
    Ok(format!("{algorithm} {blob}"))
}

/// Whether `blob` is a public key of `algorithm` as Go's `ssh.ParsePublicKey` reads it: the
/// algorithm's name, then its fields (RFC 4253 strings and mpints), and nothing after them
/// ("trailing junk"). ECDSA points are checked for their uncompressed length, not for being
/// on the curve.
fn key_blob_ok(algorithm: &str, blob: &[u8]) -> bool {
    let mut rest = blob;
    let mut string = || -> Option<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let s = rest.get(4..4usize.checked_add(len)?)?;
        rest = &rest[4 + len..];
        Some(s)
    };
    let ecdsa_point = |curve: &[u8], point: &[u8]| {
        let len = match curve {
            b"nistp256" => 65,
            b"nistp384" => 97,
            b"nistp521" => 133,
            _ => return false,
        };
        point.len() == len && point[0] == 4
    };
    let ok = (|| -> Option<bool> {
        if string()? != algorithm.as_bytes() {
            return Some(false);
        }
        Some(match algorithm {
            "ssh-ed25519" => string()?.len() == 32,
            "ssh-rsa" => {
                // Go: the exponent odd, from 3 to 24 bits; the modulus a positive number.
                let (e, n) = (string()?, string()?);
                let positive = |m: &[u8]| m.first().is_some_and(|&b| b & 0x80 == 0) && m.iter().any(|&b| b != 0);
                let digits = &e[e.iter().take_while(|&&b| b == 0).count()..];
                let value = digits.iter().fold(0u64, |v, &b| v << 8 | u64::from(b));
                positive(e) && digits.len() <= 3 && value >= 3 && value % 2 == 1 && positive(n)
            }
            _ => {
                let curve = string()?;
                let expected = algorithm.rsplit('-').next().unwrap_or_default();
                curve == expected.as_bytes() && ecdsa_point(curve, string()?)
            }
        })
    })();
    ok == Some(true) && rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys made by `ssh-keygen` (public halves only).
    const REAL_KEYS: [&str; 4] = [
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKXg7dUn7308QAKs0nOvrjcAYL+TYamQ5RE+TKKw2I9n7G5XmV3dA29ef2bPEbwrDcTLiKEaREE3/MxweyLnYcY=",
        "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBOsBAjKKBZqZYi1ZES334yQ0c3xk6UxOrNkWwbG4iCJudqceqwp8P8LO0/9heJqWi7F89AixWeBUTI3fcKSW9qnbo8+g61JAVPALLPiM0XIEadg/RAbHINp35ylM25uKtA==",
        "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAEAtqHqRB9r8pd/TQGjNPFiMsXl4rX0MHDO6dQo0IM21w7/TE7zm5GKrXWxZboPpnrypeGIOM5Q+YnY02ALMTitnwHLAlsbwZ3ltXMatj1ZkXczD2hMUEvqskwTwvqIqXt0YVWG3YvnTKMJBKSyiiCbfQG1Z9HPg42+Hqqk7VQzhy5Nvg==",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDOwnGnwpsWQzP/x+nnMHY3/uH8xZrm59zTluP/tc0DTJl8tKCYDXvOACyqJwCmAw0g7O1mfLUlJQFvHhVzRq2bG9hZXKNGm9CiEaZII5VnJJFzyNAdvxh6SDdVxpMAJbkdQMHuaa7hTspVWdcMXjHfavlaqLTZK74AhbOw3CDKIDT1oeCWdiwFyuWjWXRCeyAq82PGwz8t5THUcskzuE66zrYyrJ2P1NKBQay6Bl0d6mRxUhw93w6VxWmdwZ+ywlf9JVjTVvLzJd28SB31p3S+KREU86GAzo5brGTneOpo5oCpfUQhoYje6v6u67Qg5KlVmJC01QUh21XTkTc2tDD/",
    ];

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZOX30WY177glSjMKCtb9Bumn1CQNjV3u9PhVkxpSpw";

    /// A key blob whose fields Go's `ssh.ParsePublicKey` would not read ("short read",
    /// "trailing junk", a wrong curve or exponent) is refused, though it starts with the
    /// algorithm's name; Litestream 0.5.17 refuses each of these at start.
    #[test]
    fn host_keys_are_read_field_by_field_as_go_reads_them() {
        let b64 = |b: &[u8]| lifeboat::base64::encode(b);
        let blob = |line: &str| lifeboat::base64::decode(line.split(' ').nth(1).unwrap()).unwrap();
        for key in REAL_KEYS.iter().copied().chain([ED25519]) {
            assert_eq!(check(key).as_deref(), Ok(key));
            let (algorithm, whole) = (key.split(' ').next().unwrap(), blob(key));
            let mut junk = whole.clone();
            junk.extend_from_slice(b"xx");
            for bad in [&whole[..whole.len() - 1], &whole[..4 + algorithm.len()], &junk] {
                let line = format!("{algorithm} {}", b64(bad));
                let m = check(&line).unwrap_err();
                assert!(m.contains("not a"), "{line}: {m}");
            }
        }
        // The 256-bit key named and labelled as nistp384.
        let mut p256 = blob(REAL_KEYS[0]);
        p256[15..23].copy_from_slice(b"nistp384");
        p256[27..35].copy_from_slice(b"nistp384");
        assert_eq!(&p256[..35], &blob(REAL_KEYS[1])[..35]);
        assert!(check(&format!("ecdsa-sha2-nistp384 {}", b64(&p256))).is_err());
        // RSA with an even exponent (65536), or one over 24 bits.
        let rsa = blob(REAL_KEYS[3]);
        assert_eq!(&rsa[11..18], &[0, 0, 0, 3, 1, 0, 1]);
        let mut even = rsa.clone();
        even[17] = 0;
        assert!(check(&format!("ssh-rsa {}", b64(&even))).is_err());
        let mut wide = rsa[..11].to_vec();
        wide.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 1]);
        wide.extend_from_slice(&rsa[18..]);
        assert!(check(&format!("ssh-rsa {}", b64(&wide))).is_err());
        // A well-formed security-key (sk-) key: Go's client never asks a server for one, so it
        // could never match.
        let mut sk = Vec::new();
        for field in [&b"sk-ssh-ed25519@openssh.com"[..], &[9; 32], b"ssh:"] {
            sk.extend_from_slice(&(field.len() as u32).to_be_bytes());
            sk.extend_from_slice(field);
        }
        let m = check(&format!("sk-ssh-ed25519@openssh.com {}", b64(&sk))).unwrap_err();
        assert!(m.contains("the algorithm must be one of"), "{m}");
    }
}
