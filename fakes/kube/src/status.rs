//! `Status` objects, the body of every apiserver error
//! (`k8s.io/apimachinery/pkg/api/errors/errors.go` builds the same fields).

use serde_json::{Value, json};

use crate::kinds::ResourceKind;

/// An API error: the HTTP code and the `Status` body the real server sends with it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub status: Value,
    /// The `Retry-After` header (seconds) that goes with a 429.
    pub retry_after: Option<u64>,
}

fn status(code: u16, reason: &str, message: String, details: Value) -> ApiError {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if !details.is_null() {
        body["details"] = details;
    }
    ApiError { code, status: body, retry_after: None }
}

fn details(kind: &ResourceKind, name: Option<&str>) -> Value {
    let mut d = json!({"kind": kind.resource});
    if !kind.group.is_empty() {
        d["group"] = json!(kind.group);
    }
    if let Some(name) = name {
        d["name"] = json!(name);
    }
    d
}

impl ApiError {
    /// A path the server does not serve (unknown group/version/resource, or a CRD not installed).
    pub fn path_not_found() -> Self {
        status(404, "NotFound", "the server could not find the requested resource".into(), json!({}))
    }

    /// `errors.NewNotFound`: `services "x" not found`, details naming the resource.
    pub fn object_not_found(kind: &ResourceKind, name: &str) -> Self {
        let msg = format!("{} \"{name}\" not found", kind.qualified_resource());
        status(404, "NotFound", msg, details(kind, Some(name)))
    }

    /// RBAC denial as the authorizer words it (`plugin/pkg/auth/authorizer/rbac`, `errors.NewForbidden`).
    pub fn forbidden(kind: &ResourceKind, verb: &str, namespace: Option<&str>, user: &str) -> Self {
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let msg = format!(
            "{} is forbidden: User \"{user}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            kind.qualified_resource(),
            kind.resource,
            kind.group
        );
        status(403, "Forbidden", msg, details(kind, None))
    }

    /// An expired `continue` token (storage `ErrResourceExpired` on a paged LIST): HTTP 410.
    pub fn continue_expired() -> Self {
        let msg = "The provided continue parameter is too old to display a consistent list result. \
                   You can start a new list without the continue parameter."
            .to_owned();
        status(410, "Expired", msg, Value::Null)
    }

    /// The Status inside the ERROR event of a watch whose resourceVersion was compacted away
    /// (`watch_cache.go`: "too old resource version: %d (%d)").
    pub fn too_old(requested: u64, oldest_minus_one: u64) -> Self {
        status(410, "Expired", format!("too old resource version: {requested} ({oldest_minus_one})"), Value::Null)
    }

    /// No valid credentials: the authentication filter's answer (`endpoints/handlers/
    /// responsewriters` `UnauthorizedError`), a bare "Unauthorized" Status.
    pub fn unauthorized() -> Self {
        status(401, "Unauthorized", "Unauthorized".into(), Value::Null)
    }

    /// `apierrors.NewTooManyRequests`, as API priority and fairness rejects a request:
    /// HTTP 429, `Retry-After`, and `details.retryAfterSeconds`.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let msg = "Too many requests, please try again later.".to_owned();
        let mut e = status(429, "TooManyRequests", msg, json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    pub fn bad_request(message: String) -> Self {
        status(400, "BadRequest", message, Value::Null)
    }

    pub fn unavailable() -> Self {
        status(503, "ServiceUnavailable", "the server is currently unable to handle the request".into(), Value::Null)
    }

    pub fn method_not_allowed() -> Self {
        status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Value::Null,
        )
    }
}
