//! Behaviour beyond the fixtures: ids, determinism, recording, faults, disconnects, ground truth.

use super::*;

#[tokio::test]
async fn placeholder() {
    let h = mock(MockUpstream::builder()).await;
    let r = call(h.addr(), "GET", "/health", None, &[]).await;
    assert_eq!(r.status, 200);
    h.shutdown().await;
}
