//! The lenient JSON object scanner: never panics, every offset it reports lies inside the text and
//! in order, and removing a member leaves valid JSON when the text was a valid object.
#![no_main]

use joulegate::openai::json_scan::{scan_object, splice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    let Ok(layout) = scan_object(text) else {
        return;
    };
    assert!(layout.open < layout.close && layout.close < text.len());
    let mut last = layout.open;
    for (i, m) in layout.members.iter().enumerate() {
        assert!(last <= m.key_start && m.key_start < m.key_end);
        assert!(m.key_end <= m.value_start && m.value_start <= layout.close);
        let _ = m.raw_key(text);
        let _ = m.value(text);
        last = m.value_start;
        if let Some(range) = layout.removal_range(i) {
            assert!(range.0 <= range.1 && range.1 <= text.len());
            let removed = splice(text, range, b"");
            let valid =
                serde_json::from_slice::<serde_json::Value>(text).is_ok_and(|v| v.is_object());
            if valid {
                let after: serde_json::Value =
                    serde_json::from_slice(&removed).expect("still JSON after a removal");
                assert!(after.is_object());
            }
        }
    }
    let _ = layout.append_point();
});
