//! The Flower-like dashboard: three static files built into the binary. The page signs in
//! with an API key and reads everything through the public `/v1` API, so it shows exactly
//! what that key may see.

use poem::{Endpoint, EndpointExt, IntoResponse, Route, get, handler};

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

#[handler]
fn index() -> impl IntoResponse {
    include_str!("../dashboard/index.html").with_content_type("text/html; charset=utf-8")
}

#[handler]
fn script() -> impl IntoResponse {
    include_str!("../dashboard/app.js").with_content_type("text/javascript; charset=utf-8")
}

#[handler]
fn style() -> impl IntoResponse {
    include_str!("../dashboard/app.css").with_content_type("text/css; charset=utf-8")
}

pub fn routes() -> impl Endpoint {
    Route::new()
        .at("/", get(index))
        .at("/app.js", get(script))
        .at("/app.css", get(style))
        // The key lives in the page's session storage; keep the page out of shared caches.
        // Its own files only, no inline script or style, never inside another site's frame.
        .with(
            poem::middleware::SetHeader::new()
                .overriding("Cache-Control", "no-store")
                .overriding("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                .overriding("X-Frame-Options", "DENY")
                .overriding("X-Content-Type-Options", "nosniff")
                .overriding("Referrer-Policy", "no-referrer"),
        )
}
