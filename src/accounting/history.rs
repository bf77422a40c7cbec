//! The recent history the live page draws (`/history`): one point per second of ticks, with the
//! power each device drew and the energy books at that second, for the last ten minutes.
//!
//! Owns the bucketing of ticks into points and the bounded ring of points. The accounting thread
//! feeds it ([`HistoryBuilder::on_tick`] per tick, [`HistoryBuilder::after_tick`] once the books
//! are updated) and publishes a point when a tick falls into a new second; readers copy points out
//! under a short lock. Bounds: [`HISTORY_POINTS`] points (older ones dropped) of at most
//! [`HISTORY_MAX_DEVICES`] devices (devices beyond it are left out of the per-device power; the
//! books still count their energy).
//!
//! A point is the second in which ticks *arrive*: the energy of a fill (intervals announced
//! earlier, `TickPhase::Fill`) counts in the second it comes in, divided by the span it covers, so
//! a device's mean power stays right and only its place may shift by the meter's period. The
//! books are those accounting has settled by then, so attributed energy trails measured energy by
//! the settlement lag.

use std::collections::VecDeque;

use crate::ledger::LedgerTotals;
use crate::tick::{Tick, TickPhase};

/// Width of one point, clock nanoseconds (one second).
pub const HISTORY_BUCKET_NS: u64 = 1_000_000_000;

/// Points kept: ten minutes of one-second points.
pub const HISTORY_POINTS: usize = 600;

/// Devices whose power is kept per point.
pub const HISTORY_MAX_DEVICES: usize = 16;

/// One second of ticks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryPoint {
    /// Sequence number, from 1, one more per point (readers ask for points after one they have).
    pub seq: u64,
    /// End of the newest tick in the point, clock ns.
    pub end_ns: u64,
    /// Mean power of each device over the intervals measured in this point, watts, in the order of
    /// [`History::devices`]; `None` when none of its readings arrived in the point.
    pub device_power_w: Vec<Option<f64>>,
    /// The books at the end of the point (cumulative, as `/stats` shows them).
    pub totals: LedgerTotals,
    /// Idle power then, milliwatts, when known.
    pub p_idle_mw: Option<u64>,
    /// Requests registered then.
    pub in_flight: u64,
}

/// The published ring of points.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Device labels, in order of first appearance (at most [`HISTORY_MAX_DEVICES`]).
    pub devices: Vec<String>,
    /// Points, oldest first, at most [`HISTORY_POINTS`].
    pub points: VecDeque<HistoryPoint>,
}

impl History {
    /// Adds a point, dropping the oldest beyond [`HISTORY_POINTS`].
    pub fn push(&mut self, p: HistoryPoint) {
        self.points.push_back(p);
        while self.points.len() > HISTORY_POINTS {
            self.points.pop_front();
        }
    }

    /// A copy of the devices and of the points with `seq > after` (all with `after = 0`).
    pub fn since(&self, after: u64) -> History {
        // Points are in seq order: skip from the front without scanning what is returned.
        let start = self.points.partition_point(|p| p.seq <= after);
        History {
            devices: self.devices.clone(),
            points: self.points.range(start..).cloned().collect(),
        }
    }
}

/// Energy and covered time of one device in the point being built.
#[derive(Clone, Copy, Debug, Default)]
struct DeviceSum {
    energy_uj: u64,
    span_ns: u64,
}

/// The accounting thread's side: sums the ticks of the current second and closes it into a point.
#[derive(Debug, Default)]
pub struct HistoryBuilder {
    devices: Vec<String>,
    sums: Vec<DeviceSum>,
    bucket: Option<u64>,
    end_ns: u64,
    totals: LedgerTotals,
    p_idle_mw: Option<u64>,
    in_flight: u64,
    next_seq: u64,
}

impl HistoryBuilder {
    /// Counts `tick` into the current second; returns the finished point (with the device list)
    /// when `tick` starts a new second. Call it before the ledger applies the tick, so the
    /// finished point holds the books as they were at its end.
    pub fn on_tick(&mut self, tick: &Tick) -> Option<(HistoryPoint, Vec<String>)> {
        let bucket = tick.end_ns / HISTORY_BUCKET_NS;
        let closed = match self.bucket {
            Some(b) if bucket > b => Some(self.close()),
            _ => None,
        };
        if self.bucket.map_or(true, |b| bucket > b) {
            self.bucket = Some(bucket);
        }
        // An announced interval carries no energy; its fill brings it later (and the fill's span
        // is what that energy covers).
        if tick.phase != TickPhase::Announce {
            let span = tick.end_ns.saturating_sub(tick.start_ns);
            for d in &tick.devices {
                let Some(uj) = d.delta_uj else { continue };
                let Some(i) = self.device_index(&d.device) else {
                    continue;
                };
                let s = &mut self.sums[i];
                s.energy_uj = s.energy_uj.saturating_add(uj);
                s.span_ns = s.span_ns.saturating_add(span);
            }
        }
        self.end_ns = self.end_ns.max(tick.end_ns);
        closed.map(|p| (p, self.devices.clone()))
    }

    /// Records the books after a tick was applied (they close the point).
    pub fn after_tick(&mut self, totals: LedgerTotals, p_idle_mw: Option<u64>, in_flight: u64) {
        self.totals = totals;
        self.p_idle_mw = p_idle_mw;
        self.in_flight = in_flight;
    }

    fn device_index(&mut self, label: &str) -> Option<usize> {
        if let Some(i) = self.devices.iter().position(|d| d == label) {
            return Some(i);
        }
        if self.devices.len() >= HISTORY_MAX_DEVICES {
            return None;
        }
        self.devices.push(label.to_owned());
        self.sums.push(DeviceSum::default());
        Some(self.devices.len() - 1)
    }

    fn close(&mut self) -> HistoryPoint {
        self.next_seq += 1;
        let device_power_w = self
            .sums
            .iter_mut()
            .map(|s| {
                let w = (s.span_ns > 0).then(|| s.energy_uj as f64 * 1e3 / s.span_ns as f64);
                *s = DeviceSum::default();
                w
            })
            .collect();
        HistoryPoint {
            seq: self.next_seq,
            end_ns: self.end_ns,
            device_power_w,
            totals: self.totals,
            p_idle_mw: self.p_idle_mw,
            in_flight: self.in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::DeviceDelta;

    fn tick(start_ms: u64, end_ms: u64, phase: TickPhase, devices: &[(&str, u64)]) -> Tick {
        Tick {
            seq: 0,
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            delta_uj: None,
            devices: devices
                .iter()
                .map(|(d, uj)| DeviceDelta {
                    device: (*d).into(),
                    delta_uj: Some(*uj),
                })
                .collect(),
            phase,
        }
    }

    #[test]
    fn one_point_per_second_with_mean_power_and_the_books_at_its_end() {
        let mut b = HistoryBuilder::default();
        // 100 W on gpu0 and 50 W on gpu1 for 500 ms each: 50 J and 25 J.
        assert!(b
            .on_tick(&tick(0, 500, TickPhase::Whole, &[("gpu0", 50_000_000)]))
            .is_none());
        b.after_tick(LedgerTotals::default(), None, 0);
        assert!(b
            .on_tick(&tick(
                500,
                999,
                TickPhase::Whole,
                &[("gpu0", 49_900_000), ("gpu1", 24_950_000)]
            ))
            .is_none());
        let books = LedgerTotals {
            measured_uj: 7,
            ..LedgerTotals::default()
        };
        b.after_tick(books, Some(40_000), 3);
        let (p, devices) = b
            .on_tick(&tick(999, 1500, TickPhase::Announce, &[]))
            .expect("a new second closes the first");
        assert_eq!(devices, ["gpu0", "gpu1"]);
        assert_eq!(p.seq, 1);
        assert_eq!(p.end_ns, 999_000_000);
        assert_eq!(p.totals.measured_uj, 7);
        assert_eq!((p.p_idle_mw, p.in_flight), (Some(40_000), 3));
        let w: Vec<f64> = p.device_power_w.iter().map(|w| w.unwrap_or(-1.0)).collect();
        assert!(
            (w[0] - 100.0).abs() < 1e-9 && (w[1] - 50.0).abs() < 1e-9,
            "{w:?}"
        );
        // The announced interval's energy arrives with its fill, over the span it covers.
        b.on_tick(&tick(999, 1500, TickPhase::Fill, &[("gpu0", 100_000_000)]));
        let (p, _) = b
            .on_tick(&tick(2000, 2100, TickPhase::Whole, &[]))
            .expect("closes");
        assert_eq!(p.seq, 2);
        assert_eq!(p.device_power_w.len(), 2);
        assert!((p.device_power_w[0].unwrap_or(0.0) - 199.6).abs() < 0.1);
        assert_eq!(p.device_power_w[1], None, "no gpu1 reading in that second");
    }

    #[test]
    fn ring_and_devices_are_bounded_and_since_skips_what_a_reader_has() {
        let mut h = History::default();
        for seq in 1..=(HISTORY_POINTS as u64 + 5) {
            h.push(HistoryPoint {
                seq,
                ..HistoryPoint::default()
            });
        }
        assert_eq!(h.points.len(), HISTORY_POINTS);
        assert_eq!(h.points.front().map(|p| p.seq), Some(6));
        let tail = h.since(HISTORY_POINTS as u64 + 3);
        assert_eq!(
            tail.points.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [HISTORY_POINTS as u64 + 4, HISTORY_POINTS as u64 + 5]
        );
        assert_eq!(h.since(0).points.len(), HISTORY_POINTS);

        let mut b = HistoryBuilder::default();
        let names: Vec<String> = (0..HISTORY_MAX_DEVICES + 3)
            .map(|i| format!("d{i}"))
            .collect();
        let many: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        b.on_tick(&tick(0, 10, TickPhase::Whole, &many));
        let (p, devices) = b
            .on_tick(&tick(1000, 1010, TickPhase::Whole, &[]))
            .expect("closes");
        assert_eq!(devices.len(), HISTORY_MAX_DEVICES);
        assert_eq!(p.device_power_w.len(), HISTORY_MAX_DEVICES);
    }
}
