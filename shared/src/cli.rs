//! Command-line pieces both admin binaries share (`bulk-export-local` and
//! `bulk-export-aws`), so each is written once.

use std::path::PathBuf;

use crate::domain::client::ClientRegistration;
use crate::ports::ClientStore;

/// Registers (or replaces) a SMART Backend Services client.
#[derive(clap::Args, Debug, Clone)]
pub struct RegisterClient {
    #[arg(long)]
    pub client_id: String,
    /// The client's public keys (a JWKS JSON file).
    #[arg(long)]
    pub jwks_file: Option<PathBuf>,
    /// Where the client publishes its keys (an assertion's jku must equal it).
    #[arg(long)]
    pub jwks_url: Option<String>,
    /// Scopes the client may be granted.
    #[arg(long, default_value = "system/*.read")]
    pub scope: String,
    /// Limit the client to these Groups (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Who the client is, for people (the audit export's "User").
    #[arg(long)]
    pub name: Option<String>,
    /// A contact e-mail (the audit export's "User Email ID").
    #[arg(long)]
    pub email: Option<String>,
    /// Lets the client export the audit trail (`$export-revisions`).
    #[arg(long)]
    pub audit: bool,
    /// Announce the client's finished exports to this URL (a signed POST).
    #[arg(long, requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The shared secret the webhook's signature is made with.
    #[arg(long, requires = "webhook_url")]
    pub webhook_secret: Option<String>,
}

impl RegisterClient {
    /// The registration these arguments describe, checked.
    pub fn registration(&self) -> Result<ClientRegistration, String> {
        let jwks = match &self.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
            }
            None => None,
        };
        let client = ClientRegistration {
            client_id: self.client_id.clone(),
            jwks,
            jwks_url: self.jwks_url.clone(),
            scope: self.scope.clone(),
            groups: (!self.groups.is_empty()).then(|| self.groups.clone()),
            name: self.name.clone(),
            email: self.email.clone(),
            audit: self.audit,
            webhook: match (&self.webhook_url, &self.webhook_secret) {
                (Some(url), Some(secret)) => Some(crate::domain::schedule::Webhook {
                    url: url.clone(),
                    secret: secret.clone(),
                }),
                _ => None,
            },
        };
        client.check().map_err(|e| e.to_string())?;
        Ok(client)
    }

    /// Stores the registration.
    pub async fn run(&self, store: &dyn ClientStore) -> Result<(), String> {
        let client = self.registration()?;
        store.put_client(&client).await.map_err(|e| e.to_string())?;
        println!("registered client {}", client.client_id);
        Ok(())
    }
}
