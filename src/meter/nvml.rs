//! `nvml`, `nvml:0,1`, `nvml:GPU-<uuid>,...`: NVIDIA GPUs through NVML (nvml-wrapper).
//!
//! NVML is initialised once per process (a [`OnceLock`]): the library is process-global, and
//! `nvmlInit`/`nvmlShutdown` pairs from several meters would race. Loading tries the crate's default
//! name (`libnvidia-ml.so.1` on Linux), then `libnvidia-ml.so.1` and `libnvidia-ml.so` explicitly
//! through `Nvml::builder().lib_path(..)`. Every failure (library missing, driver not loaded, no
//! permission, not supported, MIG) becomes a [`NvmlUnavailable`] status, never a panic.
//!
//! Per device the energy counter `total_energy_consumption` (mJ, Volta+) is preferred; where it is not
//! supported, the instantaneous power field `NVML_FI_DEV_POWER_INSTANT` is integrated with the
//! trapezoid rule between sampler reads. `power_usage` is never used: on Ampere and later it is a
//! one-second average, which would smear energy across ticks.
//!
//! Reading the counter is expensive: on an H200 (driver 580) each call spends ~3 ms of CPU in the
//! driver, where the instantaneous power field costs microseconds. With `counter_ms=N` the counter is
//! read at most every N ms and the instantaneous power at every read; each reading carries that power
//! ([`Reading::power_mw`]) and the sampler spreads the counter's increments in proportion to its
//! integral, so energy stays the counter's (exact over every counter read) and its timeline within a
//! read follows the power. Where the power field fails, the counter is read every time.

use std::ffi::OsStr;
use std::sync::OnceLock;

use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_POWER_INSTANT;
use nvml_wrapper::{Device, Nvml};

use super::spec::NvmlSelector;
use super::{DeviceInfo, Meter, Method, ReadError, Reading, Unavailable};

/// Why NVML (or one GPU through it) cannot be metered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NvmlUnavailable {
    /// `libnvidia-ml.so(.1)` could not be loaded.
    #[error("NVML unavailable: cannot load libnvidia-ml.so.1 or libnvidia-ml.so ({0}); no NVIDIA driver on this machine?")]
    LibraryNotFound(String),
    /// The library loaded but the kernel driver is not running.
    #[error("NVML unavailable: the NVIDIA driver is not loaded")]
    DriverNotLoaded,
    /// The caller lacks permission.
    #[error("NVML unavailable: no permission{0}")]
    NoPermission(String),
    /// The GPU supports neither the energy counter nor instantaneous power.
    #[error("NVML: {0} supports neither the energy counter nor instantaneous power")]
    NotSupported(String),
    /// A MIG instance: NVML meters only whole GPUs.
    #[error("NVML: {0} is a MIG instance; NVML reports energy only for the whole GPU (select its GPU- UUID)")]
    Mig(String),
    /// No GPU visible.
    #[error("NVML: no GPU visible")]
    NoDevices,
    /// A selected GPU does not exist.
    #[error("NVML: no GPU {0}")]
    NoSuchGpu(String),
    /// Any other NVML error.
    #[error("NVML unavailable: {0}")]
    Other(String),
}

impl NvmlUnavailable {
    fn from_error(e: &NvmlError, what: &str) -> Self {
        match e {
            NvmlError::LibloadingError(l) => Self::LibraryNotFound(l.to_string()),
            NvmlError::LibraryNotFound => Self::LibraryNotFound("library not found".into()),
            NvmlError::FailedToLoadSymbol(s) => {
                Self::LibraryNotFound(format!("missing symbol {s}"))
            }
            NvmlError::DriverNotLoaded => Self::DriverNotLoaded,
            NvmlError::NoPermission => Self::NoPermission(if what.is_empty() {
                String::new()
            } else {
                format!(" for {what}")
            }),
            NvmlError::NotSupported => Self::NotSupported(what.to_owned()),
            NvmlError::NotFound | NvmlError::InvalidArg => Self::NoSuchGpu(what.to_owned()),
            other => Self::Other(format!("{what}: {other}")),
        }
    }
}

static NVML: OnceLock<Result<Nvml, NvmlUnavailable>> = OnceLock::new();

/// The process-wide NVML handle, initialised on first use; later calls return the same outcome.
pub fn nvml() -> Result<&'static Nvml, NvmlUnavailable> {
    NVML.get_or_init(init).as_ref().map_err(Clone::clone)
}

fn init() -> Result<Nvml, NvmlUnavailable> {
    let first = match Nvml::init() {
        Ok(n) => return Ok(n),
        Err(e) => e,
    };
    // Only a load failure is worth retrying under another name; a loaded library that reports
    // "driver not loaded" will say the same again.
    if matches!(
        first,
        NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::FailedToLoadSymbol(_)
    ) {
        for name in ["libnvidia-ml.so.1", "libnvidia-ml.so"] {
            if let Ok(n) = Nvml::builder().lib_path(OsStr::new(name)).init() {
                return Ok(n);
            }
        }
    }
    Err(NvmlUnavailable::from_error(&first, ""))
}

/// Trapezoid integration state of one device, in mW·ns so no fraction of a micro-joule is lost.
#[derive(Debug, Default)]
struct Integrator {
    last: Option<(u64, u64)>,
    mw_ns: u128,
}

impl Integrator {
    fn add(&mut self, now_ns: u64, power_mw: u64) -> u64 {
        if let Some((t, p)) = self.last {
            let dt = u128::from(now_ns.saturating_sub(t));
            self.mw_ns += (u128::from(p) + u128::from(power_mw)) * dt / 2;
        }
        self.last = Some((now_ns, power_mw));
        // mW * ns = 1e-12 J = 1e-6 uJ.
        u64::try_from(self.mw_ns / 1_000_000).unwrap_or(u64::MAX)
    }
}

struct Gpu {
    handle: Device<'static>,
    integrator: Option<Integrator>,
    sparse: Option<SparseCounter>,
}

/// The energy counter read at most every `every_ns` (`counter_ms=N`), its last value reported between.
#[derive(Debug)]
struct SparseCounter {
    every_ns: u64,
    /// The last counter read: when, and its value in micro-joules.
    last: Option<(u64, u64)>,
}

/// Reads due within this much of `counter_ms` are taken: sampler reads land a little after their
/// deadlines, and waiting for the next one would read every other deadline late.
const SPARSE_SLACK_NS: u64 = 2_000_000;

impl SparseCounter {
    fn due(&self, now_ns: u64) -> bool {
        self.last.map_or(true, |(at, _)| {
            now_ns.saturating_sub(at).saturating_add(SPARSE_SLACK_NS) >= self.every_ns
        })
    }
}

/// Meters one or more GPUs through NVML.
pub struct NvmlMeter {
    gpus: Vec<Gpu>,
    infos: Vec<DeviceInfo>,
}

impl std::fmt::Debug for NvmlMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlMeter")
            .field("devices", &self.infos)
            .finish()
    }
}

impl NvmlMeter {
    /// Opens the selected GPUs (all visible ones when `selectors` is empty). GPUs that cannot be
    /// metered are returned as [`Unavailable`] entries; if none can, the whole meter is unavailable.
    /// With `counter_ms`, each GPU's energy counter is read at most that often (see the module
    /// documentation); GPUs without the counter integrate instantaneous power as always.
    pub fn open(
        selectors: &[NvmlSelector],
        counter_ms: Option<u64>,
    ) -> Result<(NvmlMeter, Vec<Unavailable>), NvmlUnavailable> {
        let nvml = nvml()?;
        let selectors: Vec<NvmlSelector> = if selectors.is_empty() {
            let n = nvml
                .device_count()
                .map_err(|e| NvmlUnavailable::from_error(&e, "device count"))?;
            (0..n).map(NvmlSelector::Index).collect()
        } else {
            selectors.to_vec()
        };
        if selectors.is_empty() {
            return Err(NvmlUnavailable::NoDevices);
        }
        let driver = nvml.sys_driver_version().ok();
        let version = nvml.sys_nvml_version().ok();
        let mut meter = NvmlMeter {
            gpus: Vec::new(),
            infos: Vec::new(),
        };
        let mut unavailable = Vec::new();
        let mut last_err = None;
        for sel in &selectors {
            let what = match sel {
                NvmlSelector::Index(i) => format!("GPU {i}"),
                NvmlSelector::Uuid(u) => u.clone(),
            };
            match open_one(nvml, sel, &what) {
                Ok((mut gpu, mut info)) => {
                    if let (None, Some(ms)) = (&gpu.integrator, counter_ms) {
                        let every_ns = ms.saturating_mul(1_000_000);
                        gpu.sparse = Some(SparseCounter {
                            every_ns,
                            last: None,
                        });
                        // Read this often, the counter moves once per read of it: the sampler
                        // holds intervals from the first read instead of learning that.
                        info.period_ns = Some(every_ns);
                    }
                    info.driver_version = driver.clone();
                    info.nvml_version = version.clone();
                    meter.gpus.push(gpu);
                    meter.infos.push(info);
                }
                Err(e) => {
                    unavailable.push(Unavailable {
                        spec: format!("nvml:{what}"),
                        reason: e.to_string(),
                    });
                    last_err = Some(e);
                }
            }
        }
        match (meter.gpus.is_empty(), last_err) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(NvmlUnavailable::NoDevices),
            (false, _) => Ok((meter, unavailable)),
        }
    }
}

fn open_one(
    nvml: &'static Nvml,
    sel: &NvmlSelector,
    what: &str,
) -> Result<(Gpu, DeviceInfo), NvmlUnavailable> {
    let (handle, label) = match sel {
        NvmlSelector::Index(i) => (nvml.device_by_index(*i), format!("nvml:{i}")),
        NvmlSelector::Uuid(u) => (nvml.device_by_uuid(u.as_str()), format!("nvml:{u}")),
    };
    let handle = handle.map_err(|e| NvmlUnavailable::from_error(&e, what))?;
    let is_mig = matches!(sel, NvmlSelector::Uuid(u) if u.starts_with("MIG-"))
        || handle.mig_is_mig_device_handle().unwrap_or(false);
    let method = match handle.total_energy_consumption() {
        Ok(_) => Method::NvmlEnergyCounter,
        Err(NvmlError::NotSupported) => match instant_power_mw(&handle) {
            Ok(_) => Method::NvmlPowerIntegration,
            Err(_) if is_mig => return Err(NvmlUnavailable::Mig(what.to_owned())),
            Err(e) => return Err(NvmlUnavailable::from_error(&e, what)),
        },
        Err(_) if is_mig => return Err(NvmlUnavailable::Mig(what.to_owned())),
        Err(e) => return Err(NvmlUnavailable::from_error(&e, what)),
    };
    let mut info = DeviceInfo::new(
        label,
        handle.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
        method,
    );
    info.uuid = handle.uuid().ok();
    info.power_limit_w = handle
        .enforced_power_limit()
        .ok()
        .map(|mw| f64::from(mw) / 1000.0);
    let integrator = (method == Method::NvmlPowerIntegration).then(Integrator::default);
    Ok((
        Gpu {
            handle,
            integrator,
            sparse: None,
        },
        info,
    ))
}

/// Reads `NVML_FI_DEV_POWER_INSTANT` in milliwatts.
fn instant_power_mw(handle: &Device<'_>) -> Result<u64, NvmlError> {
    field_u64(handle, NVML_FI_DEV_POWER_INSTANT)
}

/// One NVML field value as an integer (negative or non-finite values read as 0), e.g.
/// `NVML_FI_DEV_POWER_INSTANT` in mW or `NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION` in mJ.
pub fn field_u64(handle: &Device<'_>, id: u32) -> Result<u64, NvmlError> {
    let values = handle.field_values_for(&[FieldId(id)])?;
    let sample = values.into_iter().next().ok_or(NvmlError::NotSupported)??;
    Ok(match sample.value? {
        SampleValue::U32(v) => u64::from(v),
        SampleValue::U64(v) => v,
        SampleValue::I64(v) => u64::try_from(v).unwrap_or(0),
        SampleValue::F64(v) if v.is_finite() && v > 0.0 => v.round() as u64,
        SampleValue::F64(_) => 0,
    })
}

impl Meter for NvmlMeter {
    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError> {
        let gpu = self
            .gpus
            .get_mut(index)
            .ok_or(ReadError::NoSuchDevice(index))?;
        let counter_uj = |handle: &Device<'_>| {
            handle
                .total_energy_consumption()
                .map(|mj| mj.saturating_mul(1_000))
                .map_err(|e| ReadError::Nvml(e.to_string()))
        };
        let (energy_uj, power_mw) = match (&mut gpu.integrator, &mut gpu.sparse) {
            (Some(integ), _) => {
                let mw =
                    instant_power_mw(&gpu.handle).map_err(|e| ReadError::Nvml(e.to_string()))?;
                (integ.add(now_ns, mw), None)
            }
            (None, None) => (counter_uj(&gpu.handle)?, None),
            (None, Some(sparse)) => {
                // No power, no shape: then the counter is read every time, as without counter_ms.
                let power_mw = instant_power_mw(&gpu.handle).ok();
                let energy_uj = match sparse.last {
                    Some((_, value)) if power_mw.is_some() && !sparse.due(now_ns) => value,
                    _ => {
                        let value = counter_uj(&gpu.handle)?;
                        sparse.last = Some((now_ns, value));
                        value
                    }
                };
                (energy_uj, power_mw)
            }
        };
        Ok(Reading {
            energy_uj,
            at_ns: now_ns,
            ended: false,
            power_mw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_cleanly_without_a_driver() {
        // This machine has no libnvidia-ml: every entry point must report, not crash. On a GPU host the
        // same calls succeed, so only the shape of the outcome is checked there.
        match NvmlMeter::open(&[], Some(1000)) {
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("NVML"), "{text}");
                // Initialised once: the handle reports the same failure again.
                if let Err(init) = nvml() {
                    assert_eq!(init, e);
                }
                let set = crate::meter::build_meters(&["nvml:0,1".parse().expect("spec")])
                    .expect("no build error");
                assert_eq!(set.meters.len(), 0);
                assert_eq!(set.unavailable.len(), 1);
                let default = crate::meter::default_meters();
                assert!(default.meters.is_empty());
                assert!(default.unavailable[0]
                    .reason
                    .contains("energy is unavailable"));
            }
            Ok((m, _)) => assert!(!m.devices().is_empty()),
        }
    }

    #[test]
    fn trapezoid_integration_is_exact() {
        let mut i = Integrator::default();
        assert_eq!(i.add(0, 100_000), 0);
        // 100 W -> 300 W over 1 s: mean 200 W = 200 J.
        assert_eq!(i.add(1_000_000_000, 300_000), 200_000_000);
        // 300 W for 1 ns: 0.3 uJ accumulates without loss.
        assert_eq!(i.add(1_000_000_001, 300_000), 200_000_000);
        assert_eq!(i.add(1_000_000_005, 300_000), 200_000_001);
    }
}
