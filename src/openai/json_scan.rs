//! A tiny, allocation-free scanner over the top level of one JSON object: where each member's key and
//! value lie in the bytes. It owns the byte-exact edits the proxy makes (remove a member, insert one at
//! the end, replace a value) so that every other byte of a client's body or of an upstream chunk is
//! forwarded as it was. It validates only what it needs to find boundaries: full validation is serde's
//! job, and every caller parses with serde before or after scanning.

/// One top-level member: byte offsets into the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset of the opening quote of the key.
    pub key_start: usize,
    /// Offset just past the closing quote of the key.
    pub key_end: usize,
    /// Offset of the first byte of the value.
    pub value_start: usize,
    /// Offset just past the last byte of the value.
    pub value_end: usize,
}

impl Member {
    /// The raw key, quotes excluded (escapes not decoded).
    pub fn raw_key<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        text.get(self.key_start + 1..self.key_end.saturating_sub(1))
            .unwrap_or(&[])
    }

    /// The raw value bytes.
    pub fn value<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        text.get(self.value_start..self.value_end).unwrap_or(&[])
    }

    /// Whether the key equals `name`, decoding JSON escapes when the raw key has any (a client may
    /// legally write `"stream\u005foptions"`).
    pub fn key_is(&self, text: &[u8], name: &str) -> bool {
        let raw = self.raw_key(text);
        if !raw.contains(&b'\\') {
            return raw == name.as_bytes();
        }
        let quoted = text.get(self.key_start..self.key_end).unwrap_or(&[]);
        matches!(serde_json::from_slice::<String>(quoted), Ok(s) if s == name)
    }
}

/// The layout of one JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectLayout {
    /// Offset of the opening `{`.
    pub open: usize,
    /// Offset of the closing `}`.
    pub close: usize,
    /// Members in order.
    pub members: Vec<Member>,
}

impl ObjectLayout {
    /// The last member named `name` (JSON parsers in Python and serde keep the last duplicate).
    pub fn find(&self, text: &[u8], name: &str) -> Option<Member> {
        self.members
            .iter()
            .rev()
            .find(|m| m.key_is(text, name))
            .copied()
    }

    /// The byte range to delete to remove member `idx` with its separating comma, leaving a valid
    /// object: the comma before it when it has a predecessor, else the comma after it.
    pub fn removal_range(&self, idx: usize) -> Option<(usize, usize)> {
        let m = self.members.get(idx)?;
        if idx > 0 {
            let prev = self.members.get(idx - 1)?;
            Some((prev.value_end, m.value_end))
        } else if let Some(next) = self.members.get(1) {
            Some((m.key_start, next.key_start))
        } else {
            Some((m.key_start, m.value_end))
        }
    }

    /// Where to insert a new last member and whether it needs a leading comma.
    pub fn append_point(&self) -> (usize, bool) {
        match self.members.last() {
            Some(m) => (m.value_end, true),
            None => (self.close, false),
        }
    }
}

/// Why a scan failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The text ended inside the object.
    #[error("JSON text ended early")]
    Incomplete,
    /// The text is not a JSON object (or is malformed where boundaries matter).
    #[error("not a JSON object")]
    NotObject,
    /// Nesting deeper than the scanner allows.
    #[error("JSON nested too deeply")]
    TooDeep,
}

/// Nesting bound: deeper documents are refused rather than risk pathological input.
pub(crate) const MAX_DEPTH: usize = 256;

/// Bytes that matter when skipping a container: quotes and brackets.
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = t.get(i) {
        i += 1;
    }
    i
}

/// Offset just past the string starting at `i` (which must be a `"`).
fn skip_string(t: &[u8], i: usize) -> Result<usize, ScanError> {
    if t.get(i) != Some(&b'"') {
        return Err(ScanError::NotObject);
    }
    let mut j = i + 1;
    // Most strings (keys, ids, one token of text) are short: a plain loop finds their end sooner
    // than setting up a vector search.
    for _ in 0..16 {
        match t.get(j) {
            None => return Err(ScanError::Incomplete),
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => j += 2,
            Some(_) => j += 1,
        }
    }
    loop {
        let rest = t.get(j..).ok_or(ScanError::Incomplete)?;
        let k = memchr::memchr2(b'"', b'\\', rest).ok_or(ScanError::Incomplete)?;
        j += k;
        if t.get(j) == Some(&b'"') {
            return Ok(j + 1);
        }
        // A backslash escapes the next byte (for \uXXXX the hex digits need no care).
        j += 2;
    }
}

/// Offset just past the value starting at `i`.
fn skip_value(t: &[u8], i: usize) -> Result<usize, ScanError> {
    match t.get(i) {
        None => Err(ScanError::Incomplete),
        Some(b'"') => skip_string(t, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                // Jump over bytes that cannot change nesting.
                while t.get(j).is_some_and(|&b| !STRUCTURAL[b as usize]) {
                    j += 1;
                }
                match t.get(j) {
                    None => return Err(ScanError::Incomplete),
                    Some(b'"') => {
                        j = skip_string(t, j)?;
                        continue;
                    }
                    Some(b'{' | b'[') => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(ScanError::TooDeep);
                        }
                    }
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    Some(_) => {}
                }
                j += 1;
            }
        }
        Some(_) => {
            // Literal or number: runs until a delimiter.
            let mut j = i;
            while let Some(&b) = t.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            if j == i {
                return Err(ScanError::NotObject);
            }
            Ok(j)
        }
    }
}

/// Scans the object that starts at the first non-blank byte of `text`.
pub fn scan_object(text: &[u8]) -> Result<ObjectLayout, ScanError> {
    let mut layout = ObjectLayout::default();
    scan_object_into(text, &mut layout)?;
    Ok(layout)
}

/// [`scan_object`] into a reused layout (its member buffer keeps its capacity across calls: the
/// stream observer scans every event).
pub fn scan_object_into(text: &[u8], layout: &mut ObjectLayout) -> Result<(), ScanError> {
    scan_object_with(text, layout, &mut |_, _, _| None)
}

/// A reader for [`scan_object_with`]: `(member index, raw key, value start)` to the value's end.
pub type MemberReader<'r> = dyn FnMut(usize, &[u8], usize) -> Option<usize> + 'r;

/// [`scan_object_into`] with a reader for chosen members: `read(index, raw_key, value_start)` may
/// read the value itself and return the offset just past it, which the scan then uses instead of
/// skipping the value (the stream observer reads `choices` and `usage` this way, so their bytes
/// are walked once). The reader must return `Some` only for a complete, valid JSON value starting at
/// `value_start`: its end is then the one the scan would have found.
pub fn scan_object_with(
    text: &[u8],
    layout: &mut ObjectLayout,
    read: &mut MemberReader<'_>,
) -> Result<(), ScanError> {
    layout.members.clear();
    let open = skip_ws(text, 0);
    match text.get(open) {
        Some(b'{') => {}
        None => return Err(ScanError::Incomplete),
        Some(_) => return Err(ScanError::NotObject),
    }
    layout.open = open;
    let mut i = skip_ws(text, open + 1);
    if text.get(i) == Some(&b'}') {
        layout.close = i;
        return Ok(());
    }
    loop {
        let key_start = i;
        let key_end = skip_string(text, i)?;
        i = skip_ws(text, key_end);
        match text.get(i) {
            Some(b':') => {}
            None => return Err(ScanError::Incomplete),
            Some(_) => return Err(ScanError::NotObject),
        }
        let value_start = skip_ws(text, i + 1);
        let raw_key = text.get(key_start + 1..key_end - 1).unwrap_or(&[]);
        let value_end = match read(layout.members.len(), raw_key, value_start) {
            Some(end) => end,
            None => skip_value(text, value_start)?,
        };
        layout.members.push(Member {
            key_start,
            key_end,
            value_start,
            value_end,
        });
        i = skip_ws(text, value_end);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => {
                layout.close = i;
                return Ok(());
            }
            None => return Err(ScanError::Incomplete),
            Some(_) => return Err(ScanError::NotObject),
        }
    }
}

/// `text` with `range` replaced by `with`.
pub fn splice(text: &[u8], range: (usize, usize), with: &[u8]) -> Vec<u8> {
    let (a, b) = range;
    let mut out = Vec::with_capacity(text.len() + with.len());
    out.extend_from_slice(text.get(..a).unwrap_or(text));
    out.extend_from_slice(with);
    out.extend_from_slice(text.get(b..).unwrap_or(&[]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove(text: &str, name: &str) -> String {
        let t = text.as_bytes();
        let layout = scan_object(t).unwrap();
        let idx = layout
            .members
            .iter()
            .position(|m| m.key_is(t, name))
            .unwrap();
        let r = layout.removal_range(idx).unwrap();
        String::from_utf8(splice(t, r, b"")).unwrap()
    }

    #[test]
    fn scans_members_with_nesting_and_escapes() {
        let t = br#" {"a" : "x\"}" , "b":[1,{"c":"]"}], "d":null,"e":-1.5e3}"#;
        let l = scan_object(t).unwrap();
        let keys: Vec<_> = l.members.iter().map(|m| m.raw_key(t)).collect();
        assert_eq!(keys, vec![&b"a"[..], b"b", b"d", b"e"]);
        assert_eq!(l.members[1].value(t), br#"[1,{"c":"]"}]"#);
        assert_eq!(l.members[3].value(t), b"-1.5e3");
        assert_eq!(t[l.close], b'}');
    }

    #[test]
    fn removal_keeps_valid_json_in_every_position() {
        assert_eq!(
            remove(r#"{"a":1,"u":{"x":2},"b":3}"#, "u"),
            r#"{"a":1,"b":3}"#
        );
        assert_eq!(remove(r#"{"u":{"x":2},"b":3}"#, "u"), r#"{"b":3}"#);
        assert_eq!(remove(r#"{"a":1,"u":{}}"#, "u"), r#"{"a":1}"#);
        assert_eq!(remove(r#"{"u":{}}"#, "u"), r#"{}"#);
    }

    #[test]
    fn escaped_key_matches_decoded_name() {
        let t = br#"{"stream\u005foptions":null}"#;
        let l = scan_object(t).unwrap();
        assert!(l.members[0].key_is(t, "stream_options"));
    }

    #[test]
    fn broken_inputs_error_without_panicking() {
        for t in [
            &b""[..],
            b"[1]",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":\"\\",
            b"{a:1}",
            b"{\"a\" 1}",
            b"{\"a\":1 2}",
            b"{\"a\":}",
        ] {
            assert!(scan_object(t).is_err(), "{:?}", String::from_utf8_lossy(t));
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(scan_object(deep.as_bytes()), Err(ScanError::TooDeep));
    }
}
