//! Paging newest first by id (UUIDv7, so id order is creation order): a page's cursor is the
//! last id it holds, and the next page is what comes before it.

use uuid::Uuid;

use crate::error::ApiError;

/// Page size when a list is asked for without `limit`.
pub const DEFAULT_LIMIT: i64 = 50;

/// The id the next page starts before, from the `cursor` a client sent back.
pub fn before(cursor: Option<String>) -> Result<Option<Uuid>, ApiError> {
    cursor
        .map(|cursor| {
            cursor
                .parse::<Uuid>()
                .map_err(|_| ApiError::invalid("`cursor` is not a cursor this API returned"))
        })
        .transpose()
}

/// The cursor of the page after one whose ids are `ids`: none when the page was not full,
/// so the last page says it is the last.
pub fn next_cursor(
    ids: impl DoubleEndedIterator<Item = Uuid> + ExactSizeIterator,
    limit: i64,
) -> Option<String> {
    let full = ids.len() as i64 == limit;
    ids.last().filter(|_| full).map(|id| id.to_string())
}
