//! End-to-end accounting through the proxy, on real sockets: the simulated vLLM behind the proxy,
//! accounting driven tick by tick (see `accounting/rig.rs`). What the client sees is byte-identical
//! to talking to the upstream directly (apart from the documented `energy` member), the forwarded
//! request changed only where usage was injected, counts equal the mock's ground truth, energy is
//! reported in headers, trailers and the usage chunk, and the books balance exactly.
//!
//! - `rig`: mock + proxy + hand-driven accounting; `wire`: request shapes, exchanges, normalisation.
//! - `shapes`: every shape, byte-identical, forwarded body, exact counts (three upstream setups).
//! - `energy`: headers, trailers, the `energy` object, no meter, answers too large to buffer.
//! - `outcomes`: aborted, mid-stream error, upstream 4xx; `forged`: upstream `x-energy-*` dropped.
//! - `faults`: upstream resets, 5xx, stalls before headers and mid-stream (the idle bound): `error`.
//! - `settled`: `response_energy = "settled"`: every response carries its record's figures.
//! - `large`: bodies past `max_inspect_bytes` stream through untouched and are still accounted.
//! - `live`: the started app's own threads (sampler on the engine counter, `/version` probe).

mod common;
#[path = "accounting/energy.rs"]
mod energy;
#[path = "accounting/faults.rs"]
mod faults;
#[path = "accounting/forged.rs"]
mod forged;
#[path = "accounting/large.rs"]
mod large;
#[path = "accounting/live.rs"]
mod live;
#[path = "accounting/outcomes.rs"]
mod outcomes;
#[path = "accounting/rig.rs"]
mod rig;
#[path = "accounting/settled.rs"]
mod settled;
#[path = "accounting/shapes.rs"]
mod shapes;
#[path = "accounting/wire.rs"]
mod wire;
