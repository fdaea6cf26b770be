//! The web UI: static files (HTML, CSS, JavaScript modules) built into the binary and
//! served by every manager's REST listener at `/` and `/ui/...`, with no authentication.
//! The page signs in with the API token and then calls only the public `/v1` API, as any
//! client would; these routes never touch the log and never see a token.
//!
//! No build step: the files in `assets/` are what the browser runs. Every response carries
//! a Content-Security-Policy that allows only this origin (no inline script or style, no
//! CDN), and an ETag with `Cache-Control: no-cache`, so a browser revalidates each file and
//! a new binary's files are seen at the next load.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::ApiError;

/// One file of the UI.
struct Asset {
    /// Its path under `assets/` and under `/ui/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $mime:expr),* $(,)?) => {
        &[$(Asset { path: $path, content_type: $mime, body: include_bytes!(concat!("assets/", $path)) }),*]
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the UI has; a test checks that this is exactly the `assets/` directory.
static ASSETS: &[Asset] = assets![
    "index.html" => HTML,
    "app.css" => CSS,
    "icon.svg" => "image/svg+xml",
    "js/app.js" => JS,
    "js/api.js" => JS,
    "js/events.js" => JS,
    "js/view.js" => JS,
    "js/format.js" => JS,
    "js/pages/dashboard.js" => JS,
    "js/pages/volumes.js" => JS,
    "js/pages/volume.js" => JS,
    "js/pages/nodes.js" => JS,
    "js/pages/backups.js" => JS,
    "js/pages/jobs.js" => JS,
    "js/pages/settings.js" => JS,
];

/// Only this origin: no inline script or style, no other host (the API is same-origin).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The UI's routes, for the REST router (outside its authentication).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The ETag of each asset, by index in [`ASSETS`]: a blake3 of its bytes.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &blake3::hash(a.body).to_hex()[..20]))
            .collect()
    })
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::NotFound(format!("no UI file \"{path}\"")).into_response();
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_static(asset.content_type);
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Ok(tag) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, tag);
    }
    for (name, value) in [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("assets directory") {
            let entry = entry.expect("entry");
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().expect("type").is_dir() {
                files_under(&entry.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn every_file_in_assets_is_served_and_nothing_else() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ui/assets");
        let mut on_disk = Vec::new();
        files_under(&dir, "", &mut on_disk);
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        on_disk.sort();
        listed.sort();
        assert_eq!(listed, on_disk);
    }

    #[test]
    fn types_follow_the_extension() {
        for asset in ASSETS {
            let want = match asset.path.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => "image/svg+xml",
                other => panic!("{}: no type for {other:?}", asset.path),
            };
            assert_eq!(asset.content_type, want, "{}", asset.path);
        }
    }

    #[test]
    fn an_unchanged_file_is_not_sent_again() {
        let first = serve("app.css", &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.css", &again).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("nope.js", &again).status(), StatusCode::NOT_FOUND);
    }
}
