//! `rapl[:ROOT]`: discovers the RAPL package domains under a powercap root and reads their
//! `energy_uj` counters, wrapping at `max_energy_range_uj`.
//!
//! Only top-level `intel-rapl:N` zones whose `name` starts with `package` are used: sub-zones (core,
//! uncore, dram) are parts of a package and `psys` contains the packages, so adding either would count
//! energy twice. The root is injectable so tests run on a fake tree. Since 2020 kernels make
//! `energy_uj` root-readable only; a permission error shows up as failed readings with the cause.

use std::path::{Path, PathBuf};

use super::counter_file::CounterFileMeter;
use super::spec::Unit;
use super::{DeviceInfo, Meter, Method, ReadError, Reading};

/// Why no RAPL domain could be used.
#[derive(Debug, thiserror::Error)]
pub enum RaplError {
    /// The powercap root cannot be listed.
    #[error("cannot list powercap root {root}: {source} (no RAPL support here?)")]
    Root {
        /// The root.
        root: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The root has no package zone.
    #[error("no RAPL package domain under {0}")]
    NoPackages(PathBuf),
}

/// The RAPL package domains of one machine, one device each.
#[derive(Debug)]
pub struct RaplMeter {
    domains: Vec<CounterFileMeter>,
    infos: Vec<DeviceInfo>,
}

/// Finds the package domains under `root` (normally `/sys/class/powercap`).
pub fn discover(root: &Path) -> Result<RaplMeter, RaplError> {
    let entries = std::fs::read_dir(root).map_err(|source| RaplError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let mut zones: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(dir) = file_name.to_str() else {
            continue;
        };
        let is_top_zone = dir
            .strip_prefix("intel-rapl:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_top_zone {
            continue;
        }
        let zone = entry.path();
        let name = std::fs::read_to_string(zone.join("name")).unwrap_or_default();
        let name = name.trim();
        if name.starts_with("package") {
            zones.push((name.to_owned(), zone));
        }
    }
    if zones.is_empty() {
        return Err(RaplError::NoPackages(root.to_path_buf()));
    }
    zones.sort();
    let mut domains = Vec::with_capacity(zones.len());
    for (i, (name, zone)) in zones.iter().enumerate() {
        let duplicate = zones.iter().filter(|(n, _)| n == name).count() > 1;
        let label = if duplicate {
            format!("rapl:{name}.{i}")
        } else {
            format!("rapl:{name}")
        };
        let wrap = std::fs::read_to_string(zone.join("max_energy_range_uj"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&n| n > 0);
        domains.push(CounterFileMeter::new(
            label,
            format!("{name} ({})", zone.display()),
            &zone.join("energy_uj"),
            Unit::Microjoules,
            wrap,
            Method::Rapl,
        ));
    }
    let infos = domains
        .iter()
        .flat_map(|d| d.devices().iter().cloned())
        .collect();
    Ok(RaplMeter { domains, infos })
}

impl Meter for RaplMeter {
    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError> {
        match self.domains.get_mut(index) {
            Some(d) => d.read(0, now_ns),
            None => Err(ReadError::NoSuchDevice(index)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, energy: &str, max: Option<&str>) {
        let z = root.join(dir);
        std::fs::create_dir_all(&z).expect("mkdir");
        std::fs::write(z.join("name"), format!("{name}\n")).expect("name");
        std::fs::write(z.join("energy_uj"), energy).expect("energy");
        if let Some(m) = max {
            std::fs::write(z.join("max_energy_range_uj"), m).expect("max");
        }
    }

    #[test]
    fn finds_packages_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        zone(
            root,
            "intel-rapl:1",
            "package-1",
            "200\n",
            Some("262143328850\n"),
        );
        zone(
            root,
            "intel-rapl:0",
            "package-0",
            "100\n",
            Some("262143328850\n"),
        );
        zone(root, "intel-rapl:0:0", "core", "50\n", None);
        zone(root, "intel-rapl:2", "psys", "999\n", None);
        std::fs::create_dir_all(root.join("intel-rapl")).expect("control type dir");
        let mut m = discover(root).expect("packages");
        let labels: Vec<&str> = m.devices().iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["rapl:package-0", "rapl:package-1"]);
        assert_eq!(m.devices()[0].wrap_uj, Some(262_143_328_850));
        assert_eq!(m.devices()[0].method, Method::Rapl);
        assert_eq!(m.read(0, 1).map(|r| r.energy_uj).ok(), Some(100));
        assert_eq!(m.read(1, 1).map(|r| r.energy_uj).ok(), Some(200));
        assert!(matches!(m.read(2, 1), Err(ReadError::NoSuchDevice(2))));
    }

    #[test]
    fn missing_or_empty_roots_are_typed_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            discover(&dir.path().join("nope")),
            Err(RaplError::Root { .. })
        ));
        zone(dir.path(), "intel-rapl:0:0", "core", "1", None);
        assert!(matches!(
            discover(dir.path()),
            Err(RaplError::NoPackages(_))
        ));
    }
}
