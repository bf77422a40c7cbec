//! The simulated engine's energy over virtual time and the cumulative counter a meter reads from
//! it: the truth the accuracy driver's meter sees.
//!
//! Owns [`EnergyClock`] (idle power between steps, each step's energy spread evenly over it), the
//! [`Counter`] (its own update lattice, jitter, noise, whole micro-joules) and [`StartupBurst`],
//! the virtual clock that runs the sampler's start-up alignment over the counter before any
//! traffic. Split from `drive.rs` by concern; no wall clock here either.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::drive::MeterModel;
use crate::sampler::{TimeSource, Wake};

/// Energy in picojoules as a function of virtual time: idle power between steps, each step's
/// energy spread evenly over it.
#[derive(Debug)]
pub(super) struct EnergyClock {
    pub(super) idle_mw: u64,
    pub(super) at_ns: u64,
    pub(super) pj: u128,
    pub(super) step: Option<(u64, u64, u128)>,
}

impl EnergyClock {
    /// Cumulative picojoules at `t` (>= the last advance).
    pub(super) fn at(&self, t: u64) -> u128 {
        match self.step {
            Some((s, e, pj)) if t <= e => {
                self.pj + pj * u128::from(t.saturating_sub(s)) / u128::from((e - s).max(1))
            }
            Some((_, e, pj)) => self.pj + pj + u128::from(self.idle_mw) * u128::from(t - e),
            None => self.pj + u128::from(self.idle_mw) * u128::from(t.saturating_sub(self.at_ns)),
        }
    }

    /// Moves the origin to `t` (no step running after it unless one starts).
    pub(super) fn advance(&mut self, t: u64) {
        self.pj = self.at(t);
        self.at_ns = t;
        if matches!(self.step, Some((_, e, _)) if t >= e) {
            self.step = None;
        }
    }

    pub(super) fn start_step(&mut self, t: u64, duration_ns: u64, energy_uj: u64) {
        self.advance(t);
        self.step = Some((t, t + duration_ns.max(1), u128::from(energy_uj) * 1_000_000));
    }
}

/// The simulated energy counter: it moves on its own lattice, out of phase with the sampler's
/// reads (each update up to the jitter off it), by the energy drawn since its previous update
/// with the meter's noise, in whole micro-joules.
pub(super) struct Counter {
    period_ns: u64,
    lattice_ns: u64,
    pub(super) next_update: u64,
    jitter: Noise,
    jitter_ns: u64,
    noise: Noise,
    noise_level: f64,
    /// The engine's energy up to the latest update, pJ (truth, before noise).
    pub(super) true_pj: u128,
    /// The counter's value, µJ.
    pub(super) uj: u64,
    carry: f64,
}

impl Counter {
    pub(super) fn new(m: &MeterModel, seed: u64, start_ns: u64) -> Self {
        let period_ns = m.counter_period_ns.max(1);
        let lattice_ns = start_ns + (seed.wrapping_mul(7_919) % period_ns) + 1;
        let mut c = Counter {
            period_ns,
            lattice_ns,
            next_update: lattice_ns,
            // Jitter from its own sequence, so that without it every other draw is unchanged.
            jitter: Noise(seed ^ 0x717e),
            jitter_ns: m.jitter_ns.min(period_ns / 2 - 1),
            noise: Noise(seed ^ 0x5eed),
            noise_level: m.noise,
            true_pj: 0,
            uj: 0,
            carry: 0.0,
        };
        c.next_update = c.jittered(lattice_ns);
        c
    }

    fn jittered(&mut self, at: u64) -> u64 {
        if self.jitter_ns == 0 {
            return at;
        }
        let j = (self.jitter.next() * self.jitter_ns as f64) as i64;
        at.saturating_add_signed(j)
    }

    /// The update due at `now`.
    pub(super) fn update(&mut self, now: u64, energy: &EnergyClock) {
        let e = energy.at(now);
        let inc_pj = e - self.true_pj;
        self.true_pj = e;
        let noisy = inc_pj as f64 / 1e6 * (1.0 + self.noise_level * self.noise.next()) + self.carry;
        let whole = noisy.max(0.0).floor();
        self.carry = noisy - whole;
        self.uj += whole as u64;
        self.lattice_ns += self.period_ns;
        self.next_update = self.jittered(self.lattice_ns).max(now + 1);
    }
}

/// The virtual clock of the sampler's start-up burst: before any traffic, it moves the counter
/// through its updates up to each read, and publishes its value to the meter.
pub(super) struct StartupBurst {
    pub(super) now: u64,
    pub(super) counter: Counter,
    pub(super) energy: EnergyClock,
    pub(super) shared: Arc<AtomicU64>,
}

impl TimeSource for StartupBurst {
    fn now_ns(&mut self) -> u64 {
        self.now
    }

    fn sleep_until(&mut self, deadline_ns: u64, _stop: &Receiver<()>) -> Wake {
        // Updates due at a read come before it, as in the main loop.
        while self.counter.next_update <= deadline_ns {
            let at = self.counter.next_update;
            self.counter.update(at, &self.energy);
        }
        self.now = self.now.max(deadline_ns);
        self.shared.store(self.counter.uj, Relaxed);
        Wake::Deadline
    }
}

/// Seeded uniform draws in [-1, 1].
pub(super) struct Noise(pub(super) u64);

impl Noise {
    pub(super) fn next(&mut self) -> f64 {
        self.0 = crate::sim::text::mix(self.0.wrapping_add(0x9E37_79B9_7F4A_7C15));
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}
