//! Energy sources behind one [`Meter`] trait: NVML, counter files (RAPL, hwmon), simulated, replay.
//!
//! This module owns the trait, the device description every meter publishes, the meter specs of
//! `--meter` and the config file ([`MeterSpec`]), and [`build_meters`], which turns specs into meters.
//! One file per meter kind. Meters only read: turning cumulative readings into per-interval energy
//! (wraps, resets, plausibility) is [`counter::CounterTracker`]'s job, driven by the sampler. Meters
//! are never read from a scrape handler: `/stats` and `/metrics` read [`status::SamplerStatus`].

pub mod counter;
pub mod counter_file;
pub mod log_power;
pub mod nvml;
pub mod rapl;
pub mod replay;
pub mod sim;
pub mod spec;
pub mod status;

use std::path::PathBuf;

pub use spec::{MeterKind, MeterSpec, NvmlSelector, SpecError, Unit, Wrap};

/// One cumulative energy reading of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Cumulative energy in micro-joules since an arbitrary, meter-specific origin. Only differences
    /// between readings of the same device carry meaning.
    pub energy_uj: u64,
    /// When the reading was taken, on the shared [`crate::clock::Clock`] (nanoseconds).
    pub at_ns: u64,
    /// The source has no more data and holds its last value (a replay past the end of its trace).
    pub ended: bool,
    /// Instantaneous power at the read, milliwatts, from a meter that reads its energy counter
    /// less often than it is sampled (`nvml:...,counter_ms=N`): the sampler spreads each counter
    /// increment over the intervals it covers in proportion to this power's integral (the
    /// *shape*), instead of their length. `None` for every other meter.
    pub power_mw: Option<u64>,
}

/// How a device's energy is obtained (reported per device in `/stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// NVML `total_energy_consumption` (mJ counter, Volta and later).
    NvmlEnergyCounter,
    /// Trapezoid integration of NVML's instantaneous power field (`NVML_FI_DEV_POWER_INSTANT`).
    NvmlPowerIntegration,
    /// A cumulative counter in a file.
    CounterFile,
    /// A RAPL package domain (a counter file found under the powercap tree).
    Rapl,
    /// Synthetic constant power, computed from the timestamp.
    Simulated,
    /// An in-process counter written by the simulated engine.
    SharedCounter,
    /// A CSV trace written by `joulegate log-power`.
    Replay,
}

impl Method {
    /// The kebab-case name used in `/stats` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::NvmlEnergyCounter => "nvml-energy-counter",
            Method::NvmlPowerIntegration => "nvml-power-integration",
            Method::CounterFile => "counter-file",
            Method::Rapl => "rapl",
            Method::Simulated => "simulated",
            Method::SharedCounter => "shared-counter",
            Method::Replay => "replay",
        }
    }
}

/// What a meter knows about one of its devices; fixed for the meter's life.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    /// Stable label used in ticks, metrics and CSV, e.g. `nvml:0`, `rapl:package-0`, `sim`.
    pub label: String,
    /// Human name (GPU model, RAPL domain name, file path).
    pub name: String,
    /// GPU UUID where there is one.
    pub uuid: Option<String>,
    /// How the energy is obtained.
    pub method: Method,
    /// Driver version (NVML only).
    pub driver_version: Option<String>,
    /// NVML library version (NVML only).
    pub nvml_version: Option<String>,
    /// Enforced power limit in watts, where known.
    pub power_limit_w: Option<f64>,
    /// The counter's wrap modulus in micro-joules, where known (RAPL `max_energy_range_uj`).
    pub wrap_uj: Option<u64>,
    /// How often the counter updates, when configured for this meter (a spec's `period_ms=N`);
    /// `None` lets the sampler learn it. `/stats` reports the period in force per device.
    #[serde(skip)]
    pub period_ns: Option<u64>,
}

impl DeviceInfo {
    /// A minimal description; optional fields empty.
    pub fn new(label: impl Into<String>, name: impl Into<String>, method: Method) -> Self {
        DeviceInfo {
            label: label.into(),
            name: name.into(),
            uuid: None,
            method,
            driver_version: None,
            nvml_version: None,
            power_limit_w: None,
            wrap_uj: None,
            period_ns: None,
        }
    }
}

/// A reading that failed. The sampler marks that interval unavailable for that device and counts it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The counter file could not be read (missing, permission, I/O).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The counter file does not hold a non-negative integer.
    #[error("{path} does not hold an integer counter (read {content:?})")]
    Garbage {
        /// The file.
        path: PathBuf,
        /// The first bytes read, for the log.
        content: String,
    },
    /// The counter, converted to micro-joules, does not fit in 64 bits.
    #[error("{path}: counter value overflows micro-joules")]
    Overflow {
        /// The file.
        path: PathBuf,
    },
    /// An NVML call failed.
    #[error("NVML: {0}")]
    Nvml(String),
    /// The meter was asked for a device it does not have (a caller bug, reported rather than panicking).
    #[error("no device {0} in this meter")]
    NoSuchDevice(usize),
}

/// An energy source: one or more devices, each with a cumulative micro-joule counter.
///
/// Calls may block briefly (file or driver reads); the sampler calls them from its own thread.
pub trait Meter: Send {
    /// The devices, in a fixed order; [`Meter::read`]'s `index` refers to it.
    fn devices(&self) -> &[DeviceInfo];
    /// Reads device `index` at about `now_ns` (shared clock). Must not panic on any input.
    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError>;
}

/// `meter` with every device's update period configured to `period_ns` (a spec's `period_ms=N`):
/// the sampler then spreads its increments from the first read instead of learning the period.
pub fn with_period(meter: Box<dyn Meter>, period_ns: u64) -> Box<dyn Meter> {
    let devices = meter
        .devices()
        .iter()
        .cloned()
        .map(|mut d| {
            d.period_ns = Some(period_ns).filter(|&p| p > 0);
            d
        })
        .collect();
    Box::new(WithPeriod {
        inner: meter,
        devices,
    })
}

struct WithPeriod {
    inner: Box<dyn Meter>,
    devices: Vec<DeviceInfo>,
}

impl Meter for WithPeriod {
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError> {
        self.inner.read(index, now_ns)
    }
}

/// A meter that was asked for but cannot measure (library missing, no permission, no RAPL domain).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unavailable {
    /// The spec as given (`nvml:0`, `rapl`).
    pub spec: String,
    /// Why, in words a user can act on.
    pub reason: String,
}

/// The meters built from a list of specs, and those that could not be built.
#[derive(Default)]
pub struct MeterSet {
    /// Working meters.
    pub meters: Vec<Box<dyn Meter>>,
    /// Specs that yielded no working device; energy from them is `unavailable`.
    pub unavailable: Vec<Unavailable>,
}

impl MeterSet {
    /// Total number of devices over all meters.
    pub fn device_count(&self) -> usize {
        self.meters.iter().map(|m| m.devices().len()).sum()
    }
}

impl std::fmt::Debug for MeterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self
            .meters
            .iter()
            .flat_map(|m| m.devices().iter().map(|d| d.label.as_str()))
            .collect();
        f.debug_struct("MeterSet")
            .field("devices", &labels)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

/// A spec that names something unusable as given: a configuration error, reported at start-up.
///
/// Runtime conditions (no GPU driver, a counter file that is missing right now) are not errors: they
/// become [`Unavailable`] entries or unavailable intervals.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The `wrap-file` of a counter-file spec cannot be read or parsed.
    #[error("meter {spec:?}: wrap-file {path}: {reason}")]
    WrapFile {
        /// The spec.
        spec: String,
        /// The wrap file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A replay trace cannot be read or parsed.
    #[error("meter {spec:?}: {source}")]
    Replay {
        /// The spec.
        spec: String,
        /// The trace error.
        source: replay::TraceError,
    },
}

/// Builds meters from specs. NVML and RAPL problems become [`Unavailable`] entries; a bad replay trace
/// or wrap file is a [`BuildError`].
pub fn build_meters(specs: &[MeterSpec]) -> Result<MeterSet, BuildError> {
    let mut set = MeterSet::default();
    for spec in specs {
        let text = spec.to_string();
        let before = set.meters.len();
        match &spec.kind {
            MeterKind::Nvml {
                selectors,
                counter_ms,
            } => match nvml::NvmlMeter::open(selectors, *counter_ms) {
                Ok((meter, partial)) => {
                    set.meters.push(Box::new(meter));
                    set.unavailable.extend(partial);
                }
                Err(e) => set.unavailable.push(Unavailable {
                    spec: text,
                    reason: e.to_string(),
                }),
            },
            MeterKind::CounterFile { path, unit, wrap } => {
                let meter = counter_file::CounterFileMeter::from_spec(path, *unit, wrap.as_ref())
                    .map_err(|reason| BuildError::WrapFile {
                    spec: text.clone(),
                    path: wrap_path(wrap.as_ref()),
                    reason: reason.to_string(),
                })?;
                set.meters.push(Box::new(meter));
            }
            MeterKind::Rapl { root } => match rapl::discover(root) {
                Ok(meter) => set.meters.push(Box::new(meter)),
                Err(e) => set.unavailable.push(Unavailable {
                    spec: text,
                    reason: e.to_string(),
                }),
            },
            MeterKind::Sim { watts } => set.meters.push(Box::new(sim::SimMeter::constant(*watts))),
            MeterKind::Replay { path } => {
                let meter = replay::ReplayMeter::open(path)
                    .map_err(|source| BuildError::Replay { spec: text, source })?;
                set.meters.push(Box::new(meter));
            }
        }
        if let Some(ms) = spec.period_ms {
            let ns = ms.saturating_mul(1_000_000);
            for m in set.meters.iter_mut().skip(before) {
                let inner = std::mem::replace(m, Box::new(NoDevices));
                *m = with_period(inner, ns);
            }
        }
    }
    Ok(set)
}

/// A placeholder while a meter is being wrapped; never read.
struct NoDevices;

impl Meter for NoDevices {
    fn devices(&self) -> &[DeviceInfo] {
        &[]
    }

    fn read(&mut self, index: usize, _now_ns: u64) -> Result<Reading, ReadError> {
        Err(ReadError::NoSuchDevice(index))
    }
}

fn wrap_path(wrap: Option<&Wrap>) -> PathBuf {
    match wrap {
        Some(Wrap::File(p)) => p.clone(),
        _ => PathBuf::new(),
    }
}

/// The meters used when none is configured: NVML (all visible GPUs) if it initialises, otherwise none.
/// The returned set's `unavailable` says why energy is unavailable; callers state it once at start-up.
pub fn default_meters() -> MeterSet {
    let mut set = MeterSet::default();
    match nvml::NvmlMeter::open(&[], None) {
        Ok((meter, partial)) => {
            set.meters.push(Box::new(meter));
            set.unavailable.extend(partial);
        }
        Err(e) => set.unavailable.push(Unavailable {
            spec: "nvml (default)".to_owned(),
            reason: format!("{e}; energy is unavailable (give --meter to use another source)"),
        }),
    }
    set
}
