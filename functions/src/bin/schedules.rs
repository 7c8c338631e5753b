//! The `kickoff` function: its HTTP API routes (see template.yaml) through the
//! shared routing table.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bulk_export_functions::http::run().await
}
