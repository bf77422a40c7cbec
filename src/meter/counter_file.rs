//! `counter-file:PATH[,unit=uj|mj|j][,wrap=N|wrap-file=PATH]`: any cumulative energy counter in a file.
//!
//! RAPL `energy_uj`, a hwmon `energy*_input`, or a file another program rewrites atomically (the
//! simulator, a test). The file is opened afresh on every read, so a file that vanishes and comes
//! back (rename-over, driver reload) just yields failed readings in between. Values are non-negative
//! integers, or decimals (`12.5` with `unit=j`), surrounded by optional whitespace.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::spec::{Unit, Wrap};
use super::{DeviceInfo, Meter, Method, ReadError, Reading};

/// Longest file content read; counters are a few dozen bytes at most.
const MAX_CONTENT: usize = 64;

/// Why a `wrap-file` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WrapFileError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not hold a positive integer.
    #[error("does not hold a positive integer (read {0:?})")]
    Garbage(String),
}

/// A meter reading one counter file (one device).
#[derive(Debug)]
pub struct CounterFileMeter {
    path: PathBuf,
    unit: Unit,
    info: [DeviceInfo; 1],
}

impl CounterFileMeter {
    /// Builds the meter of a `counter-file:` spec. Reads the wrap file now (its modulus is fixed); the
    /// counter file itself may be missing at this point and appear later.
    pub fn from_spec(path: &Path, unit: Unit, wrap: Option<&Wrap>) -> Result<Self, WrapFileError> {
        let wrap_units = match wrap {
            None => None,
            Some(Wrap::Range(n)) => Some(*n),
            Some(Wrap::File(p)) => Some(read_wrap_file(p)?),
        };
        let wrap_uj = wrap_units.map(|n| n.saturating_mul(unit.factor()));
        let label = format!("counter-file:{}", path.display());
        Ok(Self::new(
            label,
            path.display().to_string(),
            path,
            unit,
            wrap_uj,
            Method::CounterFile,
        ))
    }

    /// A meter with an explicit label, name and method (used by RAPL discovery).
    pub fn new(
        label: String,
        name: String,
        path: &Path,
        unit: Unit,
        wrap_uj: Option<u64>,
        method: Method,
    ) -> Self {
        let mut info = DeviceInfo::new(label, name, method);
        info.wrap_uj = wrap_uj;
        CounterFileMeter {
            path: path.to_path_buf(),
            unit,
            info: [info],
        }
    }

    /// The counter file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Meter for CounterFileMeter {
    fn devices(&self) -> &[DeviceInfo] {
        &self.info
    }

    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError> {
        if index != 0 {
            return Err(ReadError::NoSuchDevice(index));
        }
        let mut buf = [0u8; MAX_CONTENT];
        let n = read_prefix(&self.path, &mut buf).map_err(|source| ReadError::Io {
            path: self.path.clone(),
            source,
        })?;
        let content = &buf[..n];
        let energy_uj = parse_counter(content, self.unit).map_err(|e| match e {
            ParseError::Garbage => ReadError::Garbage {
                path: self.path.clone(),
                content: String::from_utf8_lossy(content).into_owned(),
            },
            ParseError::Overflow => ReadError::Overflow {
                path: self.path.clone(),
            },
        })?;
        Ok(Reading {
            energy_uj,
            at_ns: now_ns,
            ended: false,
            power_mw: None,
        })
    }
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut file = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

fn read_wrap_file(path: &Path) -> Result<u64, WrapFileError> {
    let mut buf = [0u8; MAX_CONTENT];
    let n = read_prefix(path, &mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    match text.trim().parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(WrapFileError::Garbage(text.into_owned())),
    }
}

/// Why a counter's content did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a non-negative number.
    Garbage,
    /// Does not fit in 64-bit micro-joules.
    Overflow,
}

/// Parses a counter value (`123`, ` 123\n`, `12.5`) in `unit` into micro-joules, exactly for up to six
/// decimals (further decimals are truncated).
pub fn parse_counter(content: &[u8], unit: Unit) -> Result<u64, ParseError> {
    let text = std::str::from_utf8(content)
        .map_err(|_| ParseError::Garbage)?
        .trim();
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return Err(ParseError::Garbage);
    }
    let whole = int.parse::<u64>().map_err(|_| ParseError::Overflow)?;
    let mut micro: u64 = 0;
    for i in 0..6 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        micro = micro * 10 + d;
    }
    let whole_uj = whole
        .checked_mul(unit.factor())
        .ok_or(ParseError::Overflow)?;
    let frac_uj = micro * unit.factor() / 1_000_000;
    whole_uj.checked_add(frac_uj).ok_or(ParseError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::counter::{CounterTracker, Step};

    fn write(path: &Path, text: &str) {
        // Write-then-rename, the way a well-behaved producer updates the file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write temp");
        std::fs::rename(&tmp, path).expect("rename");
    }

    #[test]
    fn units_and_decimals() {
        assert_eq!(parse_counter(b"123\n", Unit::Microjoules), Ok(123));
        assert_eq!(parse_counter(b" 7 ", Unit::Millijoules), Ok(7_000));
        assert_eq!(parse_counter(b"2", Unit::Joules), Ok(2_000_000));
        assert_eq!(parse_counter(b"1.5", Unit::Joules), Ok(1_500_000));
        assert_eq!(parse_counter(b"1.0000019", Unit::Joules), Ok(1_000_001));
        assert_eq!(parse_counter(b"2.5", Unit::Millijoules), Ok(2_500));
        assert_eq!(
            parse_counter(b"", Unit::Microjoules),
            Err(ParseError::Garbage)
        );
        assert_eq!(
            parse_counter(b"-5", Unit::Microjoules),
            Err(ParseError::Garbage)
        );
        assert_eq!(
            parse_counter(b"12abc", Unit::Microjoules),
            Err(ParseError::Garbage)
        );
        assert_eq!(
            parse_counter(b"\xff\xfe", Unit::Microjoules),
            Err(ParseError::Garbage)
        );
        assert_eq!(parse_counter(b".5", Unit::Joules), Err(ParseError::Garbage));
        assert_eq!(
            parse_counter(b"18446744073709551615", Unit::Joules),
            Err(ParseError::Overflow)
        );
        assert_eq!(
            parse_counter(b"99999999999999999999999", Unit::Microjoules),
            Err(ParseError::Overflow)
        );
    }

    #[test]
    fn reads_vanishing_and_garbage_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("energy");
        let spec: crate::meter::MeterSpec = format!("counter-file:{},unit=mj", path.display())
            .parse()
            .expect("spec");
        let crate::meter::MeterKind::CounterFile {
            path: p,
            unit,
            wrap,
        } = spec.kind
        else {
            panic!("wrong kind")
        };
        let mut m = CounterFileMeter::from_spec(&p, unit, wrap.as_ref()).expect("meter");
        assert_eq!(
            m.devices()[0].label,
            format!("counter-file:{}", path.display())
        );
        // Missing at first: an I/O error, not a panic.
        assert!(matches!(m.read(0, 0), Err(ReadError::Io { .. })));
        write(&path, "10\n");
        assert_eq!(m.read(0, 5).map(|r| r.energy_uj).ok(), Some(10_000));
        write(&path, "garbage");
        assert!(matches!(m.read(0, 6), Err(ReadError::Garbage { .. })));
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(m.read(0, 7), Err(ReadError::Io { .. })));
        write(&path, "12");
        assert_eq!(m.read(0, 8).map(|r| r.energy_uj).ok(), Some(12_000));
        assert!(matches!(m.read(1, 8), Err(ReadError::NoSuchDevice(1))));
    }

    #[test]
    fn wrap_file_sets_the_modulus_and_the_tracker_uses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let energy = dir.path().join("energy_uj");
        let max = dir.path().join("max_energy_range_uj");
        std::fs::write(&max, "1000000\n").expect("write");
        let mut m =
            CounterFileMeter::from_spec(&energy, Unit::Microjoules, Some(&Wrap::File(max.clone())))
                .expect("meter");
        assert_eq!(m.devices()[0].wrap_uj, Some(1_000_000));
        let mut t = CounterTracker::for_device(m.devices()[0].wrap_uj, None);
        std::fs::write(&energy, "999000").expect("write");
        let r = m.read(0, 0).expect("read");
        assert_eq!(t.observe(r.energy_uj, r.at_ns), Step::Baseline);
        std::fs::write(&energy, "4000").expect("write");
        let r = m.read(0, 1_000_000).expect("read");
        assert_eq!(t.observe(r.energy_uj, r.at_ns), Step::Wrapped(5_000));

        std::fs::write(&max, "zero").expect("write");
        assert!(matches!(
            CounterFileMeter::from_spec(&energy, Unit::Microjoules, Some(&Wrap::File(max))),
            Err(WrapFileError::Garbage(_))
        ));
        let scaled = CounterFileMeter::from_spec(&energy, Unit::Millijoules, Some(&Wrap::Range(3)))
            .expect("meter");
        assert_eq!(scaled.devices()[0].wrap_uj, Some(3_000));
    }
}
