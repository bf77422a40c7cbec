//! Byte edits on one event: appending a member, moving the fingerprint, re-assembling an event
//! around new data.

use crate::openai::json_scan::{scan_object, splice, ObjectLayout};
use crate::openai::sse::{lines, Line, LineKind};

pub(super) fn bump(v: &mut Vec<u64>, slot: usize, f: impl FnOnce(&mut u64)) {
    if v.len() <= slot {
        v.resize(slot + 1, 0);
    }
    if let Some(x) = v.get_mut(slot) {
        f(x);
    }
}

/// `json` (scanned as `layout`) with `"name":value` appended as its last member.
pub(super) fn append_member(
    json: &[u8],
    layout: &ObjectLayout,
    name: &str,
    value: &[u8],
) -> Vec<u8> {
    append_member_at(json, layout, name, value).0
}

/// [`append_member`], also returning where `value` starts in the result.
pub(super) fn append_member_at(
    json: &[u8],
    layout: &ObjectLayout,
    name: &str,
    value: &[u8],
) -> (Vec<u8>, usize) {
    let (at, comma) = layout.append_point();
    let mut ins = Vec::with_capacity(name.len() + value.len() + 4);
    if comma {
        ins.push(b',');
    }
    ins.push(b'"');
    ins.extend_from_slice(name.as_bytes());
    ins.extend_from_slice(b"\":");
    let value_at = at + ins.len();
    ins.extend_from_slice(value);
    (splice(json, (at, at), &ins), value_at)
}

/// The held finish event with the usage chunk's `system_fingerprint` appended to its data (when the
/// usage chunk has one and the held chunk does not).
pub(super) fn add_fingerprint(held: Vec<u8>, usage_chunk: &[u8]) -> Vec<u8> {
    let Ok(layout) = scan_object(usage_chunk) else {
        return held;
    };
    let Some(fp) = layout.find(usage_chunk, "system_fingerprint") else {
        return held;
    };
    let value = fp.value(usage_chunk);
    let mut ls = Vec::new();
    lines(&held, &mut ls);
    let data: Vec<&Line> = ls.iter().filter(|l| l.kind == LineKind::Data).collect();
    let [d] = data.as_slice() else {
        return held;
    };
    let json = held.get(d.value_start..d.end).unwrap_or(&[]);
    match scan_object(json) {
        Ok(l) if l.find(json, "system_fingerprint").is_none() => {
            let new = append_member(json, &l, "system_fingerprint", value);
            splice(&held, (d.value_start, d.end), &new)
        }
        _ => held,
    }
}

/// The raw event with its data replaced by `json`: in place when the event has one data line;
/// otherwise the data lines collapse into one at the first one's position (the client's parser joins
/// data lines, so it reads the same text).
pub(super) fn rebuild_event(raw: &[u8], ls: &[Line], json: &[u8]) -> Vec<u8> {
    rebuild_event_at(raw, ls, json).0
}

/// [`rebuild_event`], also returning where `json` starts in the event.
pub(super) fn rebuild_event_at(raw: &[u8], ls: &[Line], json: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut wrote = false;
    let mut json_at = 0;
    for l in ls {
        let whole = raw.get(l.start..l.next).unwrap_or(&[]);
        if l.kind != LineKind::Data {
            out.extend_from_slice(whole);
            continue;
        }
        if wrote {
            continue;
        }
        wrote = true;
        out.extend_from_slice(raw.get(l.start..l.value_start).unwrap_or(&[]));
        json_at = out.len();
        out.extend_from_slice(json);
        out.extend_from_slice(raw.get(l.end..l.next).unwrap_or(&[]));
    }
    (out, json_at)
}
