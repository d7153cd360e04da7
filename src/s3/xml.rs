//! The few pieces of S3's XML answers the client reads: the text of an element, entities and
//! the `%`-escapes of `encoding-type=url` listings. S3 answers are flat and machine-written,
//! so a tag search is enough; a document that is not what was asked for is an error upstream.

/// The unescaped text of the first `<name>...</name>` in `xml` (`<name/>` is empty).
pub fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    if let Some(start) = xml.find(&open) {
        let after = &xml[start + open.len()..];
        let end = after.find(&format!("</{name}>"))?;
        return Some(unescape(&after[..end]));
    }
    xml.contains(&format!("<{name}/>")).then(String::new)
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") || e.starts_with("#X") => {
                u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32)
            }
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=semi]),
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    out
}

pub fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(b) => out.push(b),
                    None => return Err("a key with a bad %-escape"),
                }
                i += 3;
            }
            b'%' => return Err("a key with a bad %-escape"),
            // Form encoding, as S3 writes it (botocore decodes with unquote_plus).
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "a key that is not UTF-8")
}
