//! A JSON answer written straight from its value by serde. poem-openapi's `Json<T>` first
//! converts the whole answer into a `serde_json::Value` tree (a map per object, every job's
//! payload cloned) and then writes the tree, which for a large batch is most of the work of
//! answering (ADR 0007). The schema in the OpenAPI document is `T`'s, as with `Json<T>`, and
//! so is the JSON (keys come in declaration order rather than sorted): `T`'s `Serialize` must
//! write what its `ToJSON` would (a unit test per type checks it).

use chrono::{DateTime, Utc};
use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
};
use serde::{Serialize, Serializer};

pub struct SerdeJson<T>(pub T);

impl<T: Type> Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        poem::web::Json(self.0).into_response()
    }
}

impl<T: Type + Serialize + Send> ApiResponse for SerdeJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// An instant as poem-openapi writes one (`to_rfc3339`, offset `+00:00`), so that answers
/// written by serde match the others.
pub fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339())
}

/// [`rfc3339`], or `null`.
pub fn rfc3339_or_null<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// A `real` as poem-openapi writes one: widened to `f64` (33.3 reads 33.29999923706055), so
/// that a value reads the same from every answer.
pub fn real_or_null<S: Serializer>(value: &Option<f32>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_f64(f64::from(*value)),
        None => serializer.serialize_none(),
    }
}
