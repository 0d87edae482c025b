//! AdmissionReview v1 on the wire: lenient decoding (objects stay raw until a handler needs them) and the
//! response shape kube-apiserver expects.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The only AdmissionReview version served; the webhook configurations list only this one.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// kube-apiserver refuses request bodies over 3 MiB; an AdmissionReview larger than that cannot be genuine.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Group/version/kind as AdmissionReview carries it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Gvk {
    /// API group ("" for core).
    #[serde(default)]
    pub group: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// The requesting user.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UserInfo {
    /// User name, e.g. `system:serviceaccount:kube-egress-gateway:node-agent`.
    #[serde(default)]
    pub username: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The fields of an AdmissionRequest this webhook reads. Objects stay raw JSON so that pod reviews, which
/// mostly need nothing, are not parsed in full.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    /// Echoed in the response.
    pub uid: String,
    /// Kind of the object.
    #[serde(default)]
    pub kind: Gvk,
    /// Subresource, if any (e.g. `status`).
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Object name (may be empty on CREATE with generateName).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace of namespaced objects.
    #[serde(default)]
    pub namespace: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    #[serde(default)]
    pub operation: String,
    /// Who is asking.
    #[serde(default)]
    pub user_info: UserInfo,
    /// The new object (CREATE, UPDATE).
    #[serde(default, borrow)]
    pub object: Option<&'a RawValue>,
    /// The previous object (UPDATE, DELETE).
    #[serde(default, borrow)]
    pub old_object: Option<&'a RawValue>,
    /// A dry run: the handler must have no side effects (none of ours has any).
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default, borrow)]
    request: Option<&'a RawValue>,
}

/// Why a body could not be reviewed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all: answered with HTTP 400, since there is no uid to answer to.
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an AdmissionReview this webhook understands: answered with a denial (HTTP 200).
    #[error("{message}")]
    Unreviewable {
        /// uid, when it could be read.
        uid: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedEnvelope<'a> {
    api_version: String,
    kind: String,
    #[serde(borrow)]
    request: Request<'a>,
}

/// Decodes an AdmissionReview body.
pub fn decode(body: &[u8]) -> Result<Request<'_>, DecodeError> {
    // The common case in one pass over the body; anything unusual is re-read below to say what is wrong.
    if let Ok(env) = serde_json::from_slice::<TypedEnvelope<'_>>(body)
        && env.kind == "AdmissionReview"
        && env.api_version == ADMISSION_API_VERSION
    {
        return Ok(env.request);
    }
    let env: Envelope<'_> = serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let uid_of = |raw: Option<&RawValue>| {
        raw.and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
            .and_then(|v| v.get("uid").and_then(|u| u.as_str()).map(str::to_string))
            .unwrap_or_default()
    };
    if env.kind != "AdmissionReview" || env.api_version != ADMISSION_API_VERSION {
        return Err(DecodeError::Unreviewable {
            uid: uid_of(env.request),
            message: format!(
                "unsupported review {}/{}: this webhook serves AdmissionReview {ADMISSION_API_VERSION} only \
                 (set admissionReviewVersions: [v1])",
                if env.api_version.is_empty() {
                    "<no apiVersion>"
                } else {
                    &env.api_version
                },
                if env.kind.is_empty() {
                    "<no kind>"
                } else {
                    &env.kind
                },
            ),
        });
    }
    let Some(raw) = env.request else {
        return Err(DecodeError::Unreviewable {
            uid: String::new(),
            message: "AdmissionReview has no request".into(),
        });
    };
    serde_json::from_str::<Request<'_>>(raw.get()).map_err(|e| DecodeError::Unreviewable {
        uid: uid_of(Some(raw)),
        message: format!("malformed AdmissionReview request: {e}"),
    })
}

/// A field-level cause of a denial (shown by kubectl, used by clients that map fields).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Cause {
    /// JSON field path.
    pub field: String,
    /// What is wrong there.
    pub message: String,
    /// `FieldValueInvalid`, `FieldValueForbidden`, ...
    pub reason: &'static str,
}

/// An admission decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// Echo of the request uid.
    pub uid: String,
    /// Allowed or denied.
    pub allowed: bool,
    /// Denial: HTTP-like code (kube-apiserver returns it to the client), reason and message.
    pub denial: Option<Denial>,
    /// JSON patch to apply (mutating webhooks).
    pub patch: Option<json_patch::Patch>,
    /// Warnings shown by kubectl (`Warning: ...`).
    pub warnings: Vec<String>,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Denial {
    /// 400 for invalid objects and malformed reviews, 403 for forbidden writers.
    pub code: u16,
    /// `BadRequest` or `Forbidden`.
    pub reason: &'static str,
    /// One-line message: every violation with its path.
    pub message: String,
    /// Per-field causes.
    pub causes: Vec<Cause>,
}

impl Response {
    /// Allow, no changes.
    pub fn allow(uid: &str) -> Self {
        Response {
            uid: uid.to_string(),
            allowed: true,
            ..Default::default()
        }
    }

    /// Deny.
    pub fn deny(uid: &str, denial: Denial) -> Self {
        Response {
            uid: uid.to_string(),
            allowed: false,
            denial: Some(denial),
            ..Default::default()
        }
    }

    /// Label for metrics.
    pub fn result_label(&self) -> &'static str {
        match (self.allowed, &self.patch) {
            (false, _) => "denied",
            (true, Some(_)) => "patched",
            (true, None) => "allowed",
        }
    }

    /// The AdmissionReview v1 JSON body.
    pub fn to_review_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct StatusDetails<'a> {
            causes: &'a [Cause],
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Status<'a> {
            code: u16,
            reason: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<StatusDetails<'a>>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            uid: &'a str,
            allowed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<Status<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            patch_type: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            patch: Option<String>,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            warnings: &'a [String],
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Review<'a> {
            api_version: &'a str,
            kind: &'a str,
            response: Body<'a>,
        }
        let patch = self.patch.as_ref().filter(|p| !p.0.is_empty()).map(|p| {
            // A Patch of plain JSON values always serialises.
            let bytes = serde_json::to_vec(p).unwrap_or_default();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        let review = Review {
            api_version: ADMISSION_API_VERSION,
            kind: "AdmissionReview",
            response: Body {
                uid: &self.uid,
                allowed: self.allowed,
                status: self.denial.as_ref().map(|d| Status {
                    code: d.code,
                    reason: d.reason,
                    message: &d.message,
                    details: (!d.causes.is_empty()).then_some(StatusDetails { causes: &d.causes }),
                }),
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch,
                warnings: &self.warnings,
            },
        };
        serde_json::to_vec(&review).unwrap_or_default()
    }
}
