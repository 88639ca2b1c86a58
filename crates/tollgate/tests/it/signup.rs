//! Sign-up does not reveal which email addresses are registered: a known and a new address get
//! the same answer (`202`, one body shape), each gets exactly one email, and only the mailbox
//! learns which case it was — a verification link for a new address, a "someone tried to sign
//! up" notice (no link, nothing changed) for a known one. The per-address limits still apply.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    a_known_address_answers_like_a_new_one,
    concurrent_sign_ups_of_one_address_make_one_account,
    a_sign_up_answered_before_shutdown_is_finished
);

const PASSWORD: &str = "correct horse battery staple";

/// Every message in the outbox, decoded (quoted-printable soft breaks undone).
fn mails(app: &TestApp) -> Vec<String> {
    let dir = app.state.config.data_dir.join("outbox");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=")
        })
        .collect()
}

/// Waits until the outbox holds `n` messages (sign-ups finish after their answer), then
/// returns them all.
async fn settled(app: &TestApp, n: usize) -> Vec<String> {
    eventually(std::time::Duration::from_secs(10), || async {
        mails(app).len() >= n
    })
    .await;
    let all = mails(app);
    assert_eq!(all.len(), n, "messages in the outbox");
    all
}

fn mails_to<'a>(all: &'a [String], email: &str) -> Vec<&'a String> {
    all.iter()
        .filter(|m| m.contains(&format!("To: {email}")))
        .collect()
}

async fn signup(app: &TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    let res = app
        .post(
            "/v1/auth/signup",
            "",
            json!({"email": email, "password": password}),
        )
        .await;
    (res.status(), res.json().await.unwrap())
}

async fn tenant_count(app: &TestApp) -> usize {
    let page: Value = app
        .get("/v1/tenants", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().len()
}

async fn password_hash(app: &TestApp, email: &str) -> Option<String> {
    let mut conn = app.state.store.pool().acquire().await.unwrap();
    tollgate::store::tenants::find_user_by_email(&mut conn, email)
        .await
        .unwrap()
        .and_then(|u| u.password_hash)
}

async fn a_known_address_answers_like_a_new_one(app: TestApp) {
    let tenants = tenant_count(&app).await;
    let owner_hash = password_hash(&app, OWNER_EMAIL).await;

    // The owner's address is registered; the other one is not.
    let known = signup(&app, OWNER_EMAIL, PASSWORD).await;
    let new = signup(&app, "fresh.person@example.com", PASSWORD).await;
    assert_eq!(known.0, StatusCode::ACCEPTED);
    assert_eq!(new.0, StatusCode::ACCEPTED);
    let mut masked = known.1.clone();
    masked["email"] = json!("fresh.person@example.com");
    assert_eq!(masked, new.1, "one body, but for the address it names");
    assert_eq!(known.1["status"], "check_your_email");
    assert_eq!(known.1["email"], OWNER_EMAIL);

    // The known address: nothing created or changed, one notice without a link.
    let all = settled(&app, 2).await;
    assert_eq!(
        tenant_count(&app).await,
        tenants + 1,
        "only the new address got a tenant"
    );
    assert_eq!(password_hash(&app, OWNER_EMAIL).await, owner_hash);
    let to_owner = mails_to(&all, OWNER_EMAIL);
    assert_eq!(to_owner.len(), 1);
    let notice = to_owner[0];
    assert!(
        notice.contains("Subject: Someone tried to sign up"),
        "{notice}"
    );
    assert!(notice.contains("already has an account"), "{notice}");
    assert!(!notice.contains("token=") && !notice.contains(PASSWORD));
    let events: Value = app
        .get("/v1/audit-events?action=user.signed_up", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["data"],
        json!([]),
        "no sign-up in the owner's tenant"
    );

    // The new address: a verification link.
    let to_new = mails_to(&all, "fresh.person@example.com");
    assert_eq!(to_new.len(), 1);
    assert!(to_new[0].contains("verify-email?token="));

    // Signing up again with another password changes nothing for the now-known address.
    let first = password_hash(&app, "fresh.person@example.com").await;
    let again = signup(&app, "fresh.person@example.com", "another long password").await;
    assert_eq!(again, new);
    settled(&app, 3).await;
    assert_eq!(password_hash(&app, "fresh.person@example.com").await, first);
    assert_eq!(tenant_count(&app).await, tenants + 1);

    // The per-address email limit (5 in the window) applies to a known address as to a new one.
    for _ in 0..4 {
        assert_eq!(
            signup(&app, OWNER_EMAIL, PASSWORD).await.0,
            StatusCode::ACCEPTED
        );
    }
    let (status, body) = signup(&app, OWNER_EMAIL, PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    for _ in 0..3 {
        signup(&app, "fresh.person@example.com", PASSWORD).await;
    }
    let (status, _) = signup(&app, "fresh.person@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let all = settled(&app, 10).await;
    assert_eq!(mails_to(&all, OWNER_EMAIL).len(), 5);
}

async fn concurrent_sign_ups_of_one_address_make_one_account(app: TestApp) {
    let tenants = tenant_count(&app).await;
    let email = "racer@example.com";
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url) = (app.client.clone(), app.url("/v1/auth/signup"));
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"email": email, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::ACCEPTED && a.1 == answers[0].1),
        "{answers:?}"
    );
    let all = settled(&app, 4).await;
    assert_eq!(tenant_count(&app).await, tenants + 1);
    let to = mails_to(&all, email);
    assert_eq!(to.len(), 4);
    assert_eq!(
        to.iter()
            .filter(|m| m.contains("verify-email?token="))
            .count(),
        1,
        "one verification, three notices"
    );
}

/// The part of a sign-up that runs after its answer is waited for at shutdown: a server
/// stopped right after answering has still written every account's verification mail.
async fn a_sign_up_answered_before_shutdown_is_finished(mut app: TestApp) {
    let emails: Vec<String> = (0..8).map(|i| format!("late{i}@example.com")).collect();
    let answers =
        futures_util::future::join_all(emails.iter().map(|e| signup(&app, e, PASSWORD))).await;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::ACCEPTED));
    app.stop().await;
    let all = mails(&app);
    for e in &emails {
        assert_eq!(mails_to(&all, e).len(), 1, "{e}: {all:?}");
    }
}
