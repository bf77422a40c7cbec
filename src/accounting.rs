//! The accounting thread: receives sampler ticks, snapshots the in-flight registry, applies each tick
//! to the ledger, publishes energy back into the requests' atomics and retires finished requests
//! into the bounded record ring.
