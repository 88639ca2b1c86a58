//! The console's static files, embedded in the binary. Each is served under a content-hashed
//! name (`console.1a2b3c4d5e.css`), so it can be cached forever: a changed file is a new URL.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file: its logical name, the bytes, the media type.
struct Source {
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

const SOURCES: &[Source] = &[
    Source {
        name: "console.css",
        bytes: include_bytes!("../../assets/console.css"),
        content_type: "text/css; charset=utf-8",
    },
    Source {
        name: "console.js",
        bytes: include_bytes!("../../assets/console.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Source {
        name: "chart.js",
        bytes: include_bytes!("../../assets/chart.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Source {
        name: "htmx-2.0.11.min.js",
        bytes: include_bytes!("../../assets/vendor/htmx-2.0.11.min.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Source {
        name: "uplot-1.6.32.iife.min.js",
        bytes: include_bytes!("../../assets/vendor/uplot-1.6.32.iife.min.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Source {
        name: "uplot-1.6.32.min.css",
        bytes: include_bytes!("../../assets/vendor/uplot-1.6.32.min.css"),
        content_type: "text/css; charset=utf-8",
    },
];

/// Where the console's asset routes live.
pub const PREFIX: &str = "/console/assets/";

struct Asset {
    logical: &'static str,
    hashed: String,
    bytes: &'static [u8],
    content_type: &'static str,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|s| {
            let digest = hex::encode(Sha256::digest(s.bytes));
            let hash = digest.get(..10).unwrap_or(&digest);
            let hashed = match s.name.rsplit_once('.') {
                Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
                None => format!("{}.{hash}", s.name),
            };
            Asset {
                logical: s.name,
                hashed,
                bytes: s.bytes,
                content_type: s.content_type,
            }
        })
        .collect()
});

/// The URL of an embedded file by its logical name (`console.css`); an unknown name is a bug
/// caught by the tests (it yields a URL that answers 404).
pub fn url(logical: &str) -> String {
    match ASSETS.iter().find(|a| a.logical == logical) {
        Some(a) => format!("{PREFIX}{}", a.hashed),
        None => format!("{PREFIX}missing-{logical}"),
    }
}

/// `GET /console/assets/{name}`: only the hashed names exist.
pub async fn serve(Path(name): Path<String>) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.hashed == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut res = a.bytes.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_hashed_name() {
        for s in SOURCES {
            let u = url(s.name);
            assert!(u.starts_with(PREFIX) && !u.contains("missing-"), "{u}");
            assert_ne!(u, format!("{PREFIX}{}", s.name));
        }
        assert!(url("nope.js").contains("missing-"));
    }
}
