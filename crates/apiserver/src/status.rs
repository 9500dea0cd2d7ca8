//! Errors as Kubernetes `Status` objects, fields in Kubernetes' order (some clients compare text).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use skiff_store::StoreError;

#[derive(Debug, Serialize)]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub group: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

#[derive(Debug, Serialize)]
struct Empty {}

/// A failed request, answered as a `Status`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<Details>>,
    pub code: u16,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: message.into(),
            reason,
            details: None,
            code,
        }
    }

    pub fn with_details(mut self, details: Details) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// `plural "name" not found`, with the details kubectl prints.
    pub fn not_found(group: &'static str, plural: &'static str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{plural} \"{name}\" not found")).with_details(Details {
            name: name.to_string(),
            group,
            kind: plural,
            ..Details::default()
        })
    }

    pub fn already_exists(group: &'static str, plural: &'static str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
        )
        .with_details(Details {
            name: name.to_string(),
            group,
            kind: plural,
            ..Details::default()
        })
    }

    pub fn conflict(group: &'static str, plural: &'static str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
        .with_details(Details {
            name: name.to_string(),
            group,
            kind: plural,
            ..Details::default()
        })
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 with one cause per field path.
    pub fn invalid(kind: &'static str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", summary.join(", ")),
        )
        .with_details(Details {
            name: name.to_string(),
            kind,
            causes,
            ..Details::default()
        })
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// Store errors that are not guard failures the caller already mapped.
    pub fn from_store(err: StoreError) -> Self {
        match err {
            StoreError::Compacted { requested, .. } => Self::new(
                410,
                "Expired",
                format!("too old resource version: {requested}"),
            ),
            StoreError::FutureRevision { requested, current } => Self::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::internal(other.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (code, [("content-type", "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_in_kubernetes_order() {
        let text =
            serde_json::to_string(&ApiError::not_found("", "configmaps", "app-config")).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"app-config\" not found","reason":"NotFound","details":{"name":"app-config","kind":"configmaps"},"code":404}"#
        );
    }

    #[test]
    fn each_error_has_its_code_reason_and_message() {
        let cases = [
            (
                ApiError::already_exists("", "configmaps", "a"),
                409,
                "AlreadyExists",
                "configmaps \"a\" already exists",
            ),
            (
                ApiError::conflict("apps", "deployments", "d"),
                409,
                "Conflict",
                "Operation cannot be fulfilled on deployments \"d\"",
            ),
            (ApiError::bad_request("bad"), 400, "BadRequest", "bad"),
            (
                ApiError::invalid(
                    "ConfigMap",
                    "a",
                    vec![Cause {
                        reason: "FieldValueInvalid",
                        message: "Invalid value: \"A\"".into(),
                        field: "metadata.name".into(),
                    }],
                ),
                422,
                "Invalid",
                "ConfigMap \"a\" is invalid: metadata.name: Invalid value: \"A\"",
            ),
            (
                ApiError::unauthorized(),
                401,
                "Unauthorized",
                "Unauthorized",
            ),
            (
                ApiError::method_not_allowed("PATCH"),
                405,
                "MethodNotAllowed",
                "this method on the requested resource: PATCH",
            ),
            (
                ApiError::internal("boom"),
                500,
                "InternalError",
                "Internal error occurred: boom",
            ),
            (
                ApiError::from_store(StoreError::Compacted {
                    requested: 7,
                    compacted: Some(9),
                }),
                410,
                "Expired",
                "too old resource version: 7",
            ),
            (
                ApiError::from_store(StoreError::FutureRevision {
                    requested: 9,
                    current: 4,
                }),
                504,
                "Timeout",
                "Too large resource version: 9, current: 4",
            ),
            (
                ApiError::from_store(StoreError::Closed),
                500,
                "InternalError",
                "the store is closed",
            ),
        ];
        for (err, code, reason, fragment) in cases {
            assert_eq!((err.code, err.reason), (code, reason), "{}", err.message);
            assert!(err.message.contains(fragment), "{}", err.message);
            let response = err.into_response();
            assert_eq!(response.status().as_u16(), code);
        }
    }
}
