//! The YAML a kubeconfig is written in, read into a `serde_json::Value`: JSON, block style
//! (mappings, `- ` sequences, as kubectl, kubeadm and client-go write), and flow collections
//! (`[...]`, `{...}`, over one or several lines, as PyYAML and people write), with plain,
//! single- and double-quoted scalars and comments. Scalars stay strings (a kubeconfig's fields
//! that etcdsnap reads are all strings). What YAML has beyond that (anchors and aliases, tags,
//! block scalars `|` and `>`, several documents) is refused with an error that names it and the
//! line. Errors name the line only, never its text: a kubeconfig line may hold a token.

use serde_json::{Map, Value};

/// One significant line: indentation, content (comments removed), 1-based line number.
struct Line {
    indent: usize,
    text: String,
    number: usize,
}

/// Parses a kubeconfig document.
pub fn parse(text: &str) -> Result<Value, String> {
    let start = text.trim_start();
    // JSON (what `kubectl config view -o json` writes); `{apiVersion: v1, ...}` is YAML flow.
    if start.starts_with('{') && start[1..].trim_start().starts_with('"') {
        return serde_json::from_str(text)
            .map_err(|e| format!("invalid JSON kubeconfig at line {} column {}", e.line(), e.column()));
    }
    let mut lines = significant_lines(text)?;
    if lines.is_empty() {
        return Err("empty kubeconfig".into());
    }
    if lines[0].text.starts_with(['[', '{']) {
        if lines.len() > 1 {
            return Err(format!(
                "line {}: text after the document's flow collection",
                lines[1].number
            ));
        }
        return scalar_or_flow(&lines[0].text).map_err(|e| format!("line {}: {e}", lines[0].number));
    }
    let mut i = 0;
    let indent = lines[0].indent;
    let value = block(&mut lines, &mut i, indent)?;
    if i != lines.len() {
        return Err(format!("line {}: unexpected indentation", lines[i].number));
    }
    Ok(value)
}

/// Splits the text into lines without comments and blank lines; a flow collection that spans
/// several lines is joined into the line that opens it.
fn significant_lines(text: &str) -> Result<Vec<Line>, String> {
    let mut lines: Vec<Line> = Vec::new();
    let mut open: Option<usize> = None; // index in `lines` of an unclosed flow collection
    let mut documents = 0;
    for (n, raw) in text.lines().enumerate() {
        let number = n + 1;
        let content = strip_comment(raw);
        if let Some(j) = open {
            let joined = &mut lines[j].text;
            joined.push(' ');
            joined.push_str(content.trim());
            if flow_closed(joined) {
                open = None;
            }
            continue;
        }
        let trimmed = content.trim_end();
        let body = trimmed.trim_start();
        if body.is_empty() {
            continue;
        }
        if body == "---" || body.starts_with("--- ") {
            documents += 1;
            if documents > 1 || !lines.is_empty() {
                return Err(format!(
                    "line {number}: a second YAML document (a kubeconfig is one document)"
                ));
            }
            continue;
        }
        if body == "..." {
            continue;
        }
        if raw.trim_start_matches(' ').starts_with('\t') {
            return Err(format!("line {number}: tabs are not allowed for YAML indentation"));
        }
        let line = Line {
            indent: trimmed.len() - body.len(),
            text: body.to_string(),
            number,
        };
        if !flow_closed(&line.text) {
            open = Some(lines.len());
        }
        lines.push(line);
    }
    if let Some(j) = open {
        return Err(format!(
            "line {}: unclosed flow collection (`[` or `{{`)",
            lines[j].number
        ));
    }
    Ok(lines)
}

/// The line without its comment (` #` or a leading `#` outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => {
                // '' inside single quotes is an escaped quote.
                if q == '\'' && chars.peek().map(|(_, n)| *n) == Some('\'') {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            Some(_) => {}
            None if (c == '"' || c == '\'') && starts_scalar(prev) => quote = Some(c),
            None if c == '#' && (i == 0 || prev.is_whitespace()) => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// Whether a quote after `prev` opens a quoted scalar (not an apostrophe inside a plain one).
fn starts_scalar(prev: char) -> bool {
    prev.is_whitespace() || matches!(prev, ':' | '-' | '[' | '{' | ',')
}

/// Whether every `[`/`{` of a line that starts a flow collection is closed (quote-aware).
fn flow_closed(text: &str) -> bool {
    let mut v = text;
    if let Some(rest) = v.strip_prefix('-').filter(|r| r.is_empty() || r.starts_with(' ')) {
        v = rest.trim_start();
    }
    let value = match split_key(v) {
        Some((_, rest)) => rest,
        None => v,
    };
    if !(value.starts_with('[') || value.starts_with('{')) {
        return true;
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    depth <= 0 && quote.is_none()
}

fn is_seq_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

fn block(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
    if is_seq_item(&lines[*i].text) {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && is_seq_item(&lines[*i].text) {
            let rest = lines[*i].text[1..].to_string();
            let inner = rest.trim_start();
            let number = lines[*i].number;
            if inner.is_empty() {
                *i += 1;
                if *i < lines.len() && lines[*i].indent > indent {
                    let child = lines[*i].indent;
                    items.push(block(lines, i, child)?);
                } else {
                    items.push(Value::Null);
                }
            } else if split_key(inner).is_some() {
                // "- key: value" starts a mapping at the column of "key".
                let col = indent + 1 + (rest.len() - inner.len());
                lines[*i].indent = col;
                lines[*i].text = inner.to_string();
                items.push(block(lines, i, col)?);
            } else {
                items.push(scalar_or_flow(inner).map_err(|e| format!("line {number}: {e}"))?);
                *i += 1;
            }
        }
        return Ok(Value::Array(items));
    }
    let mut map = Map::new();
    while *i < lines.len() && lines[*i].indent == indent && !is_seq_item(&lines[*i].text) {
        let number = lines[*i].number;
        let line = lines[*i].text.clone();
        let (key, rest) = split_key(&line).ok_or_else(|| format!("line {number}: expected `key: value`"))?;
        *i += 1;
        let value = if rest.is_empty() {
            if *i < lines.len() && lines[*i].indent > indent {
                let child = lines[*i].indent;
                block(lines, i, child)?
            } else if *i < lines.len() && lines[*i].indent == indent && is_seq_item(&lines[*i].text) {
                block(lines, i, indent)?
            } else {
                Value::Null
            }
        } else {
            scalar_or_flow(rest).map_err(|e| format!("line {number}: {e}"))?
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(format!("line {number}: key {key:?} appears twice in one mapping"));
        }
    }
    Ok(Value::Object(map))
}

/// Splits `key: rest` (key plain or quoted); `None` when the line is not a mapping entry.
fn split_key(line: &str) -> Option<(String, &str)> {
    if let Some(q) = line.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = line[1..].find(q)? + 1;
        let after = line[end + 1..].strip_prefix(':')?;
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        return Some((line[1..end].to_string(), after.trim()));
    }
    if line.starts_with(['[', '{']) {
        return None;
    }
    let pos = line.find(": ").or_else(|| line.strip_suffix(':').map(|s| s.len()))?;
    Some((line[..pos].trim().to_string(), line[pos + 1..].trim()))
}

/// A value on one line: a flow collection or a scalar.
fn scalar_or_flow(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if t.starts_with(['[', '{']) {
        let mut p = Flow { s: t.as_bytes(), at: 0 };
        let v = p.value()?;
        p.skip_space();
        if p.at != p.s.len() {
            return Err("unexpected text after a flow collection".into());
        }
        return Ok(v);
    }
    scalar(t)
}

fn scalar(t: &str) -> Result<Value, String> {
    if let Some(inner) = t.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or("unterminated quoted string")?;
        return serde_json::from_str(&format!("\"{inner}\"")).map_err(|_| "invalid escape in a quoted string".into());
    }
    if let Some(inner) = t.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("unterminated quoted string")?;
        return Ok(Value::String(inner.replace("''", "'")));
    }
    unsupported(t)?;
    Ok(match t {
        "null" | "~" | "" => Value::Null,
        s => Value::String(s.to_string()),
    })
}

/// Refuses what this reader does not implement, by name.
fn unsupported(t: &str) -> Result<(), String> {
    match t.chars().next() {
        Some('&' | '*') => Err("YAML anchors and aliases (`&`, `*`) are not supported in a kubeconfig".into()),
        Some('!') => Err("YAML tags (`!`) are not supported in a kubeconfig".into()),
        Some('|' | '>') => Err("YAML block scalars (`|`, `>`) are not supported in a kubeconfig".into()),
        _ => Ok(()),
    }
}

/// A flow collection parser over one (joined) line.
struct Flow<'a> {
    s: &'a [u8],
    at: usize,
}

impl Flow<'_> {
    fn skip_space(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_space();
        match self.peek() {
            Some(b'[') => self.sequence(),
            Some(b'{') => self.mapping(),
            Some(_) => self.flow_scalar(),
            None => Err("unclosed flow collection".into()),
        }
    }

    fn sequence(&mut self) -> Result<Value, String> {
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.peek() == Some(b']') {
                self.at += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value()?);
            self.separator(b']')?;
        }
    }

    fn mapping(&mut self) -> Result<Value, String> {
        self.at += 1;
        let mut map = Map::new();
        loop {
            self.skip_space();
            if self.peek() == Some(b'}') {
                self.at += 1;
                return Ok(Value::Object(map));
            }
            let key = match self.flow_scalar()? {
                Value::String(k) => k,
                _ => return Err("a flow mapping key must be a string".into()),
            };
            self.skip_space();
            let value = if self.peek() == Some(b':') {
                self.at += 1;
                self.skip_space();
                if matches!(self.peek(), Some(b',' | b'}')) {
                    Value::Null
                } else {
                    self.value()?
                }
            } else {
                Value::Null
            };
            if map.insert(key.clone(), value).is_some() {
                return Err(format!("key {key:?} appears twice in one mapping"));
            }
            self.separator(b'}')?;
        }
    }

    /// After an entry: `,` (then more, or the end) or the closing bracket.
    fn separator(&mut self, close: u8) -> Result<(), String> {
        self.skip_space();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(())
            }
            Some(c) if c == close => Ok(()),
            Some(_) => Err(format!("expected `,` or `{}` in a flow collection", close as char)),
            None => Err("unclosed flow collection".into()),
        }
    }

    /// A quoted scalar, or a plain one up to `,`, `]`, `}`, or a `:` followed by a space or
    /// one of those.
    fn flow_scalar(&mut self) -> Result<Value, String> {
        self.skip_space();
        let start = self.at;
        let text = |s: &[u8]| String::from_utf8(s.to_vec()).map_err(|_| "invalid UTF-8".to_string());
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.at += 1;
                while self.at < self.s.len() {
                    let c = self.s[self.at];
                    if q == b'"' && c == b'\\' {
                        self.at += 2;
                        continue;
                    }
                    if c == q {
                        if q == b'\'' && self.s.get(self.at + 1) == Some(&b'\'') {
                            self.at += 2;
                            continue;
                        }
                        self.at += 1;
                        return scalar(&text(&self.s[start..self.at])?);
                    }
                    self.at += 1;
                }
                Err("unterminated quoted string".into())
            }
            _ => {
                while let Some(c) = self.peek() {
                    let next = self.s.get(self.at + 1).copied();
                    let ends_key = c == b':' && matches!(next, None | Some(b' ' | b',' | b']' | b'}'));
                    if matches!(c, b',' | b']' | b'}' | b'[' | b'{') || ends_key {
                        break;
                    }
                    self.at += 1;
                }
                scalar(text(&self.s[start..self.at])?.trim())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn block_flow_and_json_read_the_same() {
        let block = "a:\n- name: c\n  context:\n    cluster: k\n    user: u\nb: 'x'\n";
        let flow = "a: [{name: c, context: {cluster: k, user: u}}]\nb: x\n";
        let multi = "a: [\n  {name: c,  # a comment\n   context: {cluster: k,\n             user: \"u\"}},\n]\nb: x\n";
        let items = "a:\n- {name: c, context: {cluster: k, user: u}}\nb: x\n";
        let want = json!({"a": [{"name": "c", "context": {"cluster": "k", "user": "u"}}], "b": "x"});
        for text in [block, flow, multi, items, &want.to_string()] {
            assert_eq!(parse(text).unwrap(), want, "{text}");
        }
        assert_eq!(
            parse("{a: [x, 'y z', \"q\\\"\"], u: https://h:6443}").unwrap(),
            json!({"a": ["x", "y z", "q\""], "u": "https://h:6443"})
        );
        assert_eq!(
            parse("a: {}\nb: []\nc:\nd: ~\n").unwrap(),
            json!({"a": {}, "b": [], "c": null, "d": null})
        );
        assert_eq!(parse("---\na: it's # c\n").unwrap(), json!({"a": "it's"}));
        // Sequences indented under their key, as PyYAML's `indent` and people write them.
        let indented = "current-context: 'ctx'\nclusters:\n  - name: kind\n    cluster:\n      server: https://h:1\n";
        assert_eq!(
            parse(indented).unwrap(),
            json!({"current-context": "ctx", "clusters": [{"name": "kind", "cluster": {"server": "https://h:1"}}]})
        );
    }

    #[test]
    fn what_is_not_supported_is_named_with_its_line() {
        let cases = [
            ("a: &x b\n", "line 1: YAML anchors and aliases"),
            ("a: b\nc: *x\n", "line 2: YAML anchors and aliases"),
            ("a: !!str b\n", "line 1: YAML tags"),
            ("a: |\n  s3cr3t\n", "line 1: YAML block scalars"),
            ("a: b\n---\nc: d\n", "line 2: a second YAML document"),
            ("a: [b, {c: d}\n", "line 1: unclosed flow collection"),
            ("a: [b c: d]\n", "line 1: expected `,` or `]`"),
            ("a: b\na: c\n", "line 2: key \"a\" appears twice"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn errors_never_echo_the_text() {
        let err = parse("users:\n- name: u\n  user:\n    token: \"s3cr3t\n").unwrap_err();
        assert_eq!(err, "line 4: unterminated quoted string");
        let err = parse("a: b\ns3cr3t-token-line\n").unwrap_err();
        assert!(err.starts_with("line 2") && !err.contains("s3cr3t"), "{err}");
        let err = parse("{\"token\": \"s3cr3t").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = parse("a: {token: s3cr3t\n").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(parse("a: b\n  c: d\n").is_err());
    }
}
