//! `bulk-export-client`: see the library's documentation.
//!
//! Exit codes: 0 done; 1 failed (the message says which file and why);
//! 2 the command line is wrong; 3 done, but the server listed errors (a
//! partial result: see the `error` files); 4 `sync --check` found the
//! mirror different from the server; 130 interrupted (Ctrl-C).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bulk_export_client::auth::{ClientKey, Credentials, TokenSource};
use bulk_export_client::mirror::Differences;
use bulk_export_client::progress::{self, Progress, Quiet};
use bulk_export_client::sync::{Sync, Synced};
use bulk_export_client::views::ViewSource;
use bulk_export_client::{fetch, Export, ExportRequest, FetchOptions, Level, Session};
use clap::{Args as ClapArgs, Parser, Subcommand};
use serde_json::json;

const FAILED: u8 = 1;
const PARTIAL: u8 = 3;
const DIFFERENT: u8 = 4;
const INTERRUPTED: u8 = 130;

/// The consumer's side of FHIR Bulk Data.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs an export from kick-off to checked files in a folder. Run again
    /// in the same folder, it continues the same export.
    Export(Box<ExportArgs>),
    /// Downloads a completed export's files, each checked against the
    /// manifest (line count, SHA-256), into a folder. Needs no
    /// credentials: give a presigned-link manifest, or the status URL of
    /// a server that does not require tokens. Run again, it keeps the
    /// files already there and checked.
    Fetch {
        /// The manifest's URL.
        manifest_url: String,
        #[command(flatten)]
        out: Output,
    },
    /// Keeps a SQLite mirror following the server: first a release or a
    /// full export, then an incremental schedule's runs or `_since`
    /// exports, each applied (upserts, then deletions) in one transaction
    /// with the cursor.
    Sync(Box<SyncArgs>),
}

#[derive(ClapArgs, Debug)]
struct SyncArgs {
    /// The server's FHIR base URL.
    base: String,
    /// The mirror, a SQLite file (made on the first sync).
    #[arg(long, default_value = "bulk-export-mirror.db")]
    mirror: PathBuf,
    /// Start from this release (a name, or `latest`) instead of a full export.
    #[arg(long)]
    release: Option<String>,
    /// Follow this incremental schedule's runs instead of kicking off
    /// `_since` exports.
    #[arg(long)]
    schedule: Option<String>,
    /// `_type` of the exports the client kicks off (repeat, or comma-separate).
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// A view whose rows the mirror keeps as a table `view_<name>`,
    /// refreshed at each sync: a ViewDefinition file, or the id of one the
    /// server holds (repeat for more).
    #[arg(long = "view")]
    views: Vec<String>,
    /// Compare the mirror with a fresh full export as of its cursor
    /// instead of syncing; any difference exits with 4.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    auth: Auth,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Print a JSON summary instead of lines for people.
    #[arg(long)]
    json: bool,
    /// Give up waiting for the server after this many seconds.
    #[arg(long, default_value_t = 86_400)]
    timeout: u64,
}

/// Where files go and how the tool reports.
#[derive(ClapArgs, Debug)]
struct Output {
    /// The folder to download into.
    #[arg(long, default_value = "bulk-export-files")]
    out: PathBuf,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Print a JSON summary (and no progress) instead of lines for people.
    #[arg(long)]
    json: bool,
}

/// SMART Backend Services credentials (none for an open server).
#[derive(ClapArgs, Debug)]
struct Auth {
    /// SMART Backend Services: the client id (with --key).
    #[arg(long, requires = "key")]
    client_id: Option<String>,
    /// SMART Backend Services: the private key, PEM or JWK (ES384 or RS384).
    #[arg(long, requires = "client_id")]
    key: Option<PathBuf>,
    /// The key id (`kid`) to put in assertions (a JWK's own by default).
    #[arg(long)]
    kid: Option<String>,
    /// The scopes to ask for.
    #[arg(long, default_value = "system/*.read")]
    scope: String,
    /// The token endpoint (found through .well-known/smart-configuration
    /// otherwise).
    #[arg(long)]
    token_url: Option<String>,
}

impl Auth {
    /// A session for the server at `base`, with tokens if credentials are given.
    async fn session(&self, base: &str) -> Result<Session, String> {
        let http = Session::http_client();
        let (Some(client_id), Some(key)) = (&self.client_id, &self.key) else {
            return Ok(Session::open(http));
        };
        let mut key = ClientKey::from_file(key)?;
        if self.kid.is_some() {
            key.kid = self.kid.clone();
        }
        let credentials = Credentials {
            client_id: client_id.clone(),
            key,
            scope: self.scope.clone(),
            token_url: self.token_url.clone(),
        };
        let tokens = TokenSource::discover(&http, base, credentials)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Session {
            http,
            tokens: Some(Arc::new(tokens)),
        })
    }
}

#[derive(ClapArgs, Debug)]
struct ExportArgs {
    /// The server's FHIR base URL, e.g. http://127.0.0.1:8080/fhir.
    base: String,
    /// Patient-level export (`Patient/$export`).
    #[arg(long, conflicts_with = "group")]
    patient_level: bool,
    /// Group-level export of this Group (`Group/ID/$export`).
    #[arg(long)]
    group: Option<String>,
    /// `_type`: resource types (repeat, or comma-separate).
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// `_since`: an instant; only resources changed since (and deletions).
    #[arg(long)]
    since: Option<String>,
    /// `_until`: an instant.
    #[arg(long)]
    until: Option<String>,
    /// `_typeFilter`: `Type?search-params` (repeat for more).
    #[arg(long = "type-filter")]
    type_filters: Vec<String>,
    /// `_elements` (repeat, or comma-separate).
    #[arg(long, value_delimiter = ',')]
    elements: Vec<String>,
    /// `patient`: `Patient/ID` (repeat); the kick-off becomes a POST.
    #[arg(long = "patient")]
    patients: Vec<String>,
    /// `includeAssociatedData` (repeat, or comma-separate).
    #[arg(long, value_delimiter = ',')]
    include_associated_data: Vec<String>,
    /// `organizeOutputBy`, e.g. Patient.
    #[arg(long)]
    organize_output_by: Option<String>,
    /// `allowPartialManifests`: download files while the export still runs.
    #[arg(long)]
    partial_manifests: bool,
    #[command(flatten)]
    auth: Auth,
    /// On Ctrl-C, leave the export running on the server (to continue it
    /// later) instead of cancelling it.
    #[arg(long)]
    keep: bool,
    /// Give up waiting for the server after this many seconds.
    #[arg(long, default_value_t = 86_400)]
    timeout: u64,
    #[command(flatten)]
    out: Output,
}

impl ExportArgs {
    fn request(&self) -> ExportRequest {
        let level = match (&self.group, self.patient_level) {
            (Some(id), _) => Level::Group(id.clone()),
            (None, true) => Level::Patient,
            (None, false) => Level::System,
        };
        ExportRequest {
            level: Some(level),
            types: self.types.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            type_filters: self.type_filters.clone(),
            elements: self.elements.clone(),
            patients: self.patients.clone(),
            include_associated_data: self.include_associated_data.clone(),
            organize_output_by: self.organize_output_by.clone(),
            allow_partial_manifests: self.partial_manifests,
        }
    }
}

fn reporter(out: &Output) -> Arc<dyn Progress> {
    if out.json {
        Arc::new(Quiet)
    } else {
        Arc::from(progress::for_stderr())
    }
}

fn options(out: &Output) -> FetchOptions {
    FetchOptions {
        parallel: out.parallel,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let code = match Args::parse().command {
        Command::Export(args) => run_export(*args).await,
        Command::Fetch { manifest_url, out } => run_fetch(&manifest_url, &out).await,
        Command::Sync(args) => run_sync(*args).await,
    };
    ExitCode::from(code)
}

async fn run_fetch(manifest_url: &str, out: &Output) -> u8 {
    let session = Session::open(Session::http_client());
    match fetch(
        &session,
        manifest_url,
        &out.out,
        &options(out),
        reporter(out),
    )
    .await
    {
        Ok(done) if out.json => {
            let summary = json!({
                "folder": out.out, "downloaded": done.downloaded,
                "kept": done.kept, "bytes": done.bytes,
            });
            println!("{summary}");
            0
        }
        Ok(done) => {
            println!(
                "{} files downloaded ({} bytes), {} already there; all checked, in {}",
                done.downloaded.len(),
                done.bytes,
                done.kept.len(),
                out.out.display()
            );
            0
        }
        Err(e) => fail(&e),
    }
}

async fn run_export(args: ExportArgs) -> u8 {
    let session = match args.auth.session(&args.base).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let export = Export {
        session,
        base: args.base.trim_end_matches('/').to_string(),
        request: args.request(),
        dir: args.out.out.clone(),
        options: options(&args.out),
        timeout: Duration::from_secs(args.timeout),
        progress: reporter(&args.out),
    };
    let (status_url, resumed) = tokio::select! {
        started = export.start() => match started {
            Ok(started) => started,
            Err(e) => return fail(&e),
        },
        _ = tokio::signal::ctrl_c() => return INTERRUPTED,
    };
    if resumed {
        export
            .progress
            .note(&format!("continuing the export {status_url}"));
    }
    let done = tokio::select! {
        done = export.complete(&status_url, resumed) => done,
        _ = tokio::signal::ctrl_c() => return interrupted(&export, &status_url, args.keep).await,
    };
    match done {
        Ok(done) => {
            let code = if done.error_files > 0 { PARTIAL } else { 0 };
            if args.out.json {
                let summary = json!({
                    "folder": args.out.out, "statusUrl": done.status_url, "resumed": done.resumed,
                    "downloaded": done.fetched.downloaded, "kept": done.fetched.kept,
                    "bytes": done.fetched.bytes, "errorFiles": done.error_files,
                    "transactionTime": done.manifest.json.get("transactionTime"),
                    "tokensFetched": export.session.tokens_fetched(),
                });
                println!("{summary}");
            } else {
                println!(
                    "{} files downloaded ({} bytes), {} already there; all checked, in {}{}",
                    done.fetched.downloaded.len(),
                    done.fetched.bytes,
                    done.fetched.kept.len(),
                    args.out.out.display(),
                    if code == PARTIAL {
                        "; the server listed errors: see the error files"
                    } else {
                        ""
                    }
                );
            }
            code
        }
        Err(e) => fail(&e),
    }
}

/// Ctrl-C while the export runs: cancel it on the server, unless kept.
async fn interrupted(export: &Export, status_url: &str, keep: bool) -> u8 {
    bulk_export_client::export::remove_partial_files(&export.dir).await;
    if keep {
        eprintln!(
            "interrupted; the export is left running on the server ({status_url}): \
             run the same command again to continue it"
        );
        return INTERRUPTED;
    }
    match export.cancel(status_url).await {
        Ok(()) => eprintln!("interrupted; the export was cancelled on the server ({status_url})"),
        Err(e) => eprintln!("interrupted; cancelling the export on the server failed: {e}"),
    }
    INTERRUPTED
}

async fn run_sync(args: SyncArgs) -> u8 {
    let base = args.base.trim_end_matches('/').to_string();
    let session = match args.auth.session(&base).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let progress: Arc<dyn Progress> = if args.json {
        Arc::new(Quiet)
    } else {
        Arc::from(progress::for_stderr())
    };
    let views: Result<Vec<ViewSource>, String> =
        args.views.iter().map(|v| ViewSource::from_arg(v)).collect();
    let views = match views {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let sync = Sync {
        session,
        base,
        mirror: args.mirror.clone(),
        release: args.release.clone(),
        schedule: args.schedule.clone(),
        types: args.types.clone(),
        views,
        options: FetchOptions {
            parallel: args.parallel,
            ..Default::default()
        },
        timeout: Duration::from_secs(args.timeout),
        progress,
    };
    let work = async {
        if args.check {
            return sync.check().await.map(|d| report_check(&d, args.json));
        }
        sync.run().await.map(|done| report_sync(&done, args.json))
    };
    tokio::select! {
        done = work => done.unwrap_or_else(|e| fail(&e)),
        // The mirror only changes in whole steps; a kicked-off export is
        // left to the next run, which continues it.
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; the mirror is as of its last whole step");
            INTERRUPTED
        }
    }
}

/// Prints what `sync --check` found; the exit code says whether it differs.
fn report_check(d: &Differences, json: bool) -> u8 {
    if json {
        println!("{}", json!({"same": d.is_empty(), "differences": d}));
    } else if d.is_empty() {
        println!("the mirror equals the server as of its cursor");
    } else {
        println!(
            "the mirror differs: {} missing, {} extra, {} changed (first: {:?})",
            d.missing.len(),
            d.extra.len(),
            d.changed.len(),
            d.missing.iter().chain(&d.extra).chain(&d.changed).next()
        );
    }
    if d.is_empty() {
        0
    } else {
        DIFFERENT
    }
}

/// Prints the steps a sync applied and where the mirror now stands.
fn report_sync(done: &Synced, json: bool) -> u8 {
    if json {
        let steps: Vec<_> = done
            .steps
            .iter()
            .map(|(name, a)| {
                json!({"step": name, "upserted": a.upserted,
                "deleted": a.deleted, "skipped": a.skipped, "cursor": a.cursor})
            })
            .collect();
        let views: Vec<_> = done
            .views
            .iter()
            .map(|(table, rows)| json!({"table": table, "rows": rows}))
            .collect();
        println!(
            "{}",
            json!({"steps": steps, "cursor": done.cursor, "resources": done.resources,
                   "views": views})
        );
    } else {
        println!(
            "{} applied; the mirror holds {} resources as of {}",
            match done.steps.len() {
                1 => "1 step".to_string(),
                n => format!("{n} steps"),
            },
            done.resources,
            done.cursor.as_deref().unwrap_or("nothing yet")
        );
    }
    0
}

fn fail(e: &dyn std::fmt::Display) -> u8 {
    eprintln!("bulk-export-client: {e}");
    FAILED
}
