//! The request-head screen: never panics; the same bytes give the same output however they are
//! cut; what it passes on is a prefix-preserving screening (a refused head ends the output).
#![no_main]

use joulegate::proxy::screen::Screen;
use libfuzzer_sys::fuzz_target;

fn run(pieces: &[&[u8]]) -> (Result<Vec<u8>, ()>, bool) {
    let mut screen = Screen::default();
    let mut out = Vec::new();
    for p in pieces {
        if screen.feed(p, &mut out).is_err() {
            return (Err(()), screen.refused());
        }
    }
    (Ok(out), screen.refused())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let whole = run(&[input]);
    let at = usize::from(cut) * input.len() / 256;
    assert_eq!(whole, run(&[&input[..at], &input[at..]]), "cut at {at}");
    if input.len() < 256 {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(whole, run(&bytes), "byte by byte");
    }
});
