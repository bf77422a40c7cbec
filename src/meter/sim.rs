//! `sim[:WATTS]` and the in-process shared counter: synthetic energy for the demo, tests and benches.
//!
//! The constant-power meter computes its energy from the timestamp it is read at (`P * t` since the
//! clock's epoch), so it is exact and deterministic given the read times. The shared-counter meter
//! reads an `Arc<AtomicU64>` of micro-joules that the simulated engine advances as it "works".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{DeviceInfo, Meter, Method, ReadError, Reading};

enum Source {
    Constant { microwatts: u64 },
    Shared(Arc<AtomicU64>),
}

/// A simulated meter with one device.
pub struct SimMeter {
    source: Source,
    info: [DeviceInfo; 1],
}

impl std::fmt::Debug for SimMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMeter")
            .field("device", &self.info[0].label)
            .finish()
    }
}

impl SimMeter {
    /// Constant power, labelled `sim`. Negative or non-finite watts count as 0.
    pub fn constant(watts: f64) -> Self {
        let microwatts = if watts.is_finite() && watts > 0.0 {
            (watts * 1e6).round() as u64
        } else {
            0
        };
        let mut info = DeviceInfo::new("sim", format!("simulated {watts} W"), Method::Simulated);
        info.power_limit_w = Some(watts.max(0.0));
        SimMeter {
            source: Source::Constant { microwatts },
            info: [info],
        }
    }

    /// Reads `counter` (cumulative micro-joules written by the simulated engine) as device `label`.
    pub fn from_shared_counter(label: impl Into<String>, counter: Arc<AtomicU64>) -> Self {
        let label = label.into();
        let info = DeviceInfo::new(
            label.clone(),
            format!("shared counter {label}"),
            Method::SharedCounter,
        );
        SimMeter {
            source: Source::Shared(counter),
            info: [info],
        }
    }

    /// The constant meter's energy at `t_ns`: `P * t`, rounded down to whole micro-joules.
    pub fn energy_at(microwatts: u64, t_ns: u64) -> u64 {
        let uj = u128::from(microwatts) * u128::from(t_ns) / 1_000_000_000;
        u64::try_from(uj).unwrap_or(u64::MAX)
    }
}

impl Meter for SimMeter {
    fn devices(&self) -> &[DeviceInfo] {
        &self.info
    }

    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError> {
        if index != 0 {
            return Err(ReadError::NoSuchDevice(index));
        }
        let energy_uj = match &self.source {
            Source::Constant { microwatts } => Self::energy_at(*microwatts, now_ns),
            Source::Shared(c) => c.load(Ordering::Acquire),
        };
        Ok(Reading {
            energy_uj,
            at_ns: now_ns,
            ended: false,
            power_mw: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_power_is_exact_and_deterministic() {
        let mut a = SimMeter::constant(100.0);
        let mut b = SimMeter::constant(100.0);
        for t in [0u64, 1, 50_000_000, 1_000_000_000, 3_600_000_000_000] {
            assert_eq!(a.read(0, t).ok(), b.read(0, t).ok());
        }
        // 100 W for 50 ms = 5 J.
        assert_eq!(
            a.read(0, 50_000_000).map(|r| r.energy_uj).ok(),
            Some(5_000_000)
        );
        assert_eq!(
            SimMeter::constant(f64::NAN)
                .read(0, 1_000_000_000)
                .map(|r| r.energy_uj)
                .ok(),
            Some(0)
        );
        assert!(a.read(1, 0).is_err());
    }

    #[test]
    fn shared_counter_is_read_as_written() {
        let c = Arc::new(AtomicU64::new(0));
        let mut m = SimMeter::from_shared_counter("sim-gpu", c.clone());
        assert_eq!(m.devices()[0].label, "sim-gpu");
        c.fetch_add(1234, Ordering::Release);
        assert_eq!(m.read(0, 9).map(|r| r.energy_uj).ok(), Some(1234));
    }
}
