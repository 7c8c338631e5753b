//! Administration and client helpers behind the binary's subcommands:
//! registering a client, and (for trying the service) making a client key
//! and signing a client assertion.

use bulk_export::private_file::write_private;
use std::path::Path;

use bulk_export::cli::RegisterClient;
use bulk_export::embedded::SqliteJobs;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::{json, Value};

/// Registers (or replaces) a client in the data directory's job database.
pub async fn register_client(data_dir: &Path, args: &RegisterClient) -> Result<(), String> {
    args.registration()?;
    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
    let jobs = SqliteJobs::open(&data_dir.join("jobs.db")).map_err(|e| e.to_string())?;
    args.run(&jobs).await
}

/// Writes a new ES384 client key: `private-key.pem` (owner-only) and the
/// public `jwks.json` to register.
pub fn make_client_key(out_dir: &Path, kid: &str) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| e.to_string())?;
    let secret = p384::SecretKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let key_path = out_dir.join("private-key.pem");
    write_private(&key_path, pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut jwk: Value =
        serde_json::from_str(&secret.public_key().to_jwk_string()).map_err(|e| e.to_string())?;
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("ES384");
    let jwks = json!({ "keys": [jwk] });
    std::fs::write(
        out_dir.join("jwks.json"),
        serde_json::to_string_pretty(&jwks).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())
}

/// A client assertion (`private_key_jwt`) for the token endpoint, valid 4 minutes.
pub fn client_assertion(
    key_file: &Path,
    kid: &str,
    client_id: &str,
    token_url: &str,
) -> Result<String, String> {
    let pem =
        std::fs::read_to_string(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    p384::SecretKey::from_pkcs8_pem(&pem).map_err(|e| format!("not a P-384 PKCS#8 key: {e}"))?;
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": token_url,
        "exp": now + 240, "jti": format!("{client_id}-{}", chrono::Utc::now().timestamp_nanos_opt().unwrap_or(now)),
    });
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}
