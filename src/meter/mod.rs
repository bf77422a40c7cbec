//! Energy sources behind one [`Meter`] trait: NVML, counter files (RAPL, hwmon), simulated, replay.

pub mod log_power;
