//! Deterministic stand-ins for the model's tokenizer and sampler: a toy tokenizer that gives plausible
//! prompt token counts, and a seeded generator of completion tokens (text and log-probability).
//!
//! Owns no state and does no I/O: every output is a pure function of its inputs and the seed, so the
//! mock upstream answers the same request with the same bytes (ids and `created` aside).
//!
//! **Toy tokenizer.** Plain text costs `ceil(chars / 3)` tokens (real BPE tokenizers give ~3-4 characters
//! per English token), at least one for non-empty text. A chat prompt costs what a Llama-3-like template
//! adds around the messages: [`CHAT_FIXED_TOKENS`] (begin-of-text and a short default header), then per
//! message [`CHAT_PER_MESSAGE_TOKENS`] plus its text, then [`CHAT_GENERATION_PROMPT_TOKENS`] for the
//! assistant header. With these constants the fixtures' requests give vLLM's counts: the chat request
//! `say something short` is 22 tokens, the completion prompt `once upon a time` 6. (The two-prompt
//! fixture gives 3 + 5 here where the real tokenizer gave 12 in all.)

/// Tokens a chat template adds once per prompt (begin-of-text and a default header).
pub const CHAT_FIXED_TOKENS: u32 = 8;
/// Tokens a chat template adds around each message (start, role, end of turn, separator).
pub const CHAT_PER_MESSAGE_TOKENS: u32 = 4;
/// Tokens of the generation prompt (the assistant header) a chat template ends with.
pub const CHAT_GENERATION_PROMPT_TOKENS: u32 = 3;
/// Size of the toy vocabulary that token ids are drawn from.
pub const VOCAB_IDS: u64 = 32_000;

/// Token count of plain text under the toy tokenizer: `ceil(chars / 3)`, at least 1 if non-empty.
pub fn count_text_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u64;
    u32::try_from(chars.div_ceil(3)).unwrap_or(u32::MAX)
}

/// Token count of a chat prompt given the text of each message.
pub fn count_chat_tokens<'a>(messages: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut total = CHAT_FIXED_TOKENS + CHAT_GENERATION_PROMPT_TOKENS;
    for m in messages {
        total = total
            .saturating_add(CHAT_PER_MESSAGE_TOKENS)
            .saturating_add(count_text_tokens(m));
    }
    total
}

/// Token ids of plain text: one id per 3-character piece, derived from the piece's hash.
pub fn text_token_ids(text: &str) -> Vec<u32> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(3)
        .map(|piece| {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for c in piece {
                h = mix(h ^ u64::from(u32::from(*c)));
            }
            // Ids below 256 are reserved for special tokens in most vocabularies.
            (256 + h % (VOCAB_IDS - 256)) as u32
        })
        .collect()
}

/// SplitMix64 finaliser: a good 64-bit mixer, used as the mock's only source of randomness.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a over bytes, then mixed: a stable key for a request body.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// Word pieces the generator draws from: common English pieces with their leading spaces, so that
/// concatenated output reads like (meaningless) text, as a tiny random model's does.
const VOCAB: [&str; 48] = [
    " the", " of", " and", " to", " a", " in", " is", " that", " for", " it", " as", " was",
    " with", " be", " by", " on", " not", " he", " this", " are", " or", " his", " from", " at",
    " which", " but", " have", " an", " had", " they", " you", " were", " their", " one", " all",
    " we", " can", " her", " has", " there", " been", " if", " more", " when", " will", " would",
    " who", "ing",
];

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct GenToken {
    /// The token's text.
    pub text: &'static str,
    /// Its token id in the toy vocabulary.
    pub id: u32,
    /// Its log-probability (negative).
    pub logprob: f64,
}

/// The `k`-th (0-based) token of choice `choice` of the request keyed `key`.
pub fn gen_token(key: u64, choice: u32, k: u32) -> GenToken {
    let h = mix(key ^ mix(u64::from(choice) << 32 | u64::from(k)));
    let idx = (h % VOCAB.len() as u64) as usize;
    // Log-probabilities in (-8, -0.01]: a tiny random model is unsure of everything.
    let frac = ((h >> 11) % 1_000_000) as f64 / 1_000_000.0;
    GenToken {
        text: VOCAB[idx],
        id: 300 + idx as u32,
        logprob: -(0.01 + frac * 7.99),
    }
}

/// The alternatives offered in `top_logprobs` after the chosen token: other vocabulary pieces with
/// lower log-probabilities.
pub fn alternative(token: &GenToken, rank: u32) -> GenToken {
    let idx = (token.id as usize - 300 + rank as usize) % VOCAB.len();
    GenToken {
        text: VOCAB[idx],
        id: 300 + idx as u32,
        logprob: token.logprob - 0.5 * f64::from(rank),
    }
}

/// A deterministic 16-hex-digit id, the shape of vLLM's `random_uuid()`.
pub fn hex_id(seed: u64, counter: u64) -> String {
    format!("{:016x}", mix(seed ^ mix(counter)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_requests_give_vllm_counts() {
        assert_eq!(count_text_tokens("once upon a time"), 6);
        assert_eq!(count_chat_tokens(["say something short"]), 22);
        assert_eq!(text_token_ids("once upon a time").len(), 6);
        assert_eq!(count_text_tokens(""), 0);
        assert_eq!(count_text_tokens("a"), 1);
    }

    #[test]
    fn generation_is_deterministic_and_varied() {
        let a: Vec<_> = (0..16).map(|k| gen_token(7, 0, k)).collect();
        let b: Vec<_> = (0..16).map(|k| gen_token(7, 0, k)).collect();
        assert_eq!(a, b);
        let c: Vec<_> = (0..16).map(|k| gen_token(7, 1, k)).collect();
        assert_ne!(a, c);
        assert!(a.iter().all(|t| t.logprob < 0.0 && t.logprob > -8.01));
        let alt = alternative(&a[0], 1);
        assert!(alt.logprob < a[0].logprob);
        assert_eq!(hex_id(1, 2).len(), 16);
    }
}
