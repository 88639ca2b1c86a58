//! A console client for the HTTP tests (`console`, `console_admin`): a browser's cookies, no
//! automatic redirects, forms posted as a browser posts them, and every HTML page checked for
//! inline scripts and inline event handlers (the CSP forbids them).

use std::collections::HashMap;

use reqwest::StatusCode;

use crate::helpers::TestApp;

/// A browser: its cookies, and no automatic redirects.
pub struct Browser {
    client: reqwest::Client,
    base: String,
    pub jar: HashMap<String, String>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            jar: HashMap::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, res: reqwest::Response) -> Page {
        let status = res.status();
        let headers = res.headers().clone();
        let set_cookies: Vec<String> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let first = c.split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_string(), v.to_string());
            }
        }
        let location = headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let body = res.text().await.unwrap();
        let html = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
        if html {
            assert_no_inline_script(&body);
        }
        Page {
            status,
            location,
            set_cookies,
            headers,
            body,
        }
    }

    /// `path` may be an absolute URL on another port (the public URL of a port-0 test app):
    /// only its path and query are used.
    pub fn url(&self, path: &str) -> String {
        let rel = match path.find("://") {
            Some(i) => &path[path[i + 3..].find('/').map_or(path.len(), |j| i + 3 + j)..],
            None => path,
        };
        format!("{}{rel}", self.base)
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let res = self
            .client
            .get(self.url(path))
            .header("cookie", self.cookie_header())
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        self.take(res).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let res = self
            .client
            .post(self.url(path))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.take(res).await
    }

    /// Posts a form with this browser's CSRF token, as the console's forms do.
    pub async fn submit(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let csrf = self.csrf();
        let mut pairs: Vec<(&str, &str)> = vec![("csrf_token", &csrf)];
        pairs.extend_from_slice(form);
        self.post(path, &pairs).await
    }

    pub fn csrf(&self) -> String {
        self.jar
            .iter()
            .find(|(k, _)| k.ends_with("tg_console_csrf"))
            .map(|(_, v)| v.clone())
            .expect("a CSRF cookie")
    }
}

/// The value of `name="{field}" value="…"` (or the `action` of the form holding `marker`).
pub fn input_value(html: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let i = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + needle.len();
    unescape(&html[i..i + html[i..].find('"').unwrap()])
}

/// Decodes the character references askama writes in attributes.
pub fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find(';').map(|j| i + j).unwrap();
        let ent = &rest[i + 1..j];
        let c = match ent {
            "amp" => '&',
            "quot" => '"',
            "lt" => '<',
            "gt" => '>',
            e if e.starts_with("#x") => {
                char::from_u32(u32::from_str_radix(&e[2..], 16).unwrap()).unwrap()
            }
            e if e.starts_with('#') => char::from_u32(e[1..].parse().unwrap()).unwrap(),
            e => panic!("entity {e}"),
        };
        out.push(c);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

/// Every HTML page of the console: no inline script, no inline event handler.
pub fn assert_no_inline_script(html: &str) {
    let lower = html.to_ascii_lowercase();
    for (i, _) in lower.match_indices("<script") {
        let tag = &lower[i..i + lower[i..].find('>').unwrap()];
        assert!(tag.contains(" src="), "inline script: {tag}");
    }
    let re_on = lower.split(|c: char| c.is_whitespace()).any(|w| {
        w.starts_with("on")
            && w.contains("=\"")
            && w[2..].starts_with(|c: char| c.is_ascii_lowercase())
            && !w.starts_with("one")
    });
    assert!(!re_on, "an inline event handler");
}
