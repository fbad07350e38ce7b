//! The timing layer against real spans (sleeps stand in for work) and the table's layout.

use std::thread::sleep;

use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Runs `f` with a subscriber that feeds a new breakdown, and returns the breakdown.
fn timed(f: impl FnOnce()) -> Breakdown {
    let breakdown = Breakdown::new();
    let subscriber = tracing_subscriber::registry().with(breakdown.layer());
    tracing::subscriber::with_default(subscriber, f);
    breakdown
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn nested_phases_count_only_their_own_time() {
    // The layer pipeline: diff writes into a writer (copy, standing in for any phase), which
    // writes into the blob writer (store), all inside one `diff` call.
    let breakdown = timed(|| {
        let step = tracing::info_span!("step", stage = "s", n = 2u64, of = 3u64, text = "RUN x");
        let _step = step.enter();
        let store = tracing::info_span!("store");
        let copy = tracing::info_span!("copy");
        let mut pipeline = InSpan::new(
            InSpan::new(SlowWriter(ms(100), io::sink()), store.clone()),
            copy.clone(),
        );
        tracing::info_span!("diff").in_scope(|| {
            sleep(ms(20));
            for _ in 0..2 {
                pipeline.write_all(b"x").unwrap();
            }
        });
        copy.in_scope(|| sleep(ms(20)));
        store.in_scope(|| sleep(ms(20)));
    });
    let steps = breakdown.steps.lock().unwrap();
    let [step] = &steps[..] else {
        panic!("one step");
    };
    let [base, copy, diff, store, commit, mount] = step.phases;
    assert_eq!(
        (base, commit, mount),
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    );
    // Each write sleeps 100 ms in the store: none of that is the diff's or the copy's.
    assert!(diff >= ms(20) && diff < ms(100), "{diff:?}");
    assert!(copy >= ms(20) && copy < ms(100), "{copy:?}");
    assert!(store >= ms(220), "{store:?}");
    assert!(step.phases.iter().sum::<Duration>() <= step.total);
    assert_eq!((step.stage.as_str(), step.n, step.of), ("s", 2, 3));
}

#[test]
fn phases_count_for_the_step_they_are_in() {
    let breakdown = timed(|| {
        for n in 1..=2u64 {
            let step = tracing::info_span!(
                "step",
                stage = "s",
                n,
                of = 2u64,
                text = "RUN",
                cached = tracing::field::Empty
            );
            let _step = step.enter();
            if n == 2 {
                step.record("cached", true);
                continue;
            }
            tracing::info_span!("cache_lookup").in_scope(|| {
                tracing::info_span!("run").in_scope(|| sleep(ms(30)));
            });
        }
        // Outside any step: no row has it.
        tracing::info_span!("commit").in_scope(|| sleep(ms(10)));
    });
    let steps = breakdown.steps.lock().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps[0].phases[1] >= ms(30));
    assert!(!steps[0].cached);
    assert_eq!(steps[1].phases, [Duration::ZERO; COLUMNS.len()]);
    assert!(steps[1].cached);
    assert!(steps.iter().all(|s| s.phases[4].is_zero()));
}

#[test]
fn the_table_has_a_row_per_step_and_totals() {
    let breakdown = Breakdown::new();
    let now = Instant::now();
    {
        let mut steps = breakdown.steps.lock().unwrap();
        steps.push(StepTimes {
            stage: "build".into(),
            n: 2,
            of: 3,
            text: "RUN apt-get update &&    apt-get install -y python3 ca-certificates".into(),
            phases: [ms(0), ms(1500), ms(200), ms(400), ms(50), ms(20)],
            total: ms(2200),
            span: Some((now, now + ms(2200))),
            ..StepTimes::default()
        });
        steps.push(StepTimes {
            stage: "build".into(),
            n: 3,
            of: 3,
            text: "COPY app.py /app/".into(),
            cached: true,
            total: ms(2),
            span: Some((now + ms(2000), now + ms(2202))),
            ..StepTimes::default()
        });
    }
    let table = breakdown.table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "[build",
            "2/3]",
            "RUN",
            "apt-get",
            "update",
            "&&",
            "apt-get",
            "install...",
            "0.000",
            "1.500",
            "0.200",
            "0.400",
            "0.050",
            "0.020",
            "0.030",
            "2.200"
        ],
        "{table}"
    );
    assert!(
        lines[3].starts_with("[build 3/3] COPY app.py /app/ CACHED "),
        "{table}"
    );
    assert!(lines[4].starts_with("outside steps "), "{table}");
    let total: Vec<&str> = lines[5].split_whitespace().collect();
    assert_eq!(
        total[..8],
        [
            "total", "0.000", "1.500", "0.200", "0.400", "0.050", "0.020", "0.032"
        ],
        "{table}"
    );
}

#[test]
fn overlapping_steps_are_covered_once() {
    let t = Instant::now();
    let covered = covered(
        [
            (t, t + ms(10)),
            (t + ms(5), t + ms(20)),
            (t + ms(30), t + ms(40)),
        ]
        .into_iter(),
    );
    assert_eq!(covered, ms(30));
}

/// A writer that takes `.0` per write.
struct SlowWriter<W>(Duration, W);

impl<W: Write> Write for SlowWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sleep(self.0);
        self.1.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}
