//! `GET [base]/metadata`: the CapabilityStatement clients discover us by.

use serde_json::{json, Value};

use super::Resources;

/// The kick-off parameters the server supports, as the operations'
/// documentation states them (docs/src/user/protocol.md has the details).
pub const KICKOFF_PARAMETERS: &str = "Supported kick-off parameters: _outputFormat \
(application/fhir+ndjson), _since, _until, _type, _elements (top-level), patient (POST, \
Patient and Group level), includeAssociatedData (LatestProvenanceResources, \
RelevantProvenanceResources), allowPartialManifests (manifest pages, the first ones on the \
202s of a running export), organizeOutputBy (Patient, at Patient and Group level), \
_typeFilter (the R4 search parameters of type token, string, date, reference, quantity, \
number and uri; modifiers missing, not, text, exact, contains). Unsupported values follow \
Prefer: handling (400, or a note in the manifest's error file under handling=lenient). \
Each manifest output, deleted and error item carries the SHA-256 of the file's bytes as \
extension.sha256 (64 lowercase hex digits; of the NDJSON itself when it is sent gzipped).";

/// What `$viewdefinition-run` takes.
const VIEW_RUN: &str = "SQL on FHIR v2 ViewDefinitions, run synchronously: POST \
ViewDefinition/$viewdefinition-run (viewResource or viewReference), or GET/POST \
ViewDefinition/[id]/$viewdefinition-run for a stored view. Over inline resource parameters, \
or the store (optionally patient or group). _format json, ndjson, csv (header) or parquet; _limit \
(at most that many rows). Without _limit, more rows than the server's limit is a 422: use an export.";

/// What `$viewdefinition-export` takes.
const VIEW_EXPORT: &str = "SQL on FHIR v2 ViewDefinitions exported asynchronously: POST \
ViewDefinition/$viewdefinition-export with a Parameters body: one or more view parameters \
(parts name, viewResource or viewReference), _format csv (header) or ndjson, _since, patient, \
group, clientTrackingId. 202 and a status URL; the manifest lists each view's files.";

/// What `$export-revisions` takes.
const EXPORT_REVISIONS: &str = "The audit trail as CSV (Revision ID, Revision Time, User, \
User Email ID, Operation, Record Type, Record, Change Log), newest first: POST \
$export-revisions with a JSON body {startDate, endDate (epoch ms or ISO instants), userId or \
userIds, entities, includeModifiedProps}. Answers {fileId} when the file is ready within the \
wait budget, else {fileId: null, status}; Prefer: respond-async gives 202 and a manifest. \
The file: GET $export-revisions/file?fileId=. Needs the audit permission.";

/// What `$export-schedules` offers.
const EXPORT_SCHEDULES: &str = "Recurring exports: POST $export-schedules with a JSON body \
{name, cadence (rate(...) or cron(...), EventBridge syntax, UTC), mode (full or incremental: \
_since the previous successful run, deletions included), export (a kick-off such as \
$export?_type=Patient) or viewExport (a $viewdefinition-export Parameters body), startAt, \
startFromRelease, webhook {url, secret}}. GET lists the \
caller's schedules; GET/DELETE $export-schedules/{id}; POST .../{id}/pause, /resume, /run; \
GET .../{id}/runs; GET .../{id}/runs/{n or latest} answers as a status request (202 or the \
manifest); POST .../{id}/runs/{n or latest}/links?expiresIn=seconds gives presigned links to \
the manifest and files for systems without a token.";

/// What `$export-releases` offers.
const EXPORT_RELEASES: &str = "Named exports frozen at their transactionTime, made once for \
every subscriber: POST $export-releases {name, export} (needs system/*.read); GET lists them; \
GET or HEAD $export-releases/{name or latest} gives name, transactionTime, request and the \
manifest link; GET $export-releases/{name}/manifest answers as a status request, rebuilding \
expired files as of the same transactionTime (202 until done).";

impl Resources {
    pub fn capability_statement(&self) -> Value {
        let op = |name: &str, def: &str| json!({ "name": name, "definition": def, "documentation": KICKOFF_PARAMETERS });
        let mut cs = json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-22",
            "kind": "instance",
            "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
            "software": { "name": "bulk-export", "version": env!("CARGO_PKG_VERSION") },
            "implementation": { "description": "bulk-export FHIR Bulk Data server", "url": self.config.base_url },
            "fhirVersion": "4.0.1",
            "format": ["json", "application/fhir+json"],
            "rest": [{
                "mode": "server",
                "resource": [
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, {"code": "update"}, {"code": "create"}, {"code": "delete"}],
                        "operation": [op("patient-export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export")]
                    },
                    {
                        "type": "Group",
                        "interaction": [{"code": "read"}, {"code": "update"}, {"code": "create"}, {"code": "delete"}],
                        "operation": [op("group-export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export")]
                    }
                ],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
                "operation": [
                    op("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"),
                    {
                        "name": "viewdefinition-run",
                        "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run",
                        "documentation": VIEW_RUN
                    },
                    {
                        "name": "viewdefinition-export",
                        "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export",
                        "documentation": VIEW_EXPORT
                    },
                    {
                        "name": "export-revisions",
                        "definition": format!("{}/OperationDefinition/export-revisions", self.config.base_url),
                        "documentation": EXPORT_REVISIONS
                    },
                    {
                        "name": "export-schedules",
                        "definition": format!("{}/OperationDefinition/export-schedules", self.config.base_url),
                        "documentation": EXPORT_SCHEDULES
                    },
                    {
                        "name": "export-releases",
                        "definition": format!("{}/OperationDefinition/export-releases", self.config.base_url),
                        "documentation": EXPORT_RELEASES
                    }
                ]
            }]
        });
        if let Some(token_url) = &self.config.token_url {
            cs["rest"][0]["security"] = json!({
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token_url}]
                }]
            });
        }
        cs
    }
}
