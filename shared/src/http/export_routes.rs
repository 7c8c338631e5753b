//! Bulk Data routes: kick-off, status, cancel, file links.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};

use super::{empty_response, header_text, json_response, require_json_body, Api, FHIR_JSON};
use crate::domain::instant::http_date;
use crate::domain::job::status_url;
use crate::domain::outcome::operation_outcome;
use crate::domain::params::{read_params, Param, RawParam};
use crate::domain::request::{
    params_from_parameters_resource, parse_export_request, query_params, ExportLevel, KickoffInput,
};
use crate::domain::resource::check_id;
use crate::domain::Error;
use crate::engine::StatusReply;
use crate::http::ApiError;

/// What the `Prefer` header asks for.
pub(super) struct Prefer {
    pub(super) respond_async: bool,
    lenient: bool,
}

pub(super) fn parse_prefer(headers: &HeaderMap) -> Result<Prefer, ApiError> {
    let mut p = Prefer {
        respond_async: false,
        lenient: false,
    };
    for value in headers.get_all("prefer") {
        let value = value
            .to_str()
            .map_err(|_| ApiError::invalid("The Prefer header is not valid text"))?;
        for token in value
            .split(',')
            .map(|t| t.split(';').next().unwrap_or("").trim())
        {
            let token = token.to_ascii_lowercase();
            match token.replace(' ', "").as_str() {
                "respond-async" => p.respond_async = true,
                "handling=lenient" => p.lenient = true,
                _ => {}
            }
        }
    }
    Ok(p)
}

/// The kick-off's `Accept` must allow `application/fhir+json`, the only
/// type the IG defines for it: exactly, or through `*/*` or
/// `application/*`, and not with `q=0`. `application/json` alone does not.
fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let accept = header_text(headers, "accept")?.ok_or_else(|| {
        ApiError::invalid(format!("The kick-off request needs 'Accept: {FHIR_JSON}'"))
    })?;
    if accept.split(',').any(allows_fhir_json) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "Accept '{accept}' does not allow {FHIR_JSON}, the only type a kick-off answers with"
        )))
    }
}

fn allows_fhir_json(range: &str) -> bool {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let refused = parts.any(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        })
    });
    !refused && matches!(media.as_str(), FHIR_JSON | "*/*" | "application/*")
}

/// Query parameters, percent-decoded without turning `+` into a space
/// (`_outputFormat=application/fhir+ndjson` is often sent unencoded).
/// Whether `Accept-Encoding` allows gzip (named or `*`, without `q=0`).
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut fields = coding.split(';').map(str::trim);
            let name = fields.next().unwrap_or("").to_ascii_lowercase();
            let refused = fields.any(|f| {
                f.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused && matches!(name.as_str(), "gzip" | "x-gzip" | "*")
        })
}

/// The one value of query parameter `name`, if given (others are
/// ignored: they belong to the route).
pub(super) fn query_param(
    req: &Request<Bytes>,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    fn keep(value: &mut Option<String>, p: &RawParam) -> Result<(), Error> {
        *value = Some(p.as_text()?.to_string());
        Ok(())
    }
    let params = query_params(req.uri().query().unwrap_or(""))?;
    let mut value = None;
    read_params(&[Param::once(name, keep)], &params, &mut value, |_, _| {
        Ok(())
    })?;
    Ok(value)
}

impl Api {
    pub(super) async fn kickoff(
        &self,
        req: Request<Bytes>,
        segs: &[&str],
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let headers = req.headers();
        check_accept(headers)?;
        let prefer = parse_prefer(headers)?;
        if !prefer.respond_async {
            return Err(ApiError::invalid(
                "The kick-off request needs 'Prefer: respond-async'",
            ));
        }
        let level = match segs {
            ["$export"] => ExportLevel::System,
            ["Patient", "$export"] => ExportLevel::Patient,
            [_, id, _] => {
                check_id(id)?;
                ExportLevel::Group {
                    group_id: id.to_string(),
                }
            }
            _ => return Err(ApiError::not_found("Unknown export endpoint")),
        };
        let query = req.uri().query().unwrap_or("");
        let via_post = req.method() == http::Method::POST;
        let params = if via_post {
            if !query.is_empty() {
                return Err(ApiError::invalid(
                    "A POST kick-off takes its parameters in the Parameters body, not the query string",
                ));
            }
            require_json_body(headers)?;
            params_from_parameters_resource(req.body())?
        } else {
            query_params(query)?
        };
        let rel = req.uri().path().strip_prefix(&self.base_path).unwrap_or("");
        let request_url = match query {
            "" => format!("{}{rel}", self.services.config.base_url),
            q => format!("{}{rel}?{q}", self.services.config.base_url),
        };
        let input = KickoffInput {
            level,
            request_url,
            params,
            lenient: prefer.lenient,
            via_post,
            now: self.services.ports.clock.now(),
        };
        // `Cache-Control: no-cache` asks for a new export, not a reused one.
        let no_cache = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
        let request = parse_export_request(input)?;
        let job_id = self
            .services
            .exports
            .kickoff_or_reuse(&caller, request, !no_cache)
            .await?;
        let mut resp = empty_response(StatusCode::ACCEPTED);
        let location = status_url(&self.services.config.base_url, &job_id);
        resp.headers_mut().insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_str(&location).map_err(|_| ApiError::internal("bad status URL"))?,
        );
        Ok(resp)
    }

    pub(super) async fn status(
        &self,
        req: &Request<Bytes>,
        job_id: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let page = query_param(req, "page")?;
        status_response(
            self.services
                .exports
                .status(&caller, job_id, page.as_deref())
                .await?,
        )
    }

    pub(super) async fn cancel(
        &self,
        req: &Request<Bytes>,
        job_id: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        self.services.exports.cancel(&caller, job_id).await?;
        Ok(json_response(
            StatusCode::ACCEPTED,
            FHIR_JSON,
            &operation_outcome(
                "information",
                "informational",
                &format!("Export job {job_id} cancelled"),
            ),
        ))
    }

    pub(super) async fn file(
        &self,
        req: &Request<Bytes>,
        job_id: &str,
        name: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let gzip = accepts_gzip(req.headers());
        let url = self
            .services
            .exports
            .file_link(&caller, job_id, name, gzip)
            .await?;
        let mut resp = empty_response(StatusCode::SEE_OTHER);
        let h = resp.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&url).map_err(|_| ApiError::internal("bad file URL"))?,
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The link depends on Accept-Encoding (the gzip twin or the file).
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        Ok(resp)
    }
}

/// A status poll's answer over HTTP: 202 with `Retry-After` and
/// `X-Progress`, 200 with the manifest and `Expires`, or the failure.
pub(super) fn status_response(reply: StatusReply) -> Result<Response<Bytes>, ApiError> {
    match reply {
        StatusReply::InProgress {
            progress,
            percent,
            retry_after_secs,
            manifest,
        } => {
            // A partial manifest rides on the 202 (allowPartialManifests).
            let mut resp = match manifest {
                Some(m) => json_response(StatusCode::ACCEPTED, "application/json", &m),
                None => empty_response(StatusCode::ACCEPTED),
            };
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            h.insert("x-progress", HeaderValue::from_static(progress));
            if let Some(p) = percent {
                h.insert("x-progress-percent", HeaderValue::from(p as u16));
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        StatusReply::Complete { manifest, expires } => {
            let mut resp = json_response(StatusCode::OK, "application/json", &manifest);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&http_date(expires)) {
                h.insert(header::EXPIRES, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        StatusReply::Failed { message } => Err(ApiError::internal(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_parsing() {
        let accepts = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&h)
        };
        assert!(accepts("gzip"));
        assert!(accepts("br, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("identity"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn prefer_and_query_parsing() {
        use crate::domain::request::RawParam;
        let mut h = HeaderMap::new();
        h.insert(
            "prefer",
            HeaderValue::from_static("respond-async, handling=lenient"),
        );
        let p = parse_prefer(&h).unwrap();
        assert!(p.respond_async && p.lenient);
        let q = query_params("_outputFormat=application/fhir+ndjson&_type=Patient%2CObservation")
            .unwrap();
        assert_eq!(
            q[0],
            RawParam::text("_outputFormat", "application/fhir+ndjson")
        );
        assert_eq!(q[1], RawParam::text("_type", "Patient,Observation"));
        assert!(query_params("=x").is_err());
        for (accept, ok) in [
            ("application/fhir+json", true),
            ("application/json, application/fhir+json;q=0.9", true),
            ("*/*", true),
            ("application/*", true),
            ("application/json", false),
            ("application/fhir+json;q=0", false),
            ("text/html", false),
        ] {
            assert_eq!(accept.split(',').any(allows_fhir_json), ok, "{accept}");
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_static(accept));
            assert_eq!(check_accept(&h).is_ok(), ok, "{accept}");
        }
        assert!(check_accept(&HeaderMap::new()).is_err(), "no Accept");
        assert!(query_params("a=%ff").is_err());
    }
}
