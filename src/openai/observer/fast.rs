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
    p.fields([b"prompt_tokens", b"completion_tokens"], |p, field| {
        let count = p.opt_u64()?;
        if field == 0 {
            out.prompt_tokens = count;
        } else {
            out.completion_tokens = count;
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

    /// An object whose members named in `keys` are read by `field` (with the key's index and the
    /// cursor on the value); other members are skipped. A duplicate of a named member gives up
    /// (serde rejects it as a duplicate field).
    fn fields<const N: usize>(
        &mut self,
        keys: [&[u8]; N],
        mut field: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        let mut seen = [false; N];
        self.object(|p, key| match keys.iter().position(|k| *k == key) {
            Some(i) if std::mem::replace(&mut seen[i], true) => None,
            Some(i) => field(p, i),
            None => p.skip_value(0),
        })
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
        let keys: [&[u8]; 4] = [b"index", b"delta", b"text", b"finish_reason"];
        self.fields(keys, |p, field| {
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
        let mut some = [false; 5];
        let keys: [&[u8]; 5] = [
            b"role",
            b"content",
            b"reasoning_content",
            b"reasoning",
            b"tool_calls",
        ];
        self.fields(keys, |p, field| {
            *some.get_mut(field)? = p.present()?;
            Some(())
        })?;
        let [role, content, rc, r, tc] = some;
        Some(!role && (content || rc || r || tc))
    }
}

#[cfg(test)]
#[path = "fast_tests.rs"]
mod tests;
