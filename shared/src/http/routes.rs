//! The routes: which method and path reach which endpoint, and which
//! Lambda function API Gateway sends each to. One table for both, so the
//! local router and `template.yaml` cannot drift apart (a test checks the
//! template against [`ROUTES`], and [`resolve`] against it).

use http::Method;

use crate::http::ApiError;

/// What a request addresses, once its method and path are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Metadata,
    /// `$export` at system, Patient or Group level.
    Kickoff,
    ExportRevisions,
    RevisionsFile,
    /// Everything under `$export-schedules` (its own sub-router).
    Schedules,
    /// Everything under `$export-releases` (its own sub-router).
    Releases,
    JobStatus,
    JobCancel,
    JobFile,
    ViewRun,
    ViewExport,
    StoredViewRun,
    Bundle,
    Create,
    Read,
    Update,
    Delete,
    /// Outside the FHIR base; served when authorization is on.
    Token,
    SmartConfiguration,
}

/// One API Gateway route: `method` and `path` as `template.yaml` writes
/// them (`ANY`, `{param}`, `{proxy+}`), and the function it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub endpoint: Endpoint,
    /// The function's logical id in `template.yaml`.
    pub function: &'static str,
}

/// The FHIR base the template routes (the local server's default too).
pub const TEMPLATE_BASE_PATH: &str = "/fhir";

/// The function API Gateway's `$default` route goes to: every request no
/// route matches. The router answers those itself (404, 405, or 308 to
/// the canonical path), reading nothing, so it needs no permission.
pub const DEFAULT_ROUTE_FUNCTION: &str = "ResourcesFunction";

const fn route(
    method: &'static str,
    path: &'static str,
    endpoint: Endpoint,
    function: &'static str,
) -> Route {
    Route {
        method,
        path,
        endpoint,
        function,
    }
}

use Endpoint::*;

const KICKOFF: &str = "KickoffFunction";
const STATUS: &str = "StatusFunction";
const FILES: &str = "FilesFunction";
const RESOURCES: &str = "ResourcesFunction";
const TOKEN: &str = "TokenFunction";
const SCHEDULES: &str = "SchedulesFunction";

/// Every route the service serves, as API Gateway routes it.
pub const ROUTES: &[Route] = &[
    route("GET", "/fhir/$export", Kickoff, KICKOFF),
    route("POST", "/fhir/$export", Kickoff, KICKOFF),
    route("GET", "/fhir/Patient/$export", Kickoff, KICKOFF),
    route("POST", "/fhir/Patient/$export", Kickoff, KICKOFF),
    route("GET", "/fhir/Group/{id}/$export", Kickoff, KICKOFF),
    route("POST", "/fhir/Group/{id}/$export", Kickoff, KICKOFF),
    route("POST", "/fhir/$export-revisions", ExportRevisions, KICKOFF),
    route(
        "POST",
        "/fhir/ViewDefinition/$viewdefinition-export",
        ViewExport,
        KICKOFF,
    ),
    route("GET", "/fhir/$export-jobs/{id}", JobStatus, STATUS),
    route("DELETE", "/fhir/$export-jobs/{id}", JobCancel, STATUS),
    route(
        "GET",
        "/fhir/$export-jobs/{id}/files/{name}",
        JobFile,
        FILES,
    ),
    route("GET", "/fhir/$export-revisions/file", RevisionsFile, FILES),
    route("GET", "/fhir/metadata", Metadata, RESOURCES),
    route("POST", "/fhir", Bundle, RESOURCES),
    route("POST", "/fhir/{type}", Create, RESOURCES),
    route("GET", "/fhir/{type}/{id}", Read, RESOURCES),
    route("PUT", "/fhir/{type}/{id}", Update, RESOURCES),
    route("DELETE", "/fhir/{type}/{id}", Delete, RESOURCES),
    route(
        "POST",
        "/fhir/ViewDefinition/$viewdefinition-run",
        ViewRun,
        RESOURCES,
    ),
    route(
        "GET",
        "/fhir/ViewDefinition/{id}/$viewdefinition-run",
        StoredViewRun,
        RESOURCES,
    ),
    route(
        "POST",
        "/fhir/ViewDefinition/{id}/$viewdefinition-run",
        StoredViewRun,
        RESOURCES,
    ),
    route("POST", "/auth/token", Token, TOKEN),
    route(
        "GET",
        "/fhir/.well-known/smart-configuration",
        SmartConfiguration,
        TOKEN,
    ),
    route("ANY", "/fhir/$export-schedules", Schedules, SCHEDULES),
    route(
        "ANY",
        "/fhir/$export-schedules/{proxy+}",
        Schedules,
        SCHEDULES,
    ),
    route("ANY", "/fhir/$export-releases", Releases, SCHEDULES),
    route(
        "ANY",
        "/fhir/$export-releases/{proxy+}",
        Releases,
        SCHEDULES,
    ),
];

/// The endpoint of a path below the FHIR base (its segments, decoded) for
/// `method`: 405 naming the allowed methods when the path is served but
/// not for this method, 404 when nothing is there.
pub fn resolve(segs: &[&str], method: &Method) -> Result<Endpoint, ApiError> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    let endpoint = match segs {
        ["metadata"] if get => Metadata,
        ["metadata"] => return Err(ApiError::method_not_allowed("GET")),
        ["$export"] | ["Patient", "$export"] | ["Group", _, "$export"] if get || post => Kickoff,
        ["$export"] | ["Patient", "$export"] | ["Group", _, "$export"] => {
            return Err(ApiError::method_not_allowed("GET, POST"))
        }
        ["$export-revisions"] if post => ExportRevisions,
        ["$export-revisions"] => return Err(ApiError::method_not_allowed("POST")),
        ["$export-revisions", "file"] if get => RevisionsFile,
        ["$export-revisions", "file"] => return Err(ApiError::method_not_allowed("GET")),
        ["$export-schedules", ..] => Schedules,
        ["$export-releases", ..] => Releases,
        ["$export-jobs", _] if get => JobStatus,
        ["$export-jobs", _] if method == Method::DELETE => JobCancel,
        ["$export-jobs", _] => return Err(ApiError::method_not_allowed("GET, DELETE")),
        ["$export-jobs", _, "files", _] if get => JobFile,
        ["$export-jobs", _, "files", _] => return Err(ApiError::method_not_allowed("GET")),
        ["ViewDefinition", "$viewdefinition-run"] if post => ViewRun,
        ["ViewDefinition", "$viewdefinition-run"] => {
            return Err(ApiError::method_not_allowed("POST"))
        }
        ["ViewDefinition", "$viewdefinition-export"] if post => ViewExport,
        ["ViewDefinition", "$viewdefinition-export"] => {
            return Err(ApiError::method_not_allowed("POST"))
        }
        ["ViewDefinition", _, "$viewdefinition-run"] if get || post => StoredViewRun,
        ["ViewDefinition", _, "$viewdefinition-run"] => {
            return Err(ApiError::method_not_allowed("GET, POST"))
        }
        [] if post => Bundle,
        [] => return Err(ApiError::method_not_allowed("POST")),
        [_] if post => Create,
        [_] => return Err(ApiError::method_not_allowed("POST")),
        [_, _] if get => Read,
        [_, _] if method == Method::PUT => Update,
        [_, _] if method == Method::DELETE => Delete,
        [_, _] => return Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
        _ => return Err(ApiError::not_found("Nothing at this path")),
    };
    Ok(endpoint)
}
