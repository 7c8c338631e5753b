//! `bulk-export-client`: see the library's documentation.
//!
//! Exit codes: 0 done; 1 failed (the message says which file and why);
//! 2 the command line is wrong.

use std::path::PathBuf;
use std::process::ExitCode;

use bulk_export_client::{fetch, FetchOptions};
use clap::{Parser, Subcommand};

/// The consumer's side of FHIR Bulk Data.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Downloads a completed export's files, each checked against the
    /// manifest (line count, SHA-256), into a folder. Needs no
    /// credentials: give a presigned-link manifest, or the status URL of
    /// a server that does not require tokens. Run again, it keeps the
    /// files already there and checked.
    Fetch {
        /// The manifest's URL.
        manifest_url: String,
        /// The folder to download into.
        #[arg(long, default_value = "bulk-export-files")]
        out: PathBuf,
        /// Files downloaded at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Print a JSON summary instead of lines for people.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Fetch {
        manifest_url,
        out,
        parallel,
        json,
    } = Args::parse().command;
    let http = reqwest::Client::new();
    let options = FetchOptions {
        parallel,
        ..Default::default()
    };
    match fetch(&http, &manifest_url, &out, &options).await {
        Ok(done) if json => {
            let summary = serde_json::json!({
                "folder": out,
                "downloaded": done.downloaded,
                "kept": done.kept,
                "bytes": done.bytes,
            });
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(done) => {
            println!(
                "{} files downloaded ({} bytes), {} already there; all checked, in {}",
                done.downloaded.len(),
                done.bytes,
                done.kept.len(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bulk-export-client: {e}");
            ExitCode::FAILURE
        }
    }
}
