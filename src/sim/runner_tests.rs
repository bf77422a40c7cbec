//! Runner tests on paused tokio time: the counter period, delivery of progress, exact totals.

use super::*;
use crate::sim::engine::{CostModel, Phase};

fn cfg(period_ms: u64) -> RunnerConfig {
    RunnerConfig {
        engine: EngineConfig {
            max_running_seqs: 8,
            max_batched_tokens: 512,
            cost: CostModel::h100_8b(),
        },
        time_scale: 1.0,
        counter_period: Duration::from_millis(period_ms),
        counter_file: None,
    }
}

#[tokio::test(start_paused = true)]
async fn counter_advances_only_at_its_period() {
    let (_stop_tx, stop) = watch::channel(false);
    let (client, _tasks) = spawn(cfg(20), stop);
    let counter = client.shared.counter();
    // Paused time: this sleep is virtual and exact, the publisher ticks at 0, 20, 40 ms.
    tokio::time::sleep(Duration::from_millis(30)).await;
    // 70 W idle for exactly 20 ms = 1.4 J, published at the 20 ms tick only.
    assert_eq!(counter.load(Ordering::Relaxed), 1_400_000);
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(counter.load(Ordering::Relaxed), 2_800_000);
}

#[tokio::test(start_paused = true)]
async fn progress_arrives_per_step_and_totals_conserve() {
    let (stop_tx, stop) = watch::channel(false);
    let (client, tasks) = spawn(cfg(20), stop);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let start = Instant::now();
    let mut a = client.submit(1, 22, 8, 1);
    let mut b = client.submit(2, 100, 4, 2);
    let mut seen = Vec::new();
    while let Some(e) = a.recv().await {
        seen.push((e.generated, e.finished, start.elapsed()));
    }
    assert_eq!(seen.len(), 8);
    assert!(seen[7].1);
    // The first token comes after the prefill step (6 ms + 122 prefill tokens × 30 µs), delivered on
    // tokio's millisecond timer wheel.
    assert_close(seen[0].2, Duration::from_nanos(6_000_000 + 122 * 30_000));
    // Tokens come one step apart: strictly increasing times.
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));
    let mut last = None;
    while let Some(e) = b.recv().await {
        last = Some(e);
    }
    assert_eq!(last.map(|e| (e.generated, e.finished)), Some((4, true)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let totals = client.shared.settle_idle();
    let (t1, t2) = {
        let engine = client.shared.engine();
        (
            engine.truth(1).unwrap().clone(),
            engine.truth(2).unwrap().clone(),
        )
    };
    assert_eq!((t1.phase, t2.phase), (Phase::Finished, Phase::Finished));
    assert_eq!(t1.total_uj() + t2.total_uj(), totals.step_uj);
    assert_eq!(totals.step_uj + totals.idle_uj, totals.total_uj);
    assert_eq!(
        client.shared.counter().load(Ordering::Relaxed),
        totals.total_uj
    );
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_listener_aborts_the_request() {
    let (_stop_tx, stop) = watch::channel(false);
    let (client, _tasks) = spawn(cfg(20), stop);
    let mut rx = client.submit(7, 10, 1000, 1);
    rx.recv().await.unwrap();
    drop(rx);
    let mut changed = client.shared.changed.subscribe();
    let shared = client.shared.clone();
    changed
        .wait_for(|_| shared.engine().truth(7).map(|t| t.phase) == Some(Phase::Aborted))
        .await
        .unwrap();
    assert!(shared.engine().truth(7).unwrap().completion_tokens < 1000);
}

#[tokio::test(start_paused = true)]
async fn time_scale_shortens_wall_time() {
    let (_stop_tx, stop) = watch::channel(false);
    let (client, _tasks) = spawn(
        RunnerConfig {
            time_scale: 10.0,
            ..cfg(20)
        },
        stop,
    );
    let start = Instant::now();
    let mut rx = client.submit(1, 1, 1, 1);
    rx.recv().await.unwrap();
    // 6 ms + 30 µs simulated, a tenth of it on the wall clock.
    assert_close(start.elapsed(), Duration::from_nanos(603_000));
}

/// Wake-ups land on tokio's 1 ms timer granularity (never early), deadlines themselves do not drift.
fn assert_close(got: Duration, want: Duration) {
    assert!(
        got >= want && got <= want + Duration::from_millis(1),
        "{got:?} vs {want:?}"
    );
}

#[tokio::test]
async fn counter_file_is_rewritten_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("energy_uj");
    write_counter_file(&path, 42).await.unwrap();
    write_counter_file(&path, 43).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "43\n");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test(start_paused = true)]
async fn publisher_mirrors_the_counter_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("energy_uj");
    let (stop_tx, stop) = watch::channel(false);
    let (client, tasks) = spawn(
        RunnerConfig {
            counter_file: Some(path.clone()),
            ..cfg(20)
        },
        stop,
    );
    let mut rx = client.submit(1, 50, 3, 1);
    while rx.recv().await.is_some() {}
    // Stopping publishes and writes once more; awaiting the tasks makes that write visible.
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap();
    }
    let written: u64 = std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, client.shared.counter().load(Ordering::Relaxed));
    assert!(written > 0);
}

/// Each request's timing is its steps on the runner's timeline, to the nanosecond: a request that
/// waits behind another (one running sequence at a time) queues for exactly the other's steps,
/// prefills in one step and generates over the rest; forgetting drops the timing with the truth.
#[tokio::test(start_paused = true)]
async fn request_timing_is_the_steps_it_spent() {
    let config = RunnerConfig {
        engine: EngineConfig {
            max_running_seqs: 1,
            ..cfg(20).engine
        },
        ..cfg(20)
    };
    // The same work on the pure engine gives the step durations.
    let mut engine = Engine::new(config.engine.clone());
    engine.add(1, 22, 3, 1);
    engine.add(2, 40, 4, 1);
    let mut durations = Vec::new();
    while let Some(r) = engine.step() {
        durations.push(Duration::from_nanos(r.duration_ns));
    }
    // 3 steps for the first request, then 4 for the second.
    assert_eq!(durations.len(), 7);
    let (stop_tx, stop) = watch::channel(false);
    let (client, tasks) = spawn(config, stop);
    let mut a = client.submit(1, 22, 3, 1);
    let mut b = client.submit(2, 40, 4, 1);
    assert_eq!(client.shared.request_timing(1), None, "not scheduled yet");
    while a.recv().await.is_some() {}
    while b.recv().await.is_some() {}
    let sum = |d: &[Duration]| d.iter().sum::<Duration>();
    assert_eq!(
        client.shared.request_timing(1),
        Some(RequestTiming {
            queue: Duration::ZERO,
            prefill: durations[0],
            generation: sum(&durations[1..3]),
            tokens: 3,
        })
    );
    assert_eq!(
        client.shared.request_timing(2),
        Some(RequestTiming {
            queue: sum(&durations[..3]),
            prefill: durations[3],
            generation: sum(&durations[4..]),
            tokens: 4,
        })
    );
    client.shared.forget(1);
    assert_eq!(client.shared.request_timing(1), None);
    assert!(client.shared.request_timing(2).is_some());
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap();
    }
}
