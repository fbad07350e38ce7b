//! Where a build's time went: the `tracing` spans the engine opens (`step`, and in a step
//! `base`, `pull`, `apply`, `run`, `copy`, `diff`, `store`, `commit`, `mount`, `unmount`,
//! `cache_lookup`; and imgfs's `fold`, in the unmount of a step the fuse backend ran on
//! overlayfs, which counts as commit), summed per step by `Timing`, a `tracing_subscriber`
//! layer, and printed by `img build --progress=plain` as a table (`Breakdown::table`).
//!
//! Each phase counts its own time only: a span entered inside another on the same thread pauses
//! it. The layer's blob writer enters its own span for every write (`InSpan`), so the diff's
//! time excludes the blob's (`store`); the blob's final sync runs on a thread of its own beside
//! the commit, so STORE can overlap COMMIT. Entering a span per write costs a few
//! hundred nanoseconds with the layer installed, and nothing without it (the spans are disabled
//! then).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Span, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The table's phase columns and the spans each one sums. `base` is what a stage's FROM and a
/// `COPY --from` cost: waiting for a stage, pulling an image, applying its layers, mounting the
/// source of a `COPY --from`.
const COLUMNS: [(&str, &[&str]); 6] = [
    ("BASE", &["base", "pull", "apply"]),
    ("RUN/COPY", &["run", "copy"]),
    ("DIFF", &["diff"]),
    ("STORE", &["store"]),
    ("COMMIT", &["commit", "fold"]),
    ("MOUNT", &["mount", "unmount"]),
];

/// The most of an instruction a row shows.
const TEXT_WIDTH: usize = 40;

/// The times of one build, filled by the `Timing` layer (`Breakdown::layer`) while it runs.
#[derive(Clone)]
pub struct Breakdown {
    steps: Arc<Mutex<Vec<StepTimes>>>,
    started: Instant,
}

/// One row: a step and the time of each phase in it.
#[derive(Default)]
struct StepTimes {
    stage: String,
    n: u64,
    of: u64,
    text: String,
    cached: bool,
    phases: [Duration; COLUMNS.len()],
    /// From the step's start to its end.
    total: Duration,
    /// When the step started and ended, for the time outside any step.
    span: Option<(Instant, Instant)>,
}

impl Breakdown {
    /// A breakdown whose total time starts now.
    pub fn new() -> Breakdown {
        Breakdown {
            steps: Arc::default(),
            started: Instant::now(),
        }
    }

    /// The layer that fills this breakdown. It sees only the build engine's spans, and imgfs's
    /// `fold`.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        Timing {
            breakdown: self.clone(),
        }
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span()
                && (m.target().starts_with("builder::build")
                    || m.target().starts_with("imgfs::") && m.name() == "fold")
        }))
    }

    /// Whether any step started.
    pub fn is_empty(&self) -> bool {
        self.steps.lock().expect("poisoned").is_empty()
    }

    /// The table `img build --progress=plain` ends with, in seconds: a row per step, then the
    /// time outside every step (reading the context, storing the image, tagging, outputs) and
    /// the totals, whose TOTAL is the time since `new`. Stages that run at the same time each
    /// count their own steps' time, so the rows can add up to more than the total.
    pub fn table(&self) -> String {
        let steps = self.steps.lock().expect("poisoned");
        let wall = self.started.elapsed();
        let labels: Vec<String> = steps.iter().map(StepTimes::label).collect();
        let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let width = width.max("outside steps".len());
        let mut out = String::from("time by step (seconds):\n");
        let mut header = format!("{:width$}", "STEP");
        for (name, _) in COLUMNS {
            let _ = write!(header, " {name:>8}");
        }
        let _ = writeln!(out, "{header} {:>8} {:>8}", "OTHER", "TOTAL");
        let mut sums = [Duration::ZERO; COLUMNS.len()];
        let mut other_sum = Duration::ZERO;
        for (step, label) in steps.iter().zip(&labels) {
            let _ = write!(out, "{label:width$}");
            for (i, d) in step.phases.iter().enumerate() {
                sums[i] += *d;
                let _ = write!(out, " {:>8.3}", d.as_secs_f64());
            }
            let other = step.total.saturating_sub(step.phases.iter().sum());
            other_sum += other;
            let _ = writeln!(
                out,
                " {:>8.3} {:>8.3}",
                other.as_secs_f64(),
                step.total.as_secs_f64()
            );
        }
        let outside = wall.saturating_sub(covered(steps.iter().filter_map(|s| s.span)));
        let blank = format!("{:>8}", "");
        let _ = writeln!(
            out,
            "{:width$}{} {blank} {:>8.3}",
            "outside steps",
            format!(" {blank}").repeat(COLUMNS.len()),
            outside.as_secs_f64()
        );
        let _ = write!(out, "{:width$}", "total");
        for d in sums {
            let _ = write!(out, " {:>8.3}", d.as_secs_f64());
        }
        let _ = writeln!(
            out,
            " {:>8.3} {:>8.3}",
            other_sum.as_secs_f64(),
            wall.as_secs_f64()
        );
        out
    }
}

impl Default for Breakdown {
    fn default() -> Breakdown {
        Breakdown::new()
    }
}

impl StepTimes {
    /// `[stage 2/5] RUN make CACHED`, as the progress lines name steps, shortened.
    fn label(&self) -> String {
        let text = self.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = if text.chars().count() > TEXT_WIDTH {
            let cut: String = text.chars().take(TEXT_WIDTH - 3).collect();
            format!("{cut}...")
        } else {
            text
        };
        let cached = if self.cached { " CACHED" } else { "" };
        format!("[{} {}/{}] {text}{cached}", self.stage, self.n, self.of)
    }
}

/// How much time the intervals cover together.
fn covered(intervals: impl Iterator<Item = (Instant, Instant)>) -> Duration {
    let mut intervals: Vec<_> = intervals.collect();
    intervals.sort();
    let mut total = Duration::ZERO;
    let mut reach: Option<Instant> = None;
    for (start, end) in intervals {
        let start = reach.map_or(start, |r| start.max(r));
        if end > start {
            total += end - start;
            reach = Some(end);
        }
    }
    total
}

/// The layer behind `Breakdown::layer`.
struct Timing {
    breakdown: Breakdown,
}

/// What the layer keeps in each span's extensions.
#[derive(Default)]
struct SpanTimes {
    /// The row of a `step` span.
    row: Option<usize>,
    /// The column of a phase span.
    column: Option<usize>,
    /// Time entered, less the time of spans entered inside it.
    own: Duration,
    /// Time entered.
    entered: Duration,
    first_enter: Option<Instant>,
    last_exit: Option<Instant>,
}

/// A span entered on this thread and not yet exited.
struct Open {
    id: Id,
    entered: Instant,
    /// Since when its own time runs (its entry, or the exit of the last span inside it).
    resumed: Instant,
    own: Duration,
}

thread_local! {
    /// The spans this thread is in, innermost last: entering one pauses the one before it.
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
}

impl<S> Layer<S> for Timing
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let name = attrs.metadata().name();
        let mut times = SpanTimes {
            column: COLUMNS.iter().position(|(_, spans)| spans.contains(&name)),
            ..SpanTimes::default()
        };
        if name == "step" {
            let mut step = StepTimes::default();
            attrs.record(&mut StepFields(&mut step));
            let mut steps = self.breakdown.steps.lock().expect("poisoned");
            times.row = Some(steps.len());
            steps.push(step);
        }
        span.extensions_mut().insert(times);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(row) = span.extensions().get::<SpanTimes>().and_then(|t| t.row) else {
            return;
        };
        let mut steps = self.breakdown.steps.lock().expect("poisoned");
        values.record(&mut StepFields(&mut steps[row]));
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        let now = Instant::now();
        OPEN.with_borrow_mut(|open| {
            if let Some(outer) = open.last_mut() {
                outer.own += now - outer.resumed;
            }
            open.push(Open {
                id: id.clone(),
                entered: now,
                resumed: now,
                own: Duration::ZERO,
            });
        });
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let now = Instant::now();
        let Some(done) = OPEN.with_borrow_mut(|open| {
            let at = open.iter().rposition(|o| o.id == *id)?;
            let done = open.remove(at);
            if let Some(outer) = open.last_mut() {
                outer.resumed = now;
            }
            Some(done)
        }) else {
            return;
        };
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(times) = ext.get_mut::<SpanTimes>() else {
            return;
        };
        times.own += done.own + (now - done.resumed);
        times.entered += now - done.entered;
        times.first_enter.get_or_insert(done.entered);
        times.last_exit = Some(now);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let ext = span.extensions();
        let Some(times) = ext.get::<SpanTimes>() else {
            return;
        };
        let mut steps = self.breakdown.steps.lock().expect("poisoned");
        if let Some(row) = times.row {
            let step = &mut steps[row];
            step.total = times.entered;
            step.span = times.first_enter.zip(times.last_exit);
        } else if let Some(column) = times.column {
            let row = span
                .scope()
                .skip(1)
                .find_map(|s| s.extensions().get::<SpanTimes>().and_then(|t| t.row));
            if let Some(row) = row {
                steps[row].phases[column] += times.own;
            }
        }
    }
}

/// Reads a `step` span's fields: `stage`, `n`, `of`, `text`, `cached`.
struct StepFields<'a>(&'a mut StepTimes);

impl Visit for StepFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "n" => self.0.n = value,
            "of" => self.0.of = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "cached" {
            self.0.cached = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "stage" => self.0.stage = value.to_owned(),
            "text" => self.0.text = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// A writer whose writes (and flushes) count as time in `span`: how the layer pipeline's
/// stages, which call each other, get their own times.
pub(crate) struct InSpan<W> {
    inner: W,
    span: Span,
}

impl<W> InSpan<W> {
    pub(crate) fn new(inner: W, span: Span) -> InSpan<W> {
        InSpan { inner, span }
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for InSpan<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _entered = self.span.enter();
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let _entered = self.span.enter();
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
