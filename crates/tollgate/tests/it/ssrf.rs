//! The outbound-URL guard (server-side request forgery): an identity provider's `jwks_url` and
//! the alert webhook reach only public `https` destinations, or what `[outbound] allow` lists —
//! refused at registration and again at fetch time (after DNS resolution), never by following a
//! redirect, and every failure reads the same, so a token cannot scan ports through the gateway.
//! Every loopback destination below is a live listener that counts the connections it accepts:
//! a refusal means zero connections, not merely an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::auth::PermSet;
use tollgate::store::identity::ExternalIssuer;

use crate::helpers::*;
use crate::identity::{jwks_server, rsa_jwk, sign_rs256};
use crate::store_tests;

store_tests!(
    registration_refuses_non_public_jwks_urls,
    fetch_time_refuses_non_public_destinations,
    open_and_closed_ports_answer_the_same
);

/// A TCP listener on 127.0.0.1 that accepts, counts and closes every connection.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (port, n)
}

/// A port on 127.0.0.1 with nothing listening on it.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP server on 127.0.0.1 answering every request with `app`; returns its base URL.
async fn http_server(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn keypair() -> aws_lc_rs::rsa::KeyPair {
    aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()
}

/// A registration written straight to the store, as one made before the guard existed (or
/// while an allow-list that has since been removed admitted it) would be.
async fn stored_issuer(app: &TestApp, issuer: &str, jwks_url: &str) {
    let mut tx = app.state.store.begin().await.unwrap();
    tollgate::store::identity::insert_issuer(
        &mut tx,
        &ExternalIssuer {
            id: tollgate::util::new_id("idp"),
            tenant_id: app.tenant_id.clone(),
            issuer: issuer.into(),
            jwks_url: jwks_url.into(),
            audience: "tollgate".into(),
            claim: "email".into(),
            default_role: None,
            max_permissions: PermSet::all(),
            created_at: tollgate::util::now_ms(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// A token of `issuer` for the tenant owner, signed with `kp` under kid `k1`.
fn token(kp: &aws_lc_rs::rsa::KeyPair, issuer: &str) -> String {
    let now = tollgate::util::now_ms() / 1000;
    sign_rs256(
        kp,
        "k1",
        &json!({"iss": issuer, "aud": "tollgate", "sub": "ext", "email": OWNER_EMAIL,
                "exp": now + 600, "iat": now}),
    )
}

/// What a client sees of a refused token: status, challenge and body.
async fn answer(app: &TestApp, token: &str) -> (StatusCode, Option<String>, Value) {
    let res = app.get("/v1/me", token).await;
    let challenge = header(&res, "www-authenticate");
    (res.status(), challenge, res.json().await.unwrap())
}

async fn register(app: &TestApp, issuer: &str, jwks_url: &str) -> reqwest::Response {
    app.post(
        "/v1/identity-providers",
        &app.owner_key,
        json!({"issuer": issuer, "jwks_url": jwks_url, "audience": "tollgate", "claim": "email"}),
    )
    .await
}

async fn registration_refuses_non_public_jwks_urls(app: TestApp) {
    let (p, conns) = counting_listener().await;
    let own = app.addr;
    let refused = [
        format!("http://127.0.0.1:{p}/jwks.json"),
        format!("https://127.0.0.1:{p}/jwks.json"),
        format!("http://127.1:{p}/jwks.json"),
        format!("http://2130706433:{p}/jwks.json"),
        format!("http://0x7f.0.0.1:{p}/jwks.json"),
        format!("http://0177.0.0.1:{p}/jwks.json"),
        format!("http://[::1]:{p}/jwks.json"),
        format!("http://[::ffff:127.0.0.1]:{p}/jwks.json"),
        format!("http://0.0.0.0:{p}/jwks.json"),
        format!("http://[::]:{p}/jwks.json"),
        format!("http://localhost:{p}/jwks.json"),
        format!("https://localhost:{p}/jwks.json"),
        format!("https://LocalHost.:{p}/jwks.json"),
        format!("http://{own}/metrics"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "https://169.254.169.254/latest/meta-data/".into(),
        "https://[::ffff:a9fe:a9fe]/latest/meta-data/".into(),
        "https://10.0.0.1/jwks.json".into(),
        "https://172.16.0.1/jwks.json".into(),
        "https://192.168.0.1/jwks.json".into(),
        "https://100.64.0.1/jwks.json".into(),
        "https://[fd00::1]/jwks.json".into(),
        "https://[fe80::1]/jwks.json".into(),
        "https://224.0.0.1/jwks.json".into(),
        "https://255.255.255.255/jwks.json".into(),
        "http://idp.example.com/jwks.json".into(),
        "https://user:pw@idp.example.com/jwks.json".into(),
        "ftp://idp.example.com/jwks.json".into(),
        "file:///etc/passwd".into(),
        "jwks.json".into(),
    ];
    let mut messages = std::collections::HashSet::new();
    for (i, url) in refused.iter().enumerate() {
        let res = register(&app, &format!("https://idp{i}.example.com"), url).await;
        let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        assert_eq!(body["error"]["param"], "jwks_url", "{url}: {body}");
        messages.insert(body["error"]["message"].as_str().unwrap().to_string());
    }
    assert_eq!(
        messages.len(),
        1,
        "one message for every refusal: {messages:?}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 0, "nothing was connected to");
    let list: Value = app
        .get("/v1/identity-providers", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));

    // A public https URL is accepted (this one does not resolve here: the fetch decides), and
    // stored in its normalised form.
    let res = register(
        &app,
        "https://idp.example.com",
        "https://IDP.Example.com:443/.well-known/jwks.json",
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let reg: Value = res.json().await.unwrap();
    assert_eq!(
        reg["jwks_url"],
        "https://idp.example.com/.well-known/jwks.json"
    );
}

async fn fetch_time_refuses_non_public_destinations(app: TestApp) {
    // A real JWKS with the signing key, so any fetch that got through would verify the token.
    let kp = keypair();
    let doc = Arc::new(std::sync::Mutex::new(json!({"keys": [rsa_jwk(&kp, "k1")]})));
    let hits = Arc::new(AtomicUsize::new(0));
    let jwks = jwks_server(doc, hits.clone()).await;
    let p = url::Url::parse(&jwks).unwrap().port().unwrap();
    let (q, conns) = counting_listener().await;
    let own = app.addr;
    let stored = [
        jwks.clone(),
        format!("https://127.0.0.1:{p}/jwks.json"),
        format!("http://localhost:{p}/jwks.json"),
        format!("http://2130706433:{p}/jwks.json"),
        format!("http://[::ffff:127.0.0.1]:{p}/jwks.json"),
        format!("http://0.0.0.0:{p}/jwks.json"),
        format!("http://user:pw@127.0.0.1:{p}/jwks.json"),
        format!("http://127.0.0.1:{q}/jwks.json"),
        format!("https://localhost:{q}/jwks.json"),
        format!("http://[::1]:{q}/jwks.json"),
        format!("http://{own}/metrics"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "https://[fd00::1]/jwks.json".into(),
        "https://idp.invalid/jwks.json".into(),
    ];
    let mut answers = Vec::new();
    for (i, url) in stored.iter().enumerate() {
        let issuer = format!("https://stored{i}.example.com");
        stored_issuer(&app, &issuer, url).await;
        let first = answer(&app, &token(&kp, &issuer)).await;
        assert_eq!(first.0, StatusCode::UNAUTHORIZED, "{url}: {first:?}");
        assert_eq!(first.2["error"]["code"], "AUTH_INVALID", "{url}");
        // The same answer while the failed fetch waits out its back-off.
        assert_eq!(answer(&app, &token(&kp, &issuer)).await, first, "{url}");
        answers.push(first);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the JWKS server was never asked"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 0, "nothing was connected to");

    // Control: an instance that lists the JWKS server's address fetches it, and the token works.
    let entry = format!("127.0.0.1:{p}");
    let listed = app
        .second_instance_with(move |c| c.outbound.allow = vec![entry])
        .await;
    let me = listed
        .get("/v1/me", &token(&kp, "https://stored0.example.com"))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The same address spelled in decimal or as IPv4-mapped IPv6 is the same destination, so
    // it is listed too; every other name, address and port stays refused there.
    for i in [3, 4] {
        let issuer = format!("https://stored{i}.example.com");
        let (status, _, _) = answer(&listed, &token(&kp, &issuer)).await;
        assert_eq!(status, StatusCode::OK, "{}", stored[i]);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    for i in [1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13] {
        let issuer = format!("https://stored{i}.example.com");
        let (status, _, _) = answer(&listed, &token(&kp, &issuer)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", stored[i]);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 0);
}

async fn open_and_closed_ports_answer_the_same(app: TestApp) {
    let kp = keypair();
    let (open, conns) = counting_listener().await;
    let closed = closed_port().await;
    // Without an allow-list neither is connected to, and both read the same.
    stored_issuer(
        &app,
        "https://open.example.com",
        &format!("http://127.0.0.1:{open}/k"),
    )
    .await;
    stored_issuer(
        &app,
        "https://closed.example.com",
        &format!("http://127.0.0.1:{closed}/k"),
    )
    .await;
    let a = answer(&app, &token(&kp, "https://open.example.com")).await;
    let b = answer(&app, &token(&kp, "https://closed.example.com")).await;
    assert_eq!(a, b);
    assert_eq!(a.0, StatusCode::UNAUTHORIZED);
    assert_eq!(conns.load(Ordering::SeqCst), 0);

    // Where the allow-list admits loopback (any port), the fetches are made — and still every
    // failure reads the same: a closed port, an open port that is not HTTP, an HTTP error, a
    // page that is not a JWKS (the gateway's own /metrics), a JWKS over the size limit, and a
    // redirect (never followed, even to a listed address that would answer with the keys).
    let keys = json!({"keys": [rsa_jwk(&kp, "k1")]});
    let hits = Arc::new(AtomicUsize::new(0));
    let jwks = jwks_server(Arc::new(std::sync::Mutex::new(keys)), hits.clone()).await;
    let not_found =
        http_server(axum::Router::new().fallback(|| async { StatusCode::NOT_FOUND })).await;
    let huge = http_server(axum::Router::new().fallback(|| async {
        let pad = "x".repeat(2 * 1024 * 1024);
        axum::Json(json!({"keys": [], "pad": pad}))
    }))
    .await;
    let to = jwks.clone();
    let redirect = http_server(axum::Router::new().fallback(move || {
        let to = to.clone();
        async move { axum::response::Redirect::temporary(&to) }
    }))
    .await;
    let cases = [
        (
            "https://c1.example.com",
            format!("http://127.0.0.1:{closed}/k"),
        ),
        (
            "https://c2.example.com",
            format!("http://127.0.0.1:{open}/k"),
        ),
        ("https://c3.example.com", format!("{not_found}/jwks.json")),
        (
            "https://c4.example.com",
            format!("http://{}/metrics", app.addr),
        ),
        ("https://c5.example.com", format!("{huge}/jwks.json")),
        ("https://c6.example.com", format!("{redirect}/jwks.json")),
    ];
    for (iss, url) in &cases {
        stored_issuer(&app, iss, url).await;
    }
    let loopback = app
        .second_instance_with(|c| c.outbound.allow = vec!["127.0.0.0/8".into()])
        .await;
    let mut seen = Vec::new();
    for (iss, url) in &cases {
        let got = answer(&loopback, &token(&kp, iss)).await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{url}: {got:?}");
        seen.push(got);
    }
    assert!(seen.iter().all(|s| *s == a), "{a:?} vs {seen:?}");
    assert!(
        conns.load(Ordering::SeqCst) >= 1,
        "the open port was connected to"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

/// `[outbound] allow` admits exactly its entries: an address with a port admits that address
/// and port only (not the name `localhost`, not another loopback address or port); a host
/// entry admits that name (and not the address it resolves to, written as an address).
mod the_allow_list_admits_exactly_what_it_lists {
    use super::*;

    async fn run(db: Db) {
        let kp = keypair();
        let doc = json!({"keys": [rsa_jwk(&kp, "k1")]});
        let (h1, h2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let s1 = jwks_server(Arc::new(std::sync::Mutex::new(doc.clone())), h1.clone()).await;
        let s2 = jwks_server(Arc::new(std::sync::Mutex::new(doc)), h2.clone()).await;
        let port = |u: &str| url::Url::parse(u).unwrap().port().unwrap();
        let (p1, p2) = (port(&s1), port(&s2));
        let entry = format!("127.0.0.1:{p1}");
        let Some(app) =
            TestApp::spawn_with(Opts::new(db).edit(move |c| c.outbound.allow = vec![entry])).await
        else {
            return;
        };
        let res = register(&app, "https://one.example.com", &s1).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let me = app
            .get("/v1/me", &token(&kp, "https://one.example.com"))
            .await;
        assert_eq!(me.status(), StatusCode::OK);
        assert_eq!(h1.load(Ordering::SeqCst), 1);
        for (i, url) in [
            s2.clone(),
            format!("http://localhost:{p1}/jwks.json"),
            format!("http://[::1]:{p1}/jwks.json"),
            format!("http://127.0.0.2:{p1}/jwks.json"),
            format!("http://0.0.0.0:{p1}/jwks.json"),
        ]
        .iter()
        .enumerate()
        {
            let res = register(&app, &format!("https://no{i}.example.com"), url).await;
            expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        }
        // A stored registration of the unlisted server is not fetched either.
        stored_issuer(&app, "https://two.example.com", &s2).await;
        let me = app
            .get("/v1/me", &token(&kp, "https://two.example.com"))
            .await;
        assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(h2.load(Ordering::SeqCst), 0);

        // A host entry: `localhost:<p2>` admits that name on that port, whatever it resolves to.
        let entry = format!("localhost:{p2}");
        let named = app
            .second_instance_with(move |c| c.outbound.allow = vec![entry])
            .await;
        let by_name = format!("http://localhost:{p2}/jwks.json");
        let res = register(&named, "https://three.example.com", &by_name).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let me = named
            .get("/v1/me", &token(&kp, "https://three.example.com"))
            .await;
        assert_eq!(me.status(), StatusCode::OK);
        assert_eq!(h2.load(Ordering::SeqCst), 1);
        for url in [
            format!("http://127.0.0.1:{p2}/jwks.json"),
            by_name.replace(&p2.to_string(), &p1.to_string()),
        ] {
            let res = register(&named, "https://four.example.com", &url).await;
            expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(Db::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        run(Db::Postgres).await
    }
}

/// An identity provider that never answers holds up only its own tokens: the JWKS cache locks
/// per registration, not across all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_identity_provider_delays_only_its_own_tokens() {
    let kp = keypair();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            held.push(sock); // read nothing, answer nothing
        }
    });
    let hits = Arc::new(AtomicUsize::new(0));
    let doc = json!({"keys": [rsa_jwk(&kp, "k1")]});
    let jwks = jwks_server(Arc::new(std::sync::Mutex::new(doc)), hits.clone()).await;
    let app = TestApp::spawn_with(
        Opts::new(Db::Sqlite).edit(|c| c.outbound.allow = vec!["127.0.0.1".into()]),
    )
    .await
    .unwrap();
    assert_eq!(
        register(
            &app,
            "https://slow.example.com",
            &format!("http://127.0.0.1:{silent}/k")
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        register(&app, "https://quick.example.com", &jwks)
            .await
            .status(),
        StatusCode::CREATED
    );
    let slow_token = token(&kp, "https://slow.example.com");
    let (client, url) = (app.client.clone(), app.url("/v1/me"));
    let slow = tokio::spawn(async move {
        let res = client
            .get(url)
            .bearer_auth(slow_token)
            .send()
            .await
            .unwrap();
        res.status()
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            accepted.load(Ordering::SeqCst) >= 1
        })
        .await,
        "the slow provider was connected to"
    );
    let me = app
        .get("/v1/me", &token(&kp, "https://quick.example.com"))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    assert!(!slow.is_finished(), "the slow fetch is still waiting");
    // It gives up after its deadline, with the usual answer.
    assert_eq!(slow.await.unwrap(), StatusCode::UNAUTHORIZED);
}

/// The alert webhook goes through the same guard: a webhook URL on loopback (here `https`, which
/// passes the configuration's syntax check) is never connected to, while the alert itself is
/// still audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_webhook_is_not_sent_to_a_loopback_address() {
    let (p, conns) = counting_listener().await;
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |cfg| {
        cfg.alerts.spike_multiple = 3.0;
        cfg.alerts.spike_min_requests = 5;
        cfg.alerts.webhook_url = Some(format!("https://127.0.0.1:{p}/hook"));
        cfg.usage.flush_ms = 50;
    }))
    .await
    .unwrap();
    let k = app
        .create_key(&app.owner_key, json!({"name": "bursty"}))
        .await;
    let key = k["key"].as_str().unwrap();
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
    let audited = eventually(Duration::from_secs(10), || async {
        let page: Value = app
            .get("/v1/audit-events?action=alert.usage_spike", &app.owner_key)
            .await
            .json()
            .await
            .unwrap();
        !page["data"].as_array().unwrap().is_empty()
    })
    .await;
    assert!(audited, "the alert is audited");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(conns.load(Ordering::SeqCst), 0, "the webhook was not sent");
}
