//! Meter specs as written on the command line (`--meter`) and in the config file, and their parsing.
//!
//! Grammar (one spec per `--meter`):
//! - `nvml`, `nvml:0,1`, `nvml:GPU-<uuid>,...`: NVML GPUs by index or UUID (default: all visible),
//!   optionally with `counter_ms=N` among them (`nvml:counter_ms=1000`, `nvml:0,1,counter_ms=500`,
//!   `nvml,counter_ms=1000`): read the energy counter at most every N ms (1..=5000) and the cheap
//!   instantaneous power at every sample, whose integral shapes each counter increment over the
//!   intervals it covers. On an H200 one counter read costs ~3 ms of CPU in the driver.
//! - `counter-file:PATH[,unit=uj|mj|j][,wrap=N|wrap-file=PATH]`: a cumulative counter in a file.
//!   Options are recognised from the right, so a path may itself contain commas.
//! - `rapl[:ROOT]`: the RAPL package domains under a powercap root (default `/sys/class/powercap`).
//! - `sim[:WATTS]`: synthetic constant power (default 100 W).
//! - `replay:PATH`: a CSV trace written by `joulegate log-power`.
//!
//! Any spec may end with `,period_ms=N` (`nvml:0,period_ms=100`, `sim:300,period_ms=100`,
//! `nvml,period_ms=20`; for counter files among the other options): how often that meter's counter
//! updates, N in 1..=60000. The sampler then spreads its increments from the first read instead of
//! learning the period, and this wins over the `meter_period_ms` setting.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The default powercap root searched by `rapl`.
pub const DEFAULT_POWERCAP_ROOT: &str = "/sys/class/powercap";
/// The default power of `sim`.
pub const DEFAULT_SIM_WATTS: f64 = 100.0;

/// One GPU selected for NVML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvmlSelector {
    /// By NVML index.
    Index(u32),
    /// By UUID (`GPU-...`, or `MIG-...`, which NVML cannot meter and reports as unavailable).
    Uuid(String),
}

/// Unit of a counter file's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Unit {
    /// Micro-joules (RAPL `energy_uj`, hwmon `energy*_input`).
    #[default]
    Microjoules,
    /// Milli-joules.
    Millijoules,
    /// Joules.
    Joules,
}

impl Unit {
    /// Micro-joules per unit.
    pub fn factor(self) -> u64 {
        match self {
            Unit::Microjoules => 1,
            Unit::Millijoules => 1_000,
            Unit::Joules => 1_000_000,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Unit::Microjoules => "uj",
            Unit::Millijoules => "mj",
            Unit::Joules => "j",
        }
    }
}

/// Where a counter's wrap modulus comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wrap {
    /// A fixed modulus, in the counter's own unit.
    Range(u64),
    /// A file holding the modulus in the counter's unit (RAPL `max_energy_range_uj`).
    File(PathBuf),
}

/// The longest `period_ms` accepted (a minute: slower "meters" are not counters worth sampling).
pub const MAX_PERIOD_MS: u64 = 60_000;

/// A parsed meter spec: what to read and, optionally, how often its counter updates. In the config
/// file it is the same string as on the command line (`meters = ["nvml:0", "rapl"]`), hence the
/// string (de)serialisation.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MeterSpec {
    /// What to read.
    pub kind: MeterKind,
    /// The counter's update period in milliseconds (`period_ms=N`), if configured.
    pub period_ms: Option<u64>,
}

impl From<MeterKind> for MeterSpec {
    fn from(kind: MeterKind) -> Self {
        MeterSpec {
            kind,
            period_ms: None,
        }
    }
}

/// The kind of meter a spec names, with its kind-specific options.
#[derive(Clone, Debug, PartialEq)]
pub enum MeterKind {
    /// NVML GPUs.
    Nvml {
        /// The GPUs; empty = all visible.
        selectors: Vec<NvmlSelector>,
        /// Read the energy counter at most this often, ms (`counter_ms=N`), shaping the increments
        /// with instantaneous power; `None` = at every sample.
        counter_ms: Option<u64>,
    },
    /// A cumulative counter in a file.
    CounterFile {
        /// The counter file.
        path: PathBuf,
        /// Its unit.
        unit: Unit,
        /// Its wrap modulus, if any.
        wrap: Option<Wrap>,
    },
    /// RAPL package domains discovered under `root`.
    Rapl {
        /// The powercap root.
        root: PathBuf,
    },
    /// Synthetic constant power.
    Sim {
        /// Watts, finite and non-negative.
        watts: f64,
    },
    /// A `log-power` CSV trace.
    Replay {
        /// The trace.
        path: PathBuf,
    },
}

/// Why a meter spec does not parse; each variant names the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec is empty.
    #[error("empty meter spec (expected nvml, counter-file:PATH, rapl, sim or replay:PATH)")]
    Empty,
    /// The part before `:` is not a known kind.
    #[error("unknown meter kind {0:?} (expected nvml, counter-file, rapl, sim or replay)")]
    UnknownKind(String),
    /// An NVML device is neither an index nor a UUID.
    #[error("nvml device {0:?} is neither an index nor a GPU-/MIG- UUID")]
    BadNvmlDevice(String),
    /// A kind that needs a path has none.
    #[error("{0} needs a path, e.g. {0}:/path/to/file")]
    MissingPath(&'static str),
    /// `unit=` has an unknown value.
    #[error("unit {0:?} is not uj, mj or j")]
    BadUnit(String),
    /// `wrap=` is not a positive integer.
    #[error("wrap {0:?} is not a positive integer")]
    BadWrap(String),
    /// Both `wrap=` and `wrap-file=`, or an option given twice.
    #[error("option {0:?} given twice or conflicts with another")]
    DuplicateOption(String),
    /// `sim:` watts is not a finite non-negative number.
    #[error("sim power {0:?} is not a finite, non-negative number of watts")]
    BadWatts(String),
    /// `counter_ms=` is not an integer within 1..=5000.
    #[error("counter_ms {0:?} is not an integer number of milliseconds within 1..=5000")]
    BadCounterMs(String),
    /// `period_ms=` is not an integer within 1..=60000.
    #[error("period_ms {0:?} is not an integer number of milliseconds within 1..=60000")]
    BadPeriod(String),
}

/// Parses a `period_ms=` value.
fn parse_period(v: &str) -> Result<u64, SpecError> {
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_PERIOD_MS).contains(&n) => Ok(n),
        _ => Err(SpecError::BadPeriod(v.to_owned())),
    }
}

/// Takes a trailing `,period_ms=N` (or `:period_ms=N` right after the kind) off `s`.
fn split_period(s: &str) -> Result<(&str, Option<u64>), SpecError> {
    let cut = s.rfind([',', ':']);
    if let Some(i) = cut {
        if let Some(v) = s[i + 1..].trim().strip_prefix("period_ms=") {
            return Ok((&s[..i], Some(parse_period(v)?)));
        }
    }
    Ok((s, None))
}

impl FromStr for MeterSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        if let Some(rest) = s.strip_prefix("counter-file:") {
            // Counter files take `period_ms=` among their options, in any order.
            let (kind, period_ms) = parse_counter_file(rest)?;
            return Ok(MeterSpec { kind, period_ms });
        }
        let (s, period_ms) = split_period(s)?;
        // `nvml,counter_ms=N` reads as `nvml:counter_ms=N`, as `nvml,period_ms=N` does.
        let nvml_options;
        let s = match s.strip_prefix("nvml,") {
            Some(rest) => {
                nvml_options = format!("nvml:{rest}");
                nvml_options.as_str()
            }
            None => s,
        };
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        Ok(MeterSpec {
            kind: parse_kind(s)?,
            period_ms,
        })
    }
}

fn parse_kind(s: &str) -> Result<MeterKind, SpecError> {
    let (kind, rest) = match s.split_once(':') {
        Some((k, r)) => (k, Some(r)),
        None => (s, None),
    };
    match kind {
        "nvml" => parse_nvml(rest.unwrap_or("")),
        "counter-file" => parse_counter_file(rest.unwrap_or("")).map(|(k, _)| k),
        "rapl" => Ok(MeterKind::Rapl {
            root: PathBuf::from(
                rest.filter(|r| !r.is_empty())
                    .unwrap_or(DEFAULT_POWERCAP_ROOT),
            ),
        }),
        "sim" => parse_sim(rest),
        "replay" => match rest {
            Some(p) if !p.is_empty() => Ok(MeterKind::Replay {
                path: PathBuf::from(p),
            }),
            _ => Err(SpecError::MissingPath("replay")),
        },
        other => Err(SpecError::UnknownKind(other.to_owned())),
    }
}

/// The longest `counter_ms` accepted: the spreader holds intervals for at most 10 s, and a counter
/// read every 5 s is already held that long for its period's fourfold.
pub const MAX_COUNTER_MS: u64 = 5_000;

fn parse_nvml(rest: &str) -> Result<MeterKind, SpecError> {
    let mut selectors = Vec::new();
    let mut counter_ms = None;
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(v) = part.strip_prefix("counter_ms=") {
            if counter_ms.is_some() {
                return Err(SpecError::DuplicateOption("counter_ms".into()));
            }
            counter_ms = match v.trim().parse::<u64>() {
                Ok(n) if (1..=MAX_COUNTER_MS).contains(&n) => Some(n),
                _ => return Err(SpecError::BadCounterMs(v.to_owned())),
            };
        } else if let Ok(i) = part.parse::<u32>() {
            selectors.push(NvmlSelector::Index(i));
        } else if part.starts_with("GPU-") || part.starts_with("MIG-") {
            selectors.push(NvmlSelector::Uuid(part.to_owned()));
        } else {
            return Err(SpecError::BadNvmlDevice(part.to_owned()));
        }
    }
    Ok(MeterKind::Nvml {
        selectors,
        counter_ms,
    })
}

fn parse_counter_file(rest: &str) -> Result<(MeterKind, Option<u64>), SpecError> {
    let mut parts: Vec<&str> = rest.split(',').collect();
    let mut unit = None;
    let mut wrap = None;
    let mut period = None;
    // Options are taken from the right while they look like options, so commas in paths survive.
    while parts.len() > 1 {
        let Some(last) = parts.last().copied() else {
            break;
        };
        if let Some(v) = last.strip_prefix("unit=") {
            if unit.is_some() {
                return Err(SpecError::DuplicateOption(last.to_owned()));
            }
            unit = Some(match v {
                "uj" => Unit::Microjoules,
                "mj" => Unit::Millijoules,
                "j" => Unit::Joules,
                _ => return Err(SpecError::BadUnit(v.to_owned())),
            });
        } else if let Some(v) = last.strip_prefix("wrap=") {
            if wrap.is_some() {
                return Err(SpecError::DuplicateOption(last.to_owned()));
            }
            match v.parse::<u64>() {
                Ok(n) if n > 0 => wrap = Some(Wrap::Range(n)),
                _ => return Err(SpecError::BadWrap(v.to_owned())),
            }
        } else if let Some(v) = last.strip_prefix("period_ms=") {
            if period.is_some() {
                return Err(SpecError::DuplicateOption(last.to_owned()));
            }
            period = Some(parse_period(v)?);
        } else if let Some(v) = last.strip_prefix("wrap-file=") {
            if wrap.is_some() {
                return Err(SpecError::DuplicateOption(last.to_owned()));
            }
            if v.is_empty() {
                return Err(SpecError::MissingPath("wrap-file"));
            }
            wrap = Some(Wrap::File(PathBuf::from(v)));
        } else {
            break;
        }
        parts.pop();
    }
    let path = parts.join(",");
    if path.is_empty() {
        return Err(SpecError::MissingPath("counter-file"));
    }
    Ok((
        MeterKind::CounterFile {
            path: PathBuf::from(path),
            unit: unit.unwrap_or_default(),
            wrap,
        },
        period,
    ))
}

fn parse_sim(rest: Option<&str>) -> Result<MeterKind, SpecError> {
    let watts = match rest {
        None | Some("") => DEFAULT_SIM_WATTS,
        Some(w) => {
            let text = w.trim().trim_end_matches(['W', 'w']);
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                _ => return Err(SpecError::BadWatts(w.to_owned())),
            }
        }
    };
    Ok(MeterKind::Sim { watts })
}

impl TryFrom<String> for MeterSpec {
    type Error = SpecError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MeterSpec> for String {
    fn from(spec: MeterSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for MeterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        match self.period_ms {
            Some(n) => write!(f, ",period_ms={n}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for MeterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeterKind::Nvml {
                selectors,
                counter_ms,
            } => {
                f.write_str("nvml")?;
                let mut sep = ':';
                for s in selectors {
                    write!(f, "{sep}")?;
                    sep = ',';
                    match s {
                        NvmlSelector::Index(n) => write!(f, "{n}")?,
                        NvmlSelector::Uuid(u) => f.write_str(u)?,
                    }
                }
                if let Some(ms) = counter_ms {
                    write!(f, "{sep}counter_ms={ms}")?;
                }
                Ok(())
            }
            MeterKind::CounterFile { path, unit, wrap } => {
                write!(f, "counter-file:{}", path.display())?;
                if *unit != Unit::Microjoules {
                    write!(f, ",unit={}", unit.as_str())?;
                }
                match wrap {
                    Some(Wrap::Range(n)) => write!(f, ",wrap={n}"),
                    Some(Wrap::File(p)) => write!(f, ",wrap-file={}", p.display()),
                    None => Ok(()),
                }
            }
            MeterKind::Rapl { root } if root.as_os_str() == DEFAULT_POWERCAP_ROOT => {
                f.write_str("rapl")
            }
            MeterKind::Rapl { root } => write!(f, "rapl:{}", root.display()),
            MeterKind::Sim { watts } => write!(f, "sim:{watts}"),
            MeterKind::Replay { path } => write!(f, "replay:{}", path.display()),
        }
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
