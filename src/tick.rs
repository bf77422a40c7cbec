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

/// Whether a tick carries its interval's energy, announces an interval whose energy comes later,
/// or brings the energy of intervals announced before.
///
/// A meter slower than the sampler moves its counter only every few reads; the sampler spreads
/// each increment over the intervals it covers (`sampler::spread`), so an interval's energy is
/// final only once the counter has moved past it. The interval itself is announced at once, so
/// that accounting reads the requests' progress when the interval ends (where their work
/// belongs), and its energy follows in a [`TickPhase::Fill`] tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TickPhase {
    /// The interval with its final energy.
    #[default]
    Whole,
    /// The interval ended; its energy follows. `delta_uj` is only an estimate of it (what the
    /// meter has shown of the interval so far, scaled to its length; `None` where nothing of it
    /// was measured yet), for provisional figures; it is never booked.
    Announce,
    /// The final energy of `(start_ns, end_ns]`, which earlier `Announce` ticks covered.
    Fill,
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
    /// Whether the energy is here, to come, or for earlier announced intervals.
    pub phase: TickPhase,
}
