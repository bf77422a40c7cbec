//! The accuracy bench's workloads: seeded request plans in engine terms (prompt and output sizes,
//! choices, streaming, aborts, arrivals), no HTTP.
//!
//! Owns only the shapes; [`super::drive`] runs them. Every plan is a pure function of its kind,
//! seed and size, so a run is reproducible to the digit.

use crate::sim::text::mix;

/// One request of a virtual workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualRequest {
    /// Arrival, ns after the workload starts.
    pub at_ns: u64,
    /// Prompt tokens.
    pub prompt: u32,
    /// Output tokens per choice (the engine runs to `max_tokens`, as with `ignore_eos`).
    pub max_tokens: u32,
    /// Choices (`n`).
    pub n: u32,
    /// Whether the client streams (with vLLM's continuous usage, as the proxy injects it).
    pub stream: bool,
    /// The client leaves this long after arriving, if it does.
    pub abort_after_ns: Option<u64>,
}

/// The named workloads (DESIGN.md §7, issue #18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtualWorkload {
    /// Medium prompts and answers at a steady rate, mostly streamed.
    Steady,
    /// Bursts of simultaneous arrivals separated by idle gaps.
    Bursty,
    /// Long prompts (1.5k–8k tokens), short answers, mostly non-streaming.
    PrefillHeavy,
    /// Short prompts, long answers.
    DecodeHeavy,
    /// A mix with long contexts (4k–32k prompts beside short and decode-heavy requests).
    MixedLong,
    /// Requests with `n` = 2..4 choices.
    Choices,
    /// A quarter of the clients leave early (mid-prefill or mid-decode).
    Aborts,
    /// More requests than the engine runs at once: a queue forms (run with a small batch limit).
    Queueing,
}

impl VirtualWorkload {
    /// Every workload, in report order.
    pub const ALL: [VirtualWorkload; 8] = [
        VirtualWorkload::Steady,
        VirtualWorkload::Bursty,
        VirtualWorkload::PrefillHeavy,
        VirtualWorkload::DecodeHeavy,
        VirtualWorkload::MixedLong,
        VirtualWorkload::Choices,
        VirtualWorkload::Aborts,
        VirtualWorkload::Queueing,
    ];

    /// The name used in reports and `ACCURACY_ONLY`.
    pub fn name(self) -> &'static str {
        match self {
            VirtualWorkload::Steady => "steady",
            VirtualWorkload::Bursty => "bursty",
            VirtualWorkload::PrefillHeavy => "prefill-heavy",
            VirtualWorkload::DecodeHeavy => "decode-heavy",
            VirtualWorkload::MixedLong => "mixed-long",
            VirtualWorkload::Choices => "n>1",
            VirtualWorkload::Aborts => "aborts",
            VirtualWorkload::Queueing => "queueing",
        }
    }

    /// Most sequences the engine runs at once for this workload (vLLM `max_num_seqs`).
    pub fn max_running_seqs(self) -> u32 {
        match self {
            VirtualWorkload::Queueing => 8,
            _ => 256,
        }
    }

    /// The plan: `count` requests, reproducible from `seed`.
    pub fn plan(self, seed: u64, count: usize) -> Vec<VirtualRequest> {
        const MS: u64 = 1_000_000;
        let mut at = 0u64;
        (0..count as u64)
            .map(|i| {
                let x = mix(seed ^ mix(i ^ (self as u64) << 32));
                let r = |shift: u32, lo: u64, hi: u64| lo + (x >> shift) % (hi - lo + 1);
                // Poisson-like gaps: an exponential from a uniform draw, mean `gap`.
                let exp_gap = |gap: u64| {
                    let u = ((x >> 11) % 10_000) as f64 / 10_000.0;
                    (-(1.0 - u).ln() * gap as f64) as u64
                };
                let stream_share = |tenths: u64| (x >> 40) % 10 < tenths;
                let mut q = VirtualRequest {
                    at_ns: 0,
                    prompt: r(8, 150, 1_200) as u32,
                    max_tokens: r(24, 30, 300) as u32,
                    n: 1,
                    stream: stream_share(7),
                    abort_after_ns: None,
                };
                match self {
                    VirtualWorkload::Steady => at += exp_gap(120 * MS),
                    VirtualWorkload::Bursty => {
                        // Bursts of 8 at once, 3 s apart: the engine drains and idles between.
                        if i % 8 == 0 && i > 0 {
                            at += 3_000 * MS;
                        }
                    }
                    VirtualWorkload::PrefillHeavy => {
                        q.prompt = r(8, 1_500, 8_000) as u32;
                        q.max_tokens = r(24, 2, 24) as u32;
                        q.stream = stream_share(3);
                        at += exp_gap(150 * MS);
                    }
                    VirtualWorkload::DecodeHeavy => {
                        q.prompt = r(8, 20, 200) as u32;
                        q.max_tokens = r(24, 300, 900) as u32;
                        at += exp_gap(200 * MS);
                    }
                    VirtualWorkload::MixedLong => {
                        match x % 4 {
                            0 => {
                                q.prompt = r(8, 4_000, 32_000) as u32;
                                q.max_tokens = r(24, 8, 400) as u32;
                            }
                            1 => {
                                q.prompt = r(8, 20, 200) as u32;
                                q.max_tokens = r(24, 200, 800) as u32;
                            }
                            _ => {}
                        }
                        q.stream = stream_share(6);
                        at += exp_gap(200 * MS);
                    }
                    VirtualWorkload::Choices => {
                        q.n = r(52, 2, 4) as u32;
                        q.max_tokens = r(24, 20, 200) as u32;
                        at += exp_gap(200 * MS);
                    }
                    VirtualWorkload::Aborts => {
                        if x % 4 == 0 {
                            q.abort_after_ns = Some(r(16, 5, 1_500) * MS);
                        }
                        at += exp_gap(120 * MS);
                    }
                    VirtualWorkload::Queueing => {
                        q.max_tokens = r(24, 50, 400) as u32;
                        at += exp_gap(60 * MS);
                    }
                }
                q.at_ns = at;
                q
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_and_shaped() {
        for w in VirtualWorkload::ALL {
            let a = w.plan(3, 64);
            assert_eq!(a, w.plan(3, 64), "{}", w.name());
            assert_ne!(a, w.plan(4, 64), "{}", w.name());
            assert!(a.windows(2).all(|p| p[0].at_ns <= p[1].at_ns));
        }
        let p = VirtualWorkload::PrefillHeavy.plan(1, 200);
        let prompt: u64 = p.iter().map(|r| u64::from(r.prompt)).sum();
        let out: u64 = p.iter().map(|r| u64::from(r.max_tokens)).sum();
        assert!(prompt > 100 * out);
        assert!(p.iter().filter(|r| !r.stream).count() > 100);
        let a = VirtualWorkload::Aborts.plan(1, 200);
        assert!(a.iter().filter(|r| r.abort_after_ns.is_some()).count() > 20);
        assert!(VirtualWorkload::Choices
            .plan(1, 50)
            .iter()
            .all(|r| (2..=4).contains(&r.n)));
        let m = VirtualWorkload::MixedLong.plan(1, 200);
        assert!(m.iter().any(|r| r.prompt > 16_000));
    }
}
