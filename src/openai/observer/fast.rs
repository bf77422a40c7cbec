//! The byte-level fast path for the two members of a chat/completions chunk the observer parses
//! (`choices` and `usage`): the common vLLM shape is read straight from the bytes, without serde's
//! per-key UTF-8 checks and field matching and without allocating. It accepts only a strict subset of
//! what serde accepts (plain ASCII keys without escapes, objects where serde's derive expects structs,
//! integers where it expects `u64`, bounded nesting, at most [`INLINE_CHOICES`] choices) and answers
//! `None` for anything else; the caller then parses with serde exactly as before, so a chunk is read
//! the same way on either path (`tests` below compare the two over fixtures and adversarial chunks).

use std::borrow::Cow;

use crate::openai::usage::{ChoiceView, UsageView};

/// Choices per chunk the fast path reads (vLLM sends one per chunk, whatever `n`); more go to serde.
pub(super) const INLINE_CHOICES: usize = 4;

/// Nesting the fast path follows inside ignored values; deeper values go to serde.
const MAX_FAST_DEPTH: usize = 32;

/// What the observer needs from one choice of a chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Choice<'a> {
    /// `index`.
    pub index: u64,
    /// Whether the choice carries generated output (see [`crate::openai::usage::DeltaView`]).
    pub output: bool,
    /// `finish_reason`, when a string.
    pub finish_reason: Option<Cow<'a, str>>,
}

impl<'a> From<ChoiceView<'a>> for Choice<'a> {
    fn from(c: ChoiceView<'a>) -> Self {
        let output = match &c.delta {
            Some(d) => d.carries_output(),
            None => c.text.is_some(),
        };
        Choice {
            index: c.index,
            output,
            finish_reason: c.finish_reason,
        }
    }
}

/// The choices of one chunk: inline when the fast path read them, on the heap when serde did.
#[derive(Debug, Default)]
pub(super) struct Choices<'a> {
    inline: [Choice<'a>; INLINE_CHOICES],
    len: usize,
    heap: Vec<Choice<'a>>,
}

impl<'a> Choices<'a> {
    /// The choices in order.
    pub fn as_slice(&self) -> &[Choice<'a>] {
        if self.heap.is_empty() {
            self.inline.get(..self.len).unwrap_or(&[])
        } else {
            &self.heap
        }
    }

    /// From serde's reading.
    pub fn from_views(views: Vec<ChoiceView<'a>>) -> Self {
        Choices {
            heap: views.into_iter().map(Choice::from).collect(),
            ..Choices::default()
        }
    }
}

/// `usage`'s counts (`None` per field: absent or `null`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl From<UsageView> for Counts {
    fn from(u: UsageView) -> Self {
        Counts {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// Reads a `choices` value (the exact bytes of the member's value); `None`: use serde.
#[cfg(test)]
pub(super) fn choices(v: &[u8]) -> Option<Choices<'_>> {
    choices_at(v, 0).and_then(|(c, end)| (end == v.len()).then_some(c))
}

/// Reads the `choices` value that starts at `at` in `t`, and where it ends; `None`: use serde.
pub(super) fn choices_at(t: &[u8], at: usize) -> Option<(Choices<'_>, usize)> {
    let mut p = P { t, i: at };
    let mut out = Choices::default();
    p.eat(b'[')?;
    p.ws();
    if p.peek() == Some(b']') {
        p.i += 1;
        return Some((out, p.i));
    }
    loop {
        p.ws();
        let c = p.choice()?;
        let slot = out.inline.get_mut(out.len)?;
        *slot = c;
        out.len += 1;
        p.ws();
        match p.next()? {
            b',' => {}
            b']' => return Some((out, p.i)),
            _ => return None,
        }
    }
}

/// Reads a `usage` value (the exact bytes of the member's value, not `null`); `None`: use serde.
#[cfg(test)]
pub(super) fn usage(v: &[u8]) -> Option<Counts> {
    usage_at(v, 0).and_then(|(u, end)| (end == v.len()).then_some(u))
}

/// Reads the `usage` value that starts at `at` in `t`, and where it ends; `None`: use serde.
pub(super) fn usage_at(t: &[u8], at: usize) -> Option<(Counts, usize)> {
    let mut p = P { t, i: at };
    let mut out = Counts::default();
    let (mut seen_p, mut seen_c) = (false, false);
    p.object(|p, key| {
        match key {
            b"prompt_tokens" => {
                if std::mem::replace(&mut seen_p, true) {
                    return None;
                }
                out.prompt_tokens = p.opt_u64()?;
            }
            b"completion_tokens" => {
                if std::mem::replace(&mut seen_c, true) {
                    return None;
                }
                out.completion_tokens = p.opt_u64()?;
            }
            _ => p.skip_value(0)?,
        }
        Some(())
    })?;
    Some((out, p.i))
}

/// A cursor over a value's bytes.
struct P<'a> {
    t: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<u8> {
        self.t.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.t.get(self.i..end)? == word).then_some(())?;
        self.i = end;
        Some(())
    }

    /// A string serde would skip: no control characters, valid escapes; other bytes (UTF-8 or not)
    /// are not checked, as serde does not check them in a string it ignores.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return None;
                            }
                        }
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// A string read as text, only when it needs no decoding (no escape, valid UTF-8).
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
        std::str::from_utf8(self.t.get(start..self.i - 1)?).ok()
    }

    /// An object key the fast path can match by its bytes: ASCII, no escape.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' | 0..=0x1f | 0x80..=0xff => return None,
                _ => {}
            }
        }
        self.t.get(start..self.i - 1)
    }

    /// A non-negative integer that fits `u64`, with nothing that would make serde read a float.
    fn u64(&mut self) -> Option<u64> {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = self.t.get(start..self.i)?;
        if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    fn is_null(&mut self) -> Option<bool> {
        if self.peek() == Some(b'n') {
            self.lit(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    fn opt_u64(&mut self) -> Option<Option<u64>> {
        if self.is_null()? {
            return Some(None);
        }
        self.u64().map(Some)
    }

    /// Whether an `Option<IgnoredAny>` field reads as `Some` (the value is validated and skipped).
    fn present(&mut self) -> Option<bool> {
        if self.is_null()? {
            return Some(false);
        }
        self.skip_value(0)?;
        Some(true)
    }

    /// An object, calling `member` with the cursor on each value (after the key and colon).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let key = self.key()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Validates and skips any value, as serde's `IgnoredAny` would.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_FAST_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_string(),
            b'n' => self.lit(b"null"),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => {}
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.eat(b'{')?;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => {}
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn skip_number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits1()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// One choice object.
    fn choice(&mut self) -> Option<Choice<'a>> {
        let mut c = Choice::default();
        // `delta` (None: absent or null), its output flag; `text` present.
        let mut delta: Option<bool> = None;
        let mut text = false;
        let mut seen = [false; 4];
        self.object(|p, key| {
            let field = match key {
                b"index" => 0,
                b"delta" => 1,
                b"text" => 2,
                b"finish_reason" => 3,
                _ => return p.skip_value(0),
            };
            if std::mem::replace(seen.get_mut(field)?, true) {
                return None;
            }
            match field {
                0 => c.index = p.u64()?,
                1 => delta = if p.is_null()? { None } else { Some(p.delta()?) },
                2 => text = p.present()?,
                _ => {
                    c.finish_reason = if p.is_null()? {
                        None
                    } else {
                        Some(Cow::Borrowed(p.plain_str()?))
                    }
                }
            }
            Some(())
        })?;
        c.output = delta.unwrap_or(text);
        Some(c)
    }

    /// A delta object: whether it carries output (as [`crate::openai::usage::DeltaView`] says).
    fn delta(&mut self) -> Option<bool> {
        // role, content, reasoning_content, reasoning, tool_calls
        let mut seen = [false; 5];
        let mut some = [false; 5];
        self.object(|p, key| {
            let field = match key {
                b"role" => 0,
                b"content" => 1,
                b"reasoning_content" => 2,
                b"reasoning" => 3,
                b"tool_calls" => 4,
                _ => return p.skip_value(0),
            };
            if std::mem::replace(seen.get_mut(field)?, true) {
                return None;
            }
            *some.get_mut(field)? = p.present()?;
            Some(())
        })?;
        let [role, content, rc, r, tc] = some;
        Some(!role && (content || rc || r || tc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::json_scan::scan_object;

    /// serde's reading (the path the fast one must equal).
    fn serde_choices(v: &[u8]) -> Option<Vec<Choice<'_>>> {
        let views: Vec<ChoiceView<'_>> = serde_json::from_slice(v).ok()?;
        Some(views.into_iter().map(Choice::from).collect())
    }

    fn serde_usage(v: &[u8]) -> Option<Counts> {
        serde_json::from_slice::<UsageView>(v)
            .ok()
            .map(Counts::from)
    }

    /// Whenever the fast path answers, serde accepts the value and reads the same.
    fn check(v: &[u8]) -> (bool, bool) {
        let fast_c = choices(v);
        if let Some(c) = &fast_c {
            assert_eq!(
                Some(c.as_slice().to_vec()),
                serde_choices(v),
                "choices {:?}",
                String::from_utf8_lossy(v)
            );
        }
        let fast_u = usage(v);
        if let Some(u) = fast_u {
            assert_eq!(
                Some(u),
                serde_usage(v),
                "usage {:?}",
                String::from_utf8_lossy(v)
            );
        }
        (fast_c.is_some(), fast_u.is_some())
    }

    /// The `choices` and `usage` values of every data line of every streamed fixture.
    fn fixture_values() -> Vec<(String, Vec<u8>)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut out = Vec::new();
        for dir in std::fs::read_dir(root).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&dir).unwrap() {
                let f = f.unwrap().path();
                if f.extension().and_then(|e| e.to_str()) != Some("body") {
                    continue;
                }
                let text = std::fs::read(&f).unwrap();
                for line in text.split(|&b| b == b'\n') {
                    let Some(data) = line.strip_prefix(b"data: ") else {
                        continue;
                    };
                    let Ok(layout) = scan_object(data) else {
                        continue;
                    };
                    for m in &layout.members {
                        if matches!(m.raw_key(data), b"choices" | b"usage") {
                            let name = format!("{}:{}", f.display(), m.key_start);
                            out.push((name, m.value(data).to_vec()));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn fast_path_reads_every_fixture_value_as_serde_does() {
        let values = fixture_values();
        assert!(values.len() > 100, "fixtures found: {}", values.len());
        for (name, v) in &values {
            let (c, u) = check(v);
            // The fast path takes every chunk vLLM wrote (it is the point of it).
            let is_choices = v.first() == Some(&b'[');
            if v != b"null" {
                assert!(if is_choices { c } else { u }, "fast path declined {name}");
            }
        }
    }

    #[test]
    fn fast_path_equals_serde_on_every_one_byte_mutation_of_the_fixtures() {
        const BYTES: &[u8] = b"\"\\{}[],: n0-.eEu1\x01\x7f\xff\xc3";
        let mut values = fixture_values();
        values.sort_by(|a, b| a.1.cmp(&b.1));
        values.dedup_by(|a, b| a.1 == b.1);
        let (mut tried, mut fast) = (0u64, 0u64);
        for (_, v) in values.iter().take(200) {
            for at in 0..v.len() {
                let mut cut = v.clone();
                cut.remove(at);
                fast += u64::from(check(&cut) != (false, false));
                for &b in BYTES {
                    let mut m = v.clone();
                    m[at] = b;
                    fast += u64::from(check(&m) != (false, false));
                    let mut ins = v.clone();
                    ins.insert(at, b);
                    fast += u64::from(check(&ins) != (false, false));
                    tried += 2;
                }
            }
        }
        // The mutations exercise both paths (not only fallbacks).
        assert!(fast > tried / 20 && fast < tried, "{fast} of {tried}");
    }

    /// The scan that lets the fast path read `choices` and `usage` finds the same members as the
    /// plain scan, on every data line of the fixtures and on one-byte mutations of them.
    #[test]
    fn reading_during_the_scan_keeps_the_layout() {
        use crate::openai::json_scan::{scan_object_into, scan_object_with, ObjectLayout};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut lines = Vec::new();
        for dir in std::fs::read_dir(root).unwrap() {
            let dir = dir.unwrap().path();
            for f in std::fs::read_dir(&dir).into_iter().flatten() {
                let text = std::fs::read(f.unwrap().path()).unwrap();
                for line in text.split(|&b| b == b'\n') {
                    if let Some(d) = line.strip_prefix(b"data: ") {
                        lines.push(d.to_vec());
                    }
                }
            }
        }
        assert!(lines.len() > 100);
        let same = |d: &[u8]| {
            let (mut a, mut b) = (ObjectLayout::default(), ObjectLayout::default());
            let ra = scan_object_into(d, &mut a);
            let mut read = 0;
            let rb = scan_object_with(d, &mut b, &mut |_, key, at| {
                let end = match key {
                    b"choices" => choices_at(d, at)?.1,
                    b"usage" => usage_at(d, at)?.1,
                    _ => return None,
                };
                read += 1;
                Some(end)
            });
            assert_eq!(ra, rb, "{:?}", String::from_utf8_lossy(d));
            if ra.is_ok() {
                assert_eq!(a, b, "{:?}", String::from_utf8_lossy(d));
            }
            read
        };
        let mut read = 0;
        lines.sort();
        lines.dedup();
        for d in &lines {
            read += same(d);
            for at in (0..d.len()).step_by(3) {
                for &b in b"\"\\{}[],:" {
                    let mut m = d.clone();
                    m[at] = b;
                    same(&m);
                }
            }
        }
        assert!(read > 100, "{read}");
    }

    #[test]
    fn adversarial_values() {
        let cases: &[&str] = &[
            // Escaped and duplicate keys.
            r#"[{"ind\u0065x":3,"delta":{"content":"a"}}]"#,
            r#"[{"index":1,"index":2,"delta":{"content":"a"}}]"#,
            r#"[{"index":0,"delta":{"content":"a","content":null}}]"#,
            r#"[{"index":0,"delta":{"role":"assistant","role":"assistant"}}]"#,
            r#"[{"index":0,"delta":{"cont\u0065nt":"a"}}]"#,
            r#"[{"index":0,"finish_reason":"stop","finish_reason":null}]"#,
            r#"[{"index":0,"text":"a","text":"b"}]"#,
            r#"[{"index":0,"delta":null,"text":"a"}]"#,
            r#"[{"index":0,"delta":{},"text":"a"}]"#,
            r#"[{"index":0,"delta":[],"text":"a"}]"#,
            r#"[[0,{"content":"a"},null,"stop"]]"#,
            r#"[{"index":0,"delta":{"usage":{"content":1}},"usage":{"x":1}}]"#,
            r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}]"#,
            // Numbers serde does not read as u64.
            r#"[{"index":-0,"delta":{"content":"a"}}]"#,
            r#"[{"index":1.0,"delta":{"content":"a"}}]"#,
            r#"[{"index":1e0,"delta":{"content":"a"}}]"#,
            r#"[{"index":01,"delta":{"content":"a"}}]"#,
            r#"[{"index":18446744073709551615,"delta":{"content":"a"}}]"#,
            r#"[{"index":18446744073709551616,"delta":{"content":"a"}}]"#,
            r#"[{"index":null,"delta":{"content":"a"}}]"#,
            r#"[{"index":"0","delta":{"content":"a"}}]"#,
            // Strings: escapes, control characters, non-ASCII.
            r#"[{"index":0,"finish_reason":"st\u006fp"}]"#,
            r#"[{"index":0,"finish_reason":"é"}]"#,
            r#"[{"index":0,"finish_reason":1}]"#,
            r#"[{"index":0,"delta":{"content":"\ud800"}}]"#,
            r#"[{"index":0,"delta":{"content":"\x"}}]"#,
            r#"[{"index":0,"delta":{"content":"\u12"}}]"#,
            "[{\"index\":0,\"delta\":{\"content\":\"a\tb\"}}]",
            "[{\"index\":0,\"delta\":{\"content\":\"\u{e9}\u{1f600}\"}}]",
            // Literals, trailing commas, whitespace.
            r#"[{"index":0,"delta":{"content":nul}}]"#,
            r#"[{"index":0,"delta":{"content":"a"},}]"#,
            r#"[{"index":0,"delta":{"content":"a"}},]"#,
            r#"[{"index":0,"logprobs":[1,]}]"#,
            " [ { \"index\" : 2 , \"delta\" : { \"content\" : \"a\" } } ] ",
            "\t[\r\n{\"index\":2}\n]\n",
            r#"[]"#,
            r#"[null]"#,
            r#"[{"index":0},{"index":1},{"index":2},{"index":3},{"index":4}]"#,
            // Usage.
            r#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}"#,
            r#"{"prompt_tokens":5,"prompt_tokens":6}"#,
            r#"{"prompt_tok\u0065ns":5}"#,
            r#"{"prompt_tokens":null,"completion_tokens":1.5}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":3},"usage":{"prompt_tokens":9}}"#,
            r#"[5,7]"#,
            r#"{}"#,
        ];
        for c in cases {
            check(c.as_bytes());
        }
        // Invalid UTF-8 in keys and values.
        for v in [
            &b"[{\"ind\xffex\":0,\"delta\":{\"content\":\"a\"}}]"[..],
            b"[{\"index\":0,\"delta\":{\"content\":\"\xff\"}}]",
            b"[{\"index\":0,\"finish_reason\":\"\xc3\"}]",
            b"{\"prompt_tokens\":1,\"\xff\":2}",
        ] {
            check(v);
        }
        // Cut anywhere (a value split across reads is never seen here: the splitter hands on whole
        // events, but a truncated value must still fall back, not be read).
        for c in cases {
            for at in 0..c.len() {
                check(&c.as_bytes()[..at]);
            }
        }
        // The shapes the fast path is for.
        let plain = br#"[{"index":3,"delta":{"content":"a\n\"b"},"logprobs":null,"finish_reason":null,"token_ids":[1,2]}]"#;
        let got = choices(plain).expect("fast");
        assert_eq!(
            got.as_slice(),
            &[Choice {
                index: 3,
                output: true,
                finish_reason: None
            }]
        );
        let done = br#"[{"index":0,"text":"","finish_reason":"length","stop_reason":null}]"#;
        assert_eq!(
            choices(done).expect("fast").as_slice()[0]
                .finish_reason
                .as_deref(),
            Some("length")
        );
        assert_eq!(
            usage(br#"{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7,"prompt_tokens_details":null}"#),
            Some(Counts {
                prompt_tokens: Some(5),
                completion_tokens: Some(7)
            })
        );
    }
}
