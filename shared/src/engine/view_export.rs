//! `$viewdefinition-export`: checks the request, copies the views into the
//! job, and starts it. The job then runs as an ordinary export whose parts
//! write the views' rows (`worker::PartReader::emit`).

use super::{Caller, Views};
use crate::domain::request::{in_patient_compartment, ExportLevel, ExportRequest};
use crate::domain::view_export::{
    is_valid_view_name, reference_id, NamedView, TableFormat, ViewExport, ViewExportInput, ViewRef,
    MAX_VIEWS,
};
use crate::domain::Error;
use fhir_query::view::View;

impl Views {
    /// Validates the request and starts the export; returns the job's id.
    pub async fn kickoff_view_export(
        &self,
        caller: &Caller,
        input: ViewExportInput,
    ) -> Result<String, Error> {
        let request = self.view_export_request(caller, input).await?;
        self.desk.check_active_limit(caller).await?;
        let id = self.desk.record_job(caller, request).await?;
        tracing::info!(job = %id, owner = %caller.subject, "view export accepted");
        Ok(id)
    }

    /// The export request of a `$viewdefinition-export`, checked and
    /// authorized for the caller (a schedule's run makes it at run time).
    pub(crate) async fn view_export_request(
        &self,
        caller: &Caller,
        input: ViewExportInput,
    ) -> Result<ExportRequest, Error> {
        if input.views.is_empty() {
            return Err(Error::invalid(
                "view: give at least one view (viewResource or viewReference)",
            ));
        }
        if input.views.len() > MAX_VIEWS {
            return Err(Error::invalid(format!(
                "view: at most {MAX_VIEWS} views in one export"
            )));
        }
        let format_text = input.format.as_deref().unwrap_or("csv");
        let format = TableFormat::parse(format_text).ok_or_else(|| {
            Error::invalid(format!(
                "_format: '{format_text}' is not csv, ndjson or parquet"
            ))
        })?;
        if input.header.is_some() && format != TableFormat::Csv {
            return Err(Error::invalid("header: only a CSV export has a header"));
        }
        let views = self.named_views(caller, input.views).await?;
        let since = input.since;
        let patients = input
            .patients
            .iter()
            .map(|p| reference_id("patient", "Patient", p))
            .collect::<Result<Vec<_>, _>>()?;
        let level = match &input.group {
            Some(g) => ExportLevel::Group {
                group_id: reference_id("group", "Group", g)?,
            },
            None if !patients.is_empty() => ExportLevel::Patient,
            None => ExportLevel::System,
        };
        let mut types: Vec<String> = views.iter().map(|v| v.resource_type.clone()).collect();
        types.sort();
        types.dedup();
        if level.is_patient_based() {
            if let Some(t) = types.iter().find(|t| !in_patient_compartment(t)) {
                return Err(Error::invalid(format!(
                    "view: {t} is not in the Patient compartment, so a patient or group export cannot hold its rows"
                )));
            }
        }
        let mut request = ExportRequest {
            types,
            since,
            patients,
            views: Some(ViewExport {
                views,
                format,
                header: input.header.unwrap_or(true),
                client_tracking_id: input.client_tracking_id,
            }),
            ..ExportRequest::new(level, input.request_url)
        };
        super::export::authorize_export(&caller.access, &mut request)?;
        self.desk.check_patients(&mut request).await?;
        if let ExportLevel::Group { group_id } = &request.level {
            // 404 now rather than an empty export later.
            self.desk.group_members(group_id).await?;
        }
        Ok(request)
    }

    /// Each `view` parameter's definition (a stored one read now), checked,
    /// under a name that can name files and is given once.
    async fn named_views(
        &self,
        caller: &Caller,
        given: Vec<(Option<String>, ViewRef)>,
    ) -> Result<Vec<NamedView>, Error> {
        let mut views: Vec<NamedView> = Vec::new();
        for (i, (name, source)) in given.into_iter().enumerate() {
            let definition = match source {
                ViewRef::Inline(v) => v,
                ViewRef::Reference(r) => self.stored_view(caller, &r).await?,
            };
            let view = View::parse(&definition).map_err(|e| {
                Error::invalid(format!("view[{i}]: not a valid ViewDefinition: {e}"))
            })?;
            let name = name.or(view.name.clone()).ok_or_else(|| {
                Error::invalid(format!(
                    "view[{i}]: the view has no name; give the view's name part"
                ))
            })?;
            if !is_valid_view_name(&name) {
                return Err(Error::invalid(format!(
                    "view[{i}]: '{name}' cannot name files: use 1 to 64 letters, digits, '_' or '-'"
                )));
            }
            if views.iter().any(|v| v.name == name) {
                return Err(Error::invalid(format!(
                    "view[{i}]: two views are named '{name}'"
                )));
            }
            views.push(NamedView {
                name,
                resource_type: view.resource_type.clone(),
                definition,
            });
        }
        Ok(views)
    }
}
