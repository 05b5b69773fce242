//! Page tokens and cursors: where the next page starts, wrapped so that clients cannot read it
//! and must hand back exactly what they were given, as the real providers require.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

pub(crate) fn encode(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

/// The offset a token stands for; `None` for a token this fake did not make.
pub(crate) fn decode(token: &str) -> Option<usize> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    text.strip_prefix("offset:")?.parse().ok()
}

/// The `size` items from `offset` on, and the offset of the page after them if there is one.
pub(crate) fn page<T>(items: &[T], offset: usize, size: usize) -> (&[T], Option<usize>) {
    let start = offset.min(items.len());
    let end = (start + size).min(items.len());
    (&items[start..end], (end < items.len()).then_some(end))
}
