//! Verification after the sync: both sides listed again by s3sync's own client and compared
//! key by key — every copyable source object must be in the destination with the same size,
//! and the same MD5 where both ETags are MD5s; the destination must hold nothing else.
//! A difference fails the run with its own exit code (`EXIT_VERIFY`) and names the first keys.

use crate::plan::{Side, NAMED};

/// What the comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Source objects compared.
    pub objects: u64,
    /// Of them, compared by MD5 too (both ETags MD5s).
    pub by_md5: u64,
    pub missing: u64,
    pub extra: u64,
    pub differing: u64,
    /// The first differing keys (relative), with what differs.
    pub first: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.differing == 0
    }

    fn note(&mut self, what: String) {
        if self.first.len() < NAMED {
            self.first.push(what);
        }
    }
}

pub fn compare(source: &Side, dest: &Side) -> Report {
    let mut r = Report::default();
    for (key, s) in &source.objects {
        r.objects += 1;
        match dest.objects.get(key) {
            None => {
                r.missing += 1;
                r.note(format!("{key} (missing in the destination)"));
            }
            Some(d) if d.size != s.size => {
                r.differing += 1;
                r.note(format!(
                    "{key} (size {} in the source, {} in the destination)",
                    s.size, d.size
                ));
            }
            Some(d) => {
                if let (Some(a), Some(b)) = (s.md5(), d.md5()) {
                    r.by_md5 += 1;
                    if a != b {
                        r.differing += 1;
                        r.note(format!("{key} (MD5 {a} in the source, {b} in the destination)"));
                    }
                }
            }
        }
    }
    for key in dest.objects.keys().filter(|k| !source.objects.contains_key(*k)) {
        r.extra += 1;
        r.note(format!("{key} (only in the destination)"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::side;
    use lifeboat::s3::Object;

    fn o(key: &str, size: u64, etag: &str) -> Object {
        Object {
            key: key.into(),
            size,
            etag: etag.into(),
        }
    }

    #[test]
    fn differences_are_counted_and_named() {
        let md5a = "0123456789abcdef0123456789abcdef";
        let md5b = "fedcba9876543210fedcba9876543210";
        let src = side(
            vec![
                o("s/a", 1, md5a),
                o("s/b", 2, md5a),
                o("s/c", 3, "x-2"),
                o("s/d", 4, md5a),
            ],
            "s/",
        );
        let dst = side(
            vec![
                o("d/a", 1, md5a),
                o("d/b", 5, md5a),
                o("d/c", 3, md5b),
                o("d/e", 1, md5a),
            ],
            "d/",
        );
        let r = compare(&src, &dst);
        assert_eq!((r.objects, r.by_md5, r.missing, r.extra, r.differing), (4, 1, 1, 1, 1));
        assert!(!r.ok());
        assert_eq!(r.first.len(), 3);
        assert!(r.first[0].starts_with("b (size 2"), "{:?}", r.first);
        let same = compare(
            &src,
            &side(
                vec![
                    o("x/a", 1, md5a),
                    o("x/b", 2, "m-3"),
                    o("x/c", 3, md5b),
                    o("x/d", 4, md5a),
                ],
                "x/",
            ),
        );
        assert!(same.ok(), "{same:?}");
        let wrong_md5 = compare(
            &src,
            &side(
                vec![o("x/a", 1, md5b), o("x/b", 2, md5a), o("x/c", 3, ""), o("x/d", 4, md5a)],
                "x/",
            ),
        );
        assert_eq!(wrong_md5.differing, 1);
    }
}
