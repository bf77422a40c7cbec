//! The neutral record between meters and accounting: one sampler interval and the energy measured in it.
//!
//! The sampler produces [`Tick`]s; the accounting glue feeds them to the ledger. Neither side knows
//! the other's internals (scaphandre's sensors/exporters split, with integer readings).

/// Energy measured on one device over one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDelta {
    /// Stable device label, e.g. `nvml:0`, `rapl:package-0`, `sim`.
    pub device: String,
    /// Micro-joules in the interval, or `None` when the reading failed (the interval is unavailable
    /// for this device).
    pub delta_uj: Option<u64>,
}

/// One sampler interval `(start_ns, end_ns]` on the shared [`crate::clock::Clock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// Sequence number, starting at 1 and increasing by one per interval.
    pub seq: u64,
    /// Start of the interval (exclusive), clock nanoseconds.
    pub start_ns: u64,
    /// End of the interval (inclusive), clock nanoseconds.
    pub end_ns: u64,
    /// Total micro-joules over all devices, or `None` if any device's reading failed: a partial sum
    /// would silently under-report, so the whole interval is unavailable instead.
    pub delta_uj: Option<u64>,
    /// Per-device detail.
    pub devices: Vec<DeviceDelta>,
}
