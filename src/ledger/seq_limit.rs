//! The engine's limit on running sequences (vLLM's `max_num_seqs`) as the proxy can estimate it,
//! and which non-streamed answers it holds back.
//!
//! Owns the estimate only: per recent tick, the sequences the streams showed decoding and those
//! the non-streamed answers turned out to decode (known once each ends and its decode is counted
//! back from its end), and the most of them ever running at once. The ledger asks it, tick by
//! tick and in arrival order, whether one more answer fits beside the streams decoding now;
//! one that does not waits for a sequence slot and gets no estimated work. Nothing is held back
//! before [`MIN_ANSWERS`] answers have shown what they hold, nor before the engine has run at
//! the limit for [`MIN_TICKS_AT_LIMIT`] of the recent ticks.
//!
//! Why: with the engine at its sequence limit, a non-streamed answer waits in the engine's queue,
//! but its estimate (prefill on the conveyor, then decode at the per-sequence rate) had it
//! running from the start, and the provisional splits gave it part of the streams' energy: on the
//! accuracy bench's queueing traffic (8 sequences at most) streams' figures read 11-13 % low on
//! average (8B and 70B, default seed), their records right once the answers' true counts came.
//! The streams decoding alone show less than the limit wherever answers hold slots, and a limit
//! estimated from them alone held back answers that ran (queueing, four seeds: streams' figures
//! p95 27.5 -> 36.3 %; 26.2 % with the answers' counted spans).

use std::collections::VecDeque;

/// Recent ticks kept: 12.8 s at the default 50 ms interval, longer than most answers' decode.
const TICKS: usize = 256;

/// Answers whose decode spans are counted before any is held back: until answers end, the limit
/// is the streams' alone, below the engine's wherever answers hold slots, and the first answers
/// of a run were held back while they ran (their figures 28-37 % low, 8B queueing). Queueing,
/// four seeds, figures read (streams / answers): from the first answer 5.8 / 25.9 and 5.8 / 33.2
/// %, from the fourth 6.2 / 24.6 and 5.8 / 29.5 %, from the eighth 6.3 / 24.4 and 5.8 / 29.6 %.
const MIN_ANSWERS: u32 = 4;

/// Recent ticks that must have run at the limit before any answer is held back: an engine at its
/// sequence limit runs there most of the time, while a burst larger than any before reaches a
/// new most for a few ticks, and should a burst's streams look held back for slots, its answers
/// would be held back wrongly. Queueing, four seeds, figures read (streams / answers): 6.2 / 24.6
/// and 5.8 / 29.5 % without it, 6.4 / 24.8 and 5.8 / 29.1 % with 20 (one second at the default
/// interval), 6.4 / 24.9 and 5.8 / 28.6 % with 40.
const MIN_TICKS_AT_LIMIT: usize = 20;

/// The estimate and the current tick's admissions.
#[derive(Debug, Default)]
pub(super) struct SeqLimit {
    /// Per recent tick: its end (ns), the sequences streams showed decoding in it, and those
    /// ended answers' counted decode spans put in it.
    ticks: VecDeque<(u64, u32, u32)>,
    /// The most sequences seen running at once.
    limit: u32,
    /// Sequences the streams show decoding in the current tick.
    streams: u32,
    /// Sequences of answers admitted in the current tick so far.
    admitted: u32,
    /// Answers whose decode spans were counted.
    answers_noted: u32,
    /// Recent ticks that ran at the limit.
    at_limit: usize,
}

impl SeqLimit {
    /// A new tick ending at `end_ns`, with `streams` sequences of streams decoding in it.
    pub(super) fn start_tick(&mut self, end_ns: u64, streams: u32) {
        if self.ticks.len() == TICKS {
            self.ticks.pop_front();
        }
        self.ticks.push_back((end_ns, streams, 0));
        self.limit = self.limit.max(streams);
        self.streams = streams;
        self.admitted = 0;
        let limit = self.limit;
        self.at_limit = self
            .ticks
            .iter()
            .filter(|t| t.1.saturating_add(t.2) >= limit)
            .count();
    }

    /// An answer of `choices` sequences decoded over `(first_token_ns, end_ns]`: the ticks it
    /// covered had that many more sequences running.
    pub(super) fn note_answer(&mut self, first_token_ns: u64, end_ns: u64, choices: u32) {
        self.answers_noted = self.answers_noted.saturating_add(1);
        for t in self.ticks.iter_mut() {
            if t.0 > first_token_ns && t.0 <= end_ns {
                t.2 = t.2.saturating_add(choices);
                self.limit = self.limit.max(t.1.saturating_add(t.2));
            }
        }
    }

    /// Whether an answer of `choices` sequences, next in arrival order, runs in the current
    /// tick beside the streams decoding and the answers admitted before it (admitted if so).
    pub(super) fn admit(&mut self, choices: u32) -> bool {
        if self.answers_noted < MIN_ANSWERS || self.at_limit < MIN_TICKS_AT_LIMIT {
            return true;
        }
        let running = self.streams.saturating_add(self.admitted);
        if running.saturating_add(choices) > self.limit.max(1) {
            return false;
        }
        self.admitted = running.saturating_add(choices) - self.streams;
        true
    }

    /// The most sequences seen running at once.
    pub(super) fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn answers_fill_the_slots_the_streams_leave_in_arrival_order() {
        let mut s = SeqLimit::default();
        s.start_tick(50 * MS, 6);
        assert_eq!(s.limit(), 6);
        // Until answers have ended, none is held back.
        assert!(s.admit(4));
        // Two answers decoded beside the six streams over (0, 100] ms, two more before: the
        // limit is eight.
        s.start_tick(100 * MS, 6);
        s.note_answer(0, 100 * MS, 2);
        for _ in 0..3 {
            s.note_answer(0, 10 * MS, 1);
        }
        assert_eq!(s.limit(), 8);
        // Nor before the engine has run at the limit for a second.
        s.start_tick(150 * MS, 5);
        assert!(s.admit(4));
        for k in 0..MIN_TICKS_AT_LIMIT as u64 {
            s.start_tick((200 + 50 * k) * MS, 8);
        }
        // Five streams decode now: three answers run, the fourth waits.
        s.start_tick(5_000 * MS, 5);
        assert!(s.admit(1));
        assert!(s.admit(2));
        assert!(!s.admit(1));
        // A new tick starts the admissions over.
        s.start_tick(5_050 * MS, 8);
        assert!(!s.admit(1));
    }

    #[test]
    fn only_recent_ticks_count_an_answers_span() {
        let mut s = SeqLimit::default();
        for k in 1..=(TICKS as u64 + 10) {
            s.start_tick(k * 50 * MS, 1);
        }
        // The span's first ten ticks are gone: only the kept ones count it.
        s.note_answer(0, 20 * 50 * MS, 3);
        assert_eq!(s.limit(), 4);
        assert_eq!(s.ticks.iter().filter(|t| t.2 == 3).count(), 10);
    }
}
