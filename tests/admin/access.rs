//! Access to the admin listener and its health: with an admin token every endpoint but `/healthz`
//! needs it (401 otherwise) and none shows it; errors in the OpenAI shape (unknown path, bad id or
//! limit, wrong method); `/readyz` ready once the meters are initialised, and failing fast when the
//! upstream is down.

use serde_json::Value;

use crate::common::*;
use crate::exposition::sum;
use crate::support::*;

#[tokio::test]
async fn auth_errors_and_health() {
    let upstream = vllm().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        with_sim(a);
        a.admin_token = Some("t0ken-of-admin".into());
        a.metrics_per_tag = Some(false);
    })
    .await;
    first_tick(proxy.admin, Some("t0ken-of-admin")).await;
    let got = chat(proxy.addr, Some("hidden-tag"), None).await;
    let id = header(&got, "x-energy-request-id");
    for token in [None, Some("wrong"), Some("t0ken-of-admi")] {
        let got = admin_get(proxy.admin, "/stats", token).await;
        assert_eq!(got.status, 401);
        assert_eq!(header(&got, "www-authenticate"), "Bearer");
        let e: Value = serde_json::from_slice(&got.body).expect("error JSON");
        assert_eq!(e["error"]["code"], 401);
        assert!(e["error"]["message"].is_string() && e["error"]["type"].is_string());
    }
    for path in ["/stats", "/requests", "/metrics"] {
        assert_eq!(
            admin_get(proxy.admin, path, Some("t0ken-of-admin"))
                .await
                .status,
            200,
            "{path}"
        );
    }
    guard("the tagged request to be retired", async {
        loop {
            let got = admin_get(
                proxy.admin,
                &format!("/requests/{id}"),
                Some("t0ken-of-admin"),
            )
            .await;
            let v: Value = serde_json::from_slice(&got.body).expect("JSON");
            if v.get("state").is_none() && got.status == 200 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let m = metrics(proxy.admin, Some("t0ken-of-admin")).await;
    assert_eq!(sum(&m, "joulegate_requests_total", &[]), 1.0);
    assert!(
        m.iter().all(|s| !s.0.starts_with("joulegate_tag_")),
        "per-tag series off when metrics_per_tag = false"
    );
    assert_eq!(sum(&m, "joulegate_energy_available", &[]), 1.0);
    let stats = admin_get(proxy.admin, "/stats", Some("t0ken-of-admin")).await;
    assert!(
        !String::from_utf8_lossy(&stats.body).contains("t0ken-of-admin"),
        "the token is never shown"
    );
    // Liveness stays open; readiness (it names upstream errors) is protected.
    assert_eq!(admin_get(proxy.admin, "/healthz", None).await.status, 200);
    assert_eq!(admin_get(proxy.admin, "/readyz", None).await.status, 401);
    let ready = admin_get(proxy.admin, "/readyz", Some("t0ken-of-admin")).await;
    assert_eq!(ready.status, 200);
    let r: Value = serde_json::from_slice(&ready.body).expect("JSON");
    assert_eq!(
        (r["ready"].as_bool(), r["meters"].as_str()),
        (Some(true), Some("initialised"))
    );
    // Errors in the OpenAI shape.
    let t = Some("t0ken-of-admin");
    for (path, status) in [
        ("/nope", 404),
        ("/requests/jg-zz", 400),
        ("/requests/jg-00000000000000ff", 404),
        ("/requests?limit=x", 400),
    ] {
        let got = admin_get(proxy.admin, path, t).await;
        assert_eq!(got.status, status, "{path}");
        let e: Value = serde_json::from_slice(&got.body).expect("error JSON");
        assert_eq!(e["error"]["code"], status);
    }
    let post = send(
        proxy.admin,
        request("POST", proxy.admin, "/stats", &[], b""),
    )
    .await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn readyz_fails_fast_when_the_upstream_is_down() {
    // Bound but never listening: connections to it are refused, and no other socket can take
    // the port meanwhile (a listener dropped here let the test proxy's own listener reuse its
    // port now and then, which then answered the readiness probe: 200).
    let gone = tokio::net::TcpSocket::new_v4().expect("socket");
    gone.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = gone.local_addr().expect("addr");
    let proxy = TestProxy::start(addr).await;
    let got = admin_get(proxy.admin, "/readyz", None).await;
    assert_eq!(got.status, 503);
    let r: Value = serde_json::from_slice(&got.body).expect("JSON");
    assert_eq!(r["ready"], false);
    assert_ne!(r["upstream"], "ok");
    // No meter at all does not block readiness by itself.
    assert_eq!(r["meters"], "unavailable");
}
