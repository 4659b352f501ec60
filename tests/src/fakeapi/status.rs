//! The API's failures as the real apiserver reports them: `kind: Status` bodies with `code`,
//! `reason` and a message worded like the real one (clients match on `code` and `reason`).

use serde_json::{Value, json};

use super::resource::Resource;

/// A failed request: becomes an HTTP status and a `Status` body (or, inside a watch stream, an
/// `ERROR` event carrying the same `Status`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status (`name`, `group`, `kind`), when the real one has them.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, resource: Resource, name: &str) -> ApiError {
        self.details = Some(json!({
            "name": name,
            "group": resource.group(),
            "kind": resource.plural(),
        }));
        self
    }

    /// `nodes "x" not found`
    pub fn not_found(resource: Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
        )
        .with_details(resource, name)
    }

    /// A path the server does not serve.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// `leases.coordination.k8s.io "x" already exists`
    pub fn already_exists(resource: Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified()),
        )
        .with_details(resource, name)
    }

    /// A write whose `metadata.resourceVersion` is not the stored one.
    pub fn conflict(resource: Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                resource.qualified()
            ),
        )
        .with_details(resource, name)
    }

    /// A resourceVersion older than the compaction point.
    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// `Lease.coordination.k8s.io "x" is invalid: FIELD: REASON` (`Node "x"` for the core group)
    pub fn invalid(resource: Resource, name: &str, cause: &str) -> ApiError {
        let kind = match resource.group() {
            "" => resource.kind().to_owned(),
            group => format!("{}.{group}", resource.kind()),
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {cause}"),
        )
        .with_details(resource, name)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `nodes "x" is forbidden: User "u" cannot patch resource "nodes/status" in API group ""
    /// at the cluster scope`
    pub fn forbidden(message: String, resource: Resource, name: Option<&str>) -> ApiError {
        let error = ApiError::new(403, "Forbidden", message);
        error.with_details(resource, name.unwrap_or(""))
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted \
                 media types include: application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json"
            ),
        )
    }

    /// A `resourceVersion` newer than any the server has (the real one waits a while first).
    pub fn too_large_resource_version(requested: u64, current: u64) -> ApiError {
        ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        )
    }

    /// A failure injected through the control surface.
    pub fn injected(code: u16) -> ApiError {
        match code {
            429 => ApiError::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            code => ApiError::new(
                code,
                "InternalError",
                "Internal error occurred: injected failure",
            ),
        }
    }

    /// The `kind: Status` body.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_look_like_the_real_ones() {
        let e = ApiError::not_found(Resource::Nodes, "n1");
        assert_eq!(e.status()["message"], "nodes \"n1\" not found");
        assert_eq!(e.status()["details"]["kind"], "nodes");
        let e = ApiError::conflict(Resource::Leases, "l");
        assert!(
            e.message
                .starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"l\"")
        );
        let e = ApiError::invalid(
            Resource::Leases,
            "l",
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
        );
        assert_eq!(
            e.message,
            "Lease.coordination.k8s.io \"l\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        );
        let e = ApiError::invalid(Resource::Nodes, "n", "x");
        assert_eq!(e.message, "Node \"n\" is invalid: x");
        assert_eq!(ApiError::expired(3, 9).status()["code"], 410);
    }
}
