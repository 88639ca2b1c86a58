//! Spike alerts (SPEC §7): `alert.usage_spike` in the audit log and a webhook POST.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A webhook receiver on 127.0.0.1:0 that keeps every JSON body it is sent.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_spike_is_audited_and_posted_to_the_webhook() {
    let (url, got) = webhook_receiver().await;
    // The receiver is on 127.0.0.1, which the outbound-URL guard refuses unless listed.
    let allow = url
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .to_string();
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |cfg| {
        cfg.outbound.allow = vec![allow];
        cfg.alerts.spike_multiple = 3.0;
        cfg.alerts.spike_min_requests = 5;
        cfg.alerts.webhook_url = Some(url);
        cfg.usage.flush_ms = 50;
    }))
    .await
    .unwrap();
    let k = app
        .create_key(&app.owner_key, json!({"name": "bursty"}))
        .await;
    let (key_id, key) = (k["id"].as_str().unwrap(), k["key"].as_str().unwrap());
    // A brand-new key has no baseline: the floor (5 per minute) applies. Stay in one minute.
    let minute = tollgate::util::now_ms() / 60_000;
    for _ in 0..8 {
        assert_eq!(
            app.chat(key, chat_body("mock-chat")).await.status(),
            StatusCode::OK
        );
    }
    if tollgate::util::now_ms() / 60_000 != minute {
        eprintln!("skipped: the burst straddled a minute boundary");
        return;
    }
    let ok = eventually(Duration::from_secs(10), || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    assert!(ok, "webhook received the alert");
    let hook = got.lock().unwrap()[0].clone();
    assert_eq!(hook["type"], "alert.usage_spike");
    assert_eq!(hook["api_key_id"], key_id);
    assert_eq!(hook["tenant_id"], app.tenant_id.as_str());
    assert!(hook["details"]["requests_in_minute"].as_u64().unwrap() > 5);
    assert!(!hook.to_string().contains(key), "no secret in the alert");

    let res = app
        .get("/v1/audit-events?action=alert.usage_spike", &app.owner_key)
        .await;
    let page: Value = res.json().await.unwrap();
    let events = page["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "one alert per key and minute: {page}");
    let e = &events[0];
    assert_eq!(e["actor"]["type"], "system");
    assert_eq!(e["target"]["type"], "api_key");
    assert_eq!(e["target"]["id"], key_id);
    assert_eq!(hook["event_id"], e["id"]);
    // The alert is part of the verified chain.
    let broken = tollgate::store::audit::verify(app.state.store.pool())
        .await
        .unwrap();
    assert!(broken.is_ok(), "{broken:?}");
}
