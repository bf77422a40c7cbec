//! One upstream data frame on its way to the client: through the stream observer (which may
//! rewrite it) and the reader of a non-streamed body's usage tail (`process`). In settled mode, the
//! energy-bearing parts held back until the request's figures settle: the final usage chunk, cut
//! where its `energy` value belongs (`hold_energy_part`), and the trailers (`Settling`).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

use super::RequestEnd;
use crate::observe::{Endpoint, EnergyNow, Outcome};
use crate::openai::observer::{EnergySplit, StreamObserver};
use crate::openai::usage::UsageTail;
use crate::proxy::energy::energy_json;
use crate::proxy::settle::SettleWait;

/// A response part waiting for settled figures.
pub(super) struct Settling {
    pub(super) wait: SettleWait,
    pub(super) then: AfterSettle,
}

/// What goes out once the wait ends.
pub(super) enum AfterSettle {
    /// The final usage chunk up to where its `energy` value belongs, and from there on with what
    /// followed it.
    UsageChunk(Bytes, Bytes),
    /// The trailers, built from the request's `end` (taken at the end of stream) and the
    /// upstream's own trailers.
    Trailers(Box<RequestEnd>, Option<HeaderMap>),
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.then {
            AfterSettle::UsageChunk(head, rest) => {
                write!(
                    f,
                    "Settling(usage chunk, {} bytes)",
                    head.len() + rest.len()
                )
            }
            AfterSettle::Trailers(..) => f.write_str("Settling(trailers)"),
        }
    }
}

/// One data frame through the observer (when there is one) and the usage tail reader. With
/// deferred energy (settled mode), also where in the output the `energy` value belongs. `now`:
/// when the frame arrived, read from the clock on the first frame that needs it and shared by
/// the frames that were ready with it (one read per batch, not per SSE event: hyper hands a
/// stream over one event per frame; on the overhead bench's (b) these reads were 16 of the
/// worker's 75 samples of `clock_gettime`).
pub(super) fn process(
    observer: &mut Option<StreamObserver>,
    end: &Option<RequestEnd>,
    usage_tail: &mut Option<(Endpoint, UsageTail)>,
    data: Bytes,
    now: &mut Option<u64>,
) -> (Bytes, Option<EnergySplit>) {
    let (out, split) = match (observer.as_mut(), end.as_ref()) {
        (Some(observer), Some(end)) => {
            let now = *now.get_or_insert_with(|| end.clock.now_ns());
            let out = feed(observer, end, data, now);
            (out, observer.take_energy_split())
        }
        _ => (data, None),
    };
    if let Some((_, tail)) = usage_tail.as_mut() {
        tail.push(&out);
    }
    (out, split)
}

/// Settled mode: `out` holds the final usage chunk, whose `energy` value belongs at `split`. The
/// request is marked finished now (every token is known: the chunk carries the server's final
/// usage), so that accounting can settle it while the chunk waits; the bytes before the chunk go
/// out at once, the chunk and the rest wait in `settling`. Returns what goes out now.
///
/// Only `[DONE]` should follow the usage chunk. Should the upstream still fail after it (an error
/// event or a broken body), the request stays `ok`: the first outcome wins, and its record says
/// so; its energy is complete either way. A client that leaves during the wait does not change
/// the outcome either.
pub(super) fn hold_energy_part(
    observer: &Option<StreamObserver>,
    end: &Option<RequestEnd>,
    settling: &mut Option<Settling>,
    figures: &mut Option<EnergyNow>,
    out: Bytes,
    split: EnergySplit,
) -> Bytes {
    let Some(end) = end.as_ref() else {
        return out;
    };
    let at = split.value_at.min(out.len());
    let event_at = split.event_at.min(at);
    let wait = end.settle();
    let Some(wait) = wait else {
        // Nothing to wait for (energy not measured): the figure of the moment, at once.
        let now = end.figures_now();
        *figures = Some(now);
        let text = energy_json(&end.public_id, &now, &end.carbon);
        let mut whole = BytesMut::with_capacity(out.len() + text.len());
        whole.extend_from_slice(&out[..at]);
        whole.extend_from_slice(text.as_bytes());
        whole.extend_from_slice(&out[at..]);
        return whole.freeze();
    };
    let saw_error = observer.as_ref().is_some_and(|o| o.saw_error());
    end.guard.finish(if end.error_status || saw_error {
        Outcome::Error
    } else {
        Outcome::Ok
    });
    *settling = Some(Settling {
        wait,
        then: AfterSettle::UsageChunk(out.slice(event_at..at), out.slice(at..)),
    });
    out.slice(..event_at)
}

/// One frame, arrived at `now`, through the observer; the energy callback is what the final
/// usage chunk carries.
fn feed(observer: &mut StreamObserver, end: &RequestEnd, data: Bytes, now: u64) -> Bytes {
    let progress = end.progress();
    let mut energy = || {
        Some(energy_json(
            &end.public_id,
            &progress.energy_now(end.clock.now_ns(), &end.in_flight.rates),
            &end.carbon,
        ))
    };
    observer.feed(data, now, progress, &mut energy)
}
