//! The sampling thread's life: [`Sampler`] spawns it over a [`SamplerCore`], runs the drift-free
//! schedule (after the start-up alignment, [`super::align`]), offers the ticks to the outbox, and
//! stops and joins it on drop.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::ClockTime;
use super::{align, Outbox, SamplerConfig, SamplerCore, SamplerError, Schedule, TimeSource, Wake};
use crate::clock::Clock;
use crate::meter::status::SamplerStatus;
use crate::meter::MeterSet;
use crate::tick::Tick;

/// The running sampler thread. Dropping it stops and joins the thread.
pub struct Sampler {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<SamplerStatus>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    /// Starts sampling `set` on the shared clock; returns the handle and the tick receiver.
    pub fn spawn(
        set: MeterSet,
        config: SamplerConfig,
        clock: Clock,
    ) -> Result<(Sampler, Receiver<Tick>), SamplerError> {
        Self::spawn_with(set, config, ClockTime(clock))
    }

    /// Starts sampling with an injected time source (tests drive the schedule without sleeping).
    pub fn spawn_with<T: TimeSource>(
        set: MeterSet,
        config: SamplerConfig,
        mut time: T,
    ) -> Result<(Sampler, Receiver<Tick>), SamplerError> {
        config.validate()?;
        let mut core = SamplerCore::with_period(set, config.interval, config.meter_period);
        let status = core.status();
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let mut outbox = Outbox::new(tx, status.clone());
        let interval = config.interval;
        let align_phase = config.align_phase;
        let thread = std::thread::Builder::new()
            .name("joulegate-sampler".into())
            .spawn(move || {
                // The baseline first, so that the burst's time is measured too (in the first,
                // longer interval) and requests served meanwhile have their energy.
                let base = time.now_ns();
                let _ = core.round(base);
                let aligned = if align_phase {
                    match core.align_start(&mut time, &stop_rx) {
                        Ok(t) => t,
                        Err(align::Stopped) => return,
                    }
                } else {
                    None
                };
                let t0 = aligned.unwrap_or(base);
                if aligned.is_some() {
                    for tick in core.round(t0) {
                        outbox.offer(tick);
                    }
                }
                let mut schedule = Schedule::new(t0, interval);
                loop {
                    let deadline = schedule.next_deadline(time.now_ns());
                    if time.sleep_until(deadline, &stop_rx) == Wake::Stop {
                        break;
                    }
                    for tick in core.round(time.now_ns()) {
                        outbox.offer(tick);
                    }
                }
                // Held intervals go out as measured: nothing more will come to spread over them.
                for tick in core.flush() {
                    outbox.offer(tick);
                }
            })?;
        Ok((
            Sampler {
                stop: Some(stop_tx),
                thread: Some(thread),
                status,
            },
            rx,
        ))
    }

    /// The shared status (cheap to clone, safe to read from any thread).
    pub fn status(&self) -> &Arc<SamplerStatus> {
        &self.status
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread's wait at once.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("sampler thread panicked");
            }
        }
    }
}
