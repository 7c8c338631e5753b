//! What the client tells a person while it works: bars on a terminal,
//! plain log lines otherwise, nothing with `--json` or in tests.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Events of an export or a fetch, as they happen. Every method may be
/// called from several downloads at once.
pub trait Progress: Send + Sync {
    /// The server is still working (`X-Progress`, `X-Progress-Percent`).
    fn waiting(&self, _said: Option<&str>, _percent: Option<u8>) {}
    /// A file joined the downloads, holding `lines` resources if known.
    fn file_added(&self, _name: &str, _lines: Option<u64>) {}
    /// Bytes and lines of a file arrived.
    fn streamed(&self, _bytes: u64, _lines: u64) {}
    /// A file is in place and checked (`kept`: it already was).
    fn file_done(&self, _name: &str, _kept: bool) {}
    /// Something worth a line of its own.
    fn note(&self, _text: &str) {}
}

/// Says nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// The reporter for standard error: bars if it is a terminal, lines if not.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines::default())
    }
}

/// Plain log lines, at most one every few seconds for streaming.
#[derive(Default)]
pub struct Lines {
    totals: Totals,
    last: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Totals {
    files: AtomicU64,
    files_done: AtomicU64,
    lines: AtomicU64,
    lines_done: AtomicU64,
    bytes_done: AtomicU64,
}

impl Lines {
    fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now - t < Duration::from_secs(5)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl Progress for Lines {
    fn waiting(&self, said: Option<&str>, percent: Option<u8>) {
        if self.due() {
            let percent = percent.map(|p| format!(" ({p}%)")).unwrap_or_default();
            eprintln!("waiting: {}{percent}", said.unwrap_or("in progress"));
        }
    }
    fn file_added(&self, _name: &str, lines: Option<u64>) {
        self.totals.files.fetch_add(1, Ordering::Relaxed);
        self.totals
            .lines
            .fetch_add(lines.unwrap_or(0), Ordering::Relaxed);
    }
    fn streamed(&self, bytes: u64, lines: u64) {
        let t = &self.totals;
        t.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        let done = t.lines_done.fetch_add(lines, Ordering::Relaxed) + lines;
        if self.due() {
            eprintln!(
                "downloading: {done} of {} resources, {} of {} files, {} MB",
                t.lines.load(Ordering::Relaxed),
                t.files_done.load(Ordering::Relaxed),
                t.files.load(Ordering::Relaxed),
                t.bytes_done.load(Ordering::Relaxed) >> 20
            );
        }
    }
    fn file_done(&self, name: &str, kept: bool) {
        self.totals.files_done.fetch_add(1, Ordering::Relaxed);
        if kept {
            eprintln!("{name}: already here and checked");
        }
    }
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// A spinner while the server works, then a bar of resources downloaded,
/// with files, bytes, the rate and the time left.
pub struct Bars {
    bar: ProgressBar,
    totals: Totals,
    downloading: std::sync::atomic::AtomicBool,
}

impl Bars {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Bars {
            bar,
            totals: Totals::default(),
            downloading: Default::default(),
        }
    }

    fn message(&self) {
        let t = &self.totals;
        self.bar.set_message(format!(
            "{}/{} files, {} MB",
            t.files_done.load(Ordering::Relaxed),
            t.files.load(Ordering::Relaxed),
            t.bytes_done.load(Ordering::Relaxed) >> 20
        ));
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.bar.finish();
    }
}

impl Progress for Bars {
    fn waiting(&self, said: Option<&str>, percent: Option<u8>) {
        if self.downloading.load(Ordering::Relaxed) {
            return;
        }
        let percent = percent.map(|p| format!(" {p}%")).unwrap_or_default();
        self.bar.set_message(format!(
            "export running{percent}: {}",
            said.unwrap_or("in progress")
        ));
    }
    fn file_added(&self, _name: &str, lines: Option<u64>) {
        if !self.downloading.swap(true, Ordering::Relaxed) {
            self.bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {human_pos}/{human_len} resources, {per_sec}, ETA {eta} · {msg}",
                )
                .expect("a valid template"),
            );
            self.bar.set_length(0);
        }
        self.totals.files.fetch_add(1, Ordering::Relaxed);
        self.bar.inc_length(lines.unwrap_or(0));
        self.message();
    }
    fn streamed(&self, bytes: u64, lines: u64) {
        self.totals.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.bar.inc(lines);
    }
    fn file_done(&self, _name: &str, _kept: bool) {
        self.totals.files_done.fetch_add(1, Ordering::Relaxed);
        self.message();
    }
    fn note(&self, text: &str) {
        self.bar.println(text);
    }
}
