//! Where the sampler's reads fall against a slow counter's updates.
//!
//! Owns the start-up alignment: before its first read, the sampler reads the meters every
//! [`BURST_STEP`] for [`BURST`], finds when a slow counter updates (its changes come at a fixed
//! phase of its period), and starts its schedule half an interval after those updates. Why: a read
//! next to an update sees it or not by the update's jitter, so its ticks get none, one or two
//! updates. Replayed against an H200's NVML counter (updates every ~100 ms, read every 50 ms), the
//! ticks' p95 error was 16 % per tick and 1.3 % per second with the reads half an interval after the
//! updates, and up to 45 % and 6.0 % with the reads on them. The phase drifts by well under a
//! microsecond per update on that counter; one alignment at start is kept for the sampler's life.
//!
//! The burst costs one read per device per step (NVML: ~3–9 ms of CPU each, so ~0.2–0.5 s once),
//! after the baseline reading: the first interval is that much longer. Intervals under
//! [`MIN_INTERVAL`] are not aligned.
//! Only NVML's energy counter, counter files and the simulated engine's counter are probed (the others move at every read or are
//! read as they are), and only when one of them is there. Devices whose readings carry power (a
//! sparse counter's shape) are left out, as are counters that moved more often than every 3/4 of
//! an interval (no one phase against the reads) or fewer than twice (slower than the burst, or
//! drawing nothing).

use std::sync::mpsc::Receiver;

use super::time::{TimeSource, Wake};
use crate::meter::{Meter, Method};

/// Spacing of the start-up reads.
pub const BURST_STEP: u64 = 5_000_000;
/// Length of the start-up burst: two periods of a 100 ms counter, and a half.
pub const BURST: u64 = 250_000_000;
/// The shortest sampling interval aligned: four burst steps (finer reads gain nothing from it).
pub const MIN_INTERVAL: u64 = 4 * BURST_STEP;

/// The phase (in `0..interval_ns`) of a counter's updates, from the times of the burst reads at
/// which it was seen to change (each update came in the step before; its middle is the estimate).
/// A circular mean, so phases on both sides of the wrap average right. `None` without changes.
pub fn update_phase(changes: &[u64], interval_ns: u64) -> Option<u64> {
    if changes.is_empty() || interval_ns == 0 {
        return None;
    }
    let tau = std::f64::consts::TAU;
    let (mut x, mut y) = (0.0f64, 0.0f64);
    for &c in changes {
        let at = c.saturating_sub(BURST_STEP / 2) % interval_ns;
        let a = tau * at as f64 / interval_ns as f64;
        x += a.cos();
        y += a.sin();
    }
    let mean = y.atan2(x).rem_euclid(tau) / tau * interval_ns as f64;
    Some((mean as u64) % interval_ns)
}

/// The first time at or after `now_ns` that lies half an interval after the updates of phase
/// `phase_ns` (both modulo `interval_ns`).
pub fn aligned_start(now_ns: u64, phase_ns: u64, interval_ns: u64) -> u64 {
    if interval_ns == 0 {
        return now_ns;
    }
    let target = (phase_ns + interval_ns / 2) % interval_ns;
    now_ns + (target + interval_ns - now_ns % interval_ns) % interval_ns
}

/// What the start-up burst found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// The first device that looks slow enough to align to, with its update phase.
    pub aligned: Option<(usize, u64)>,
    /// Each device's update period (the median time between its changes), in the order of
    /// [`probe`]'s meters and devices; `None` for a device not probed, or that changed fewer than
    /// three times or at every read of the burst ([`MIN_MEASURED_PERIOD`]).
    pub periods: Vec<Option<u64>>,
}

/// The shortest update period the burst measures: two of its steps. A counter that moved at
/// nearly every one of its reads (RAPL's, every ~1 ms) is as good as read when it updates.
pub const MIN_MEASURED_PERIOD: u64 = 2 * BURST_STEP;

/// The median spacing of `changes` (times at which a counter was seen to have moved), if there
/// are at least three of them and it is above [`MIN_MEASURED_PERIOD`].
pub fn change_period(changes: &[u64]) -> Option<u64> {
    if changes.len() < 3 {
        return None;
    }
    let mut gaps: Vec<u64> = changes
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    gaps.sort_unstable();
    Some(gaps[gaps.len() / 2]).filter(|&p| p > MIN_MEASURED_PERIOD)
}

/// Reads `meters` (their devices in order) every [`BURST_STEP`] for [`BURST`] and returns each
/// device's update period and the update phase of the first device that looks slow enough to
/// align to, with its index. `Ok(None)` when no device is a counter worth probing; `Err` when a
/// stop was asked for meanwhile.
pub fn probe(
    meters: &mut [Box<dyn Meter>],
    time: &mut impl TimeSource,
    stop: &Receiver<()>,
    interval_ns: u64,
) -> Result<Option<Probe>, Stopped> {
    // Only counters that update on their own clock, slowly: NVML's energy counter, counter files
    // (another program's, or a simulation's) and the simulated engine's shared counter. The others move at every read or are read
    // as they are (RAPL, synthetic power, a replay).
    let aligned = |m: Method| {
        matches!(
            m,
            Method::NvmlEnergyCounter | Method::CounterFile | Method::SharedCounter
        )
    };
    if !meters
        .iter()
        .any(|m| m.devices().iter().any(|d| aligned(d.method)))
    {
        return Ok(None);
    }
    let read_all = |meters: &mut [Box<dyn Meter>], now: u64| -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for m in meters.iter_mut() {
            for d in 0..m.devices().len() {
                let method = m.devices()[d].method;
                out.push(match m.read(d, now) {
                    Ok(r) if r.power_mw.is_none() && aligned(method) => Some(r.energy_uj),
                    _ => None,
                });
            }
        }
        out
    };
    let begin = time.now_ns();
    let mut last = read_all(meters, begin);
    let mut changes: Vec<Vec<u64>> = vec![Vec::new(); last.len()];
    let steps = BURST / BURST_STEP;
    for k in 1..=steps {
        if time.sleep_until(begin + k * BURST_STEP, stop) == Wake::Stop {
            return Err(Stopped);
        }
        let now = time.now_ns();
        let values = read_all(meters, now);
        for (i, (v, l)) in values.iter().zip(&last).enumerate() {
            if let (Some(v), Some(l)) = (v, l) {
                if v != l {
                    changes[i].push(now);
                }
            }
        }
        last = values;
    }
    // Moved at least twice, and no more often than every 3/4 of an interval (a faster counter's
    // updates have no one phase against the reads).
    let slow = |c: &Vec<u64>| {
        c.len() >= 2 && {
            let span = c[c.len() - 1] - c[0];
            span / (c.len() as u64 - 1) * 4 >= interval_ns * 3
        }
    };
    Ok(Some(Probe {
        aligned: changes
            .iter()
            .position(slow)
            .and_then(|i| update_phase(&changes[i], interval_ns).map(|p| (i, p))),
        periods: changes.iter().map(|c| change_period(c)).collect(),
    }))
}

/// A stop was asked for during the start-up burst.
#[derive(Debug)]
pub struct Stopped;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_phase_is_the_middle_of_the_step_before_each_change() {
        // Updates at 33 + 100k ms, seen by 5 ms reads at 35 + 100k: phase 32.5 ms of 50.
        let changes: Vec<u64> = (0..3).map(|k| (35 + 100 * k) * MS).collect();
        assert_eq!(update_phase(&changes, 50 * MS), Some(32_500_000));
        // Both sides of the wrap: 1 ms and 49 ms average to 0, not 25.
        let p = update_phase(&[3_500_000 + 50 * MS, 51_500_000 + 50 * MS], 50 * MS).unwrap();
        assert!(!(MS..49 * MS).contains(&p), "{p}");
        assert_eq!(update_phase(&[], 50 * MS), None);
    }

    #[test]
    fn the_period_is_the_median_spacing_of_the_changes() {
        let at = |ms: &[u64]| ms.iter().map(|&m| m * MS).collect::<Vec<_>>();
        assert_eq!(change_period(&at(&[15, 35, 55, 80, 95])), Some(20 * MS));
        // Fewer than three changes, or one at nearly every read of the burst: not measured.
        assert_eq!(change_period(&at(&[15, 35])), None);
        assert_eq!(change_period(&at(&[5, 10, 15, 20, 30])), None);
    }

    #[test]
    fn the_start_is_half_an_interval_after_the_updates() {
        // Phase 32.5 ms: reads at 7.5 ms mod 50.
        assert_eq!(
            aligned_start(1_000 * MS, 32_500_000, 50 * MS),
            1_007_500_000
        );
        assert_eq!(
            aligned_start(1_010 * MS, 32_500_000, 50 * MS),
            1_057_500_000
        );
        assert_eq!(
            aligned_start(1_007_500_000, 32_500_000, 50 * MS),
            1_007_500_000
        );
    }
}
