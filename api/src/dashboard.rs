//! The Flower-like dashboard: three static files built into the binary. The page signs in
//! with an API key and reads everything through the public `/v1` API, so it shows exactly
//! what that key may see.

use poem::{Endpoint, EndpointExt, IntoResponse, Route, get, handler};

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
        .with(poem::middleware::SetHeader::new().overriding("Cache-Control", "no-store"))
}
