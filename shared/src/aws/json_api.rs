//! SSM and EventBridge through one small signed client instead of their SDK
//! crates. The service makes one kind of call to each (`GetParameter` for
//! the token signing key at cold start, `PutEvents` per ended job), and two
//! more SDK crates would be compiled in every cold build for them.
//!
//! Both services speak AWS's JSON 1.1 protocol: `POST /`, the operation in
//! `X-Amz-Target`, JSON in and out, errors as `{"__type", "message"}`.
//! Requests are signed by `aws-sigv4`, the SDK's own signer, with the
//! process's credentials, region and endpoint (`AWS_ENDPOINT_URL`).

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use serde_json::Value;

use super::{classified, refusal, unavailable, DisplayErrorContext, SdkConfig};
use crate::domain::usage::record;
use crate::ports::{PortError, PortResult};

/// An AWS service spoken to in JSON 1.1.
#[derive(Debug)]
pub struct JsonService {
    /// The SigV4 signing name, also the endpoint's host prefix.
    pub signing_name: &'static str,
    /// `X-Amz-Target` is `{target}.{Operation}`.
    pub target: &'static str,
    /// The service's name in the usage counters (the SDK's name for it).
    pub metered_as: &'static str,
}

pub const SSM: JsonService = JsonService {
    signing_name: "ssm",
    target: "AmazonSSM",
    metered_as: "ssm",
};

pub const EVENTBRIDGE: JsonService = JsonService {
    signing_name: "events",
    target: "AWSEvents",
    metered_as: "eventbridge",
};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// Attempts per call, as the SDK's standard retry mode makes.
const ATTEMPTS: u32 = 3;

/// A signed JSON 1.1 client of one service.
#[derive(Clone)]
pub struct JsonClient {
    service: &'static JsonService,
    http: reqwest::Client,
    credentials: Option<SharedCredentialsProvider>,
    region: String,
    url: String,
}

impl JsonClient {
    pub fn new(sdk: &SdkConfig, service: &'static JsonService) -> Self {
        let region = sdk.region().map_or("us-east-1", |r| r.as_ref()).to_string();
        let url = match sdk.endpoint_url() {
            Some(endpoint) => format!("{}/", endpoint.trim_end_matches('/')),
            None => format!("https://{}.{region}.amazonaws.com/", service.signing_name),
        };
        // The SDK clients' timeouts (see `timeouts`): a stuck attempt fails
        // and is retried.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        JsonClient {
            service,
            http,
            credentials: sdk.credentials_provider(),
            region,
            url,
        }
    }

    /// Calls `operation` with `input`; its output, or the service's refusal
    /// classified as the SDK adapters classify theirs. Throttling, server
    /// errors and lost connections are retried, with backoff.
    pub async fn call(&self, operation: &str, input: &Value) -> PortResult<Value> {
        let body = Bytes::from(serde_json::to_vec(input).expect("JSON values serialize"));
        let target = format!("{}.{operation}", self.service.target);
        let mut attempt = 0;
        loop {
            attempt += 1;
            record(|u| u.add_request(self.service.metered_as, operation));
            match self.attempt(&target, &body).await {
                Err(PortError::Transient { .. }) if attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn attempt(&self, target: &str, body: &Bytes) -> PortResult<Value> {
        let credentials = self.credentials().await?;
        let headers = signed_headers(
            &SignedCall {
                service: self.service,
                region: &self.region,
                url: &self.url,
                target,
                body,
            },
            &credentials,
            SystemTime::now(),
        )?;
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", target)
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let lost = |e: reqwest::Error| unavailable(format!("{target}: {e}"));
        let response = request.send().await.map_err(lost)?;
        let status = response.status().as_u16();
        let header_code = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await.map_err(lost)?;
        let output: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                unavailable(format!(
                    "{target}: an answer that is not JSON ({status}): {e}"
                ))
            })?
        };
        if (200..300).contains(&status) {
            return Ok(output);
        }
        let code = error_code(&output, header_code.as_deref());
        let message = ["message", "Message"]
            .iter()
            .find_map(|k| output.get(k).and_then(Value::as_str))
            .unwrap_or_default();
        let cause = format!("{target}: {status} {code}: {message}");
        Err(classified(refusal(status, code), cause))
    }

    async fn credentials(&self) -> PortResult<Credentials> {
        let provider = self.credentials.as_ref().ok_or_else(|| {
            PortError::permanent(
                "the service was denied access to its storage",
                "no AWS credentials are configured",
            )
        })?;
        provider.provide_credentials().await.map_err(|e| {
            unavailable(format!(
                "loading AWS credentials: {}",
                DisplayErrorContext(e)
            ))
        })
    }
}

/// What a call's signature covers.
struct SignedCall<'a> {
    service: &'a JsonService,
    region: &'a str,
    url: &'a str,
    target: &'a str,
    body: &'a [u8],
}

/// The SigV4 headers (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` for temporary credentials) that sign `call`: its
/// host, content type, target and body.
fn signed_headers(
    call: &SignedCall<'_>,
    credentials: &Credentials,
    time: SystemTime,
) -> PortResult<Vec<(&'static str, String)>> {
    let invalid = |e: &dyn std::fmt::Display| {
        PortError::permanent(
            "the service built an invalid storage request",
            format!("signing {}: {e}", call.target),
        )
    };
    // The signer panics on a URL without a host: refuse it here.
    let url = url::Url::parse(call.url).map_err(|e| invalid(&e))?;
    if url.host_str().is_none() {
        return Err(invalid(&"the endpoint has no host"));
    }
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(call.region)
        .name(call.service.signing_name)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| invalid(&e))?
        .into();
    let headers = [
        ("content-type", CONTENT_TYPE),
        ("x-amz-target", call.target),
    ];
    let request = SignableRequest::new(
        "POST",
        call.url,
        headers.into_iter(),
        SignableBody::Bytes(call.body),
    )
    .map_err(|e| invalid(&e))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| invalid(&e))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

/// The error code of a refusal: `__type` without its namespace
/// (`com.amazon.coral.service#AccessDeniedException`), else the
/// `x-amzn-ErrorType` header without its URL part.
fn error_code<'a>(output: &'a Value, header: Option<&'a str>) -> &'a str {
    let raw = output
        .get("__type")
        .and_then(Value::as_str)
        .or(header)
        .unwrap_or_default();
    let code = raw.rsplit('#').next().unwrap_or(raw);
    code.split(':').next().unwrap_or(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_at(token: Option<&str>) -> Vec<(&'static str, String)> {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_string),
            None,
            "test",
        );
        let call = SignedCall {
            service: &SSM,
            region: "eu-west-1",
            url: "https://ssm.eu-west-1.amazonaws.com/",
            target: "AmazonSSM.GetParameter",
            body: br#"{"Name":"/bulk-export/signing-key","WithDecryption":true}"#,
        };
        // 2026-12-01T12:30:00Z
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_128_200);
        signed_headers(&call, &credentials, time).unwrap()
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The known answers are botocore's `SigV4Auth` (the AWS CLI's signer,
    /// botocore 1.44) for the same request, credentials and time:
    /// `scripts/sigv4_known_answers.py` prints them. A wrong signing name,
    /// region, signed header or body would change the signature.
    #[test]
    fn requests_are_signed_as_botocore_signs_them() {
        let headers = headers_at(None);
        assert_eq!(header(&headers, "x-amz-date"), Some("20261201T123000Z"));
        assert_eq!(
            header(&headers, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/eu-west-1/ssm/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
                 Signature=b2db1c0dfd81c19068d730d6866a04aa1964db408fcbd9cb468122edb2527aff"
            )
        );
        assert_eq!(header(&headers, "x-amz-security-token"), None);

        // Lambda's credentials are temporary: the session token is sent
        // and signed.
        let headers = headers_at(Some("session-token"));
        assert_eq!(
            header(&headers, "x-amz-security-token"),
            Some("session-token")
        );
        assert_eq!(
            header(&headers, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/eu-west-1/ssm/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
                 Signature=d89acf4105bfbd2c322e79972a131a570684eece2e9907ba8c780ccc83b50777"
            )
        );
    }

    #[test]
    fn an_endpoint_without_a_host_is_refused_not_signed() {
        let credentials = Credentials::new("a", "b", None, None, "test");
        let call = SignedCall {
            service: &EVENTBRIDGE,
            region: "us-east-1",
            url: "unix:/var/run/events",
            target: "AWSEvents.PutEvents",
            body: b"{}",
        };
        let e = signed_headers(&call, &credentials, SystemTime::now()).unwrap_err();
        assert!(matches!(e, PortError::Permanent { .. }), "{e:?}");
    }

    #[test]
    fn error_codes_are_read_without_their_namespace() {
        let body = serde_json::json!({"__type": "com.amazon.coral.service#AccessDeniedException"});
        assert_eq!(error_code(&body, None), "AccessDeniedException");
        assert_eq!(
            error_code(&serde_json::json!({"__type": "ParameterNotFound"}), None),
            "ParameterNotFound"
        );
        assert_eq!(
            error_code(
                &Value::Null,
                Some("ThrottlingException:http://internal.amazon.com/")
            ),
            "ThrottlingException"
        );
        assert_eq!(error_code(&Value::Null, None), "");
    }
}
