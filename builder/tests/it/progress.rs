//! `img build --progress` and `-q`: plain ends with where the time went per step, quiet prints
//! nothing, -q only the image ID, and values img does not have are refused by name.

use std::time::Instant;

use crate::{BACKENDS, Rig, can_run, context};

const DOCKERFILE: &str = "FROM busybox
RUN sleep 0.3 && echo ran > /ran
COPY a.txt /a.txt
ENV X=1
";

/// The times of one row of the table: the phase columns (BASE, RUN/COPY, DIFF, STORE, COMMIT,
/// MOUNT), OTHER and TOTAL.
struct Row {
    phases: Vec<f64>,
    other: f64,
    total: f64,
}

/// The table's rows by their label (the text before the times).
fn table(stderr: &str) -> Vec<(String, Row)> {
    let start = stderr
        .find("time by step (seconds):\n")
        .unwrap_or_else(|| panic!("no time table:\n{stderr}"));
    let mut lines = stderr[start..].lines().skip(1);
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "STEP", "BASE", "RUN/COPY", "DIFF", "STORE", "COMMIT", "MOUNT", "OTHER", "TOTAL"
        ]
    );
    let mut rows = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `outside steps` has only a total; a step's label may end with a number.
        let n = if line.starts_with("outside steps") {
            1
        } else {
            8
        };
        let (label, times) = words.split_at(words.len() - n);
        let times: Vec<f64> = times
            .iter()
            .map(|w| w.parse().unwrap_or_else(|_| panic!("{w:?} in {line:?}")))
            .collect();
        let label = label.join(" ");
        let row = match times[..] {
            [total] => Row {
                phases: vec![],
                other: 0.0,
                total,
            },
            _ => Row {
                phases: times[..6].to_vec(),
                other: times[6],
                total: times[7],
            },
        };
        let last = label == "total";
        rows.push((label, row));
        if last {
            return rows;
        }
    }
    panic!("no total row:\n{stderr}");
}

fn row<'r>(rows: &'r [(String, Row)], label: &str) -> &'r Row {
    &rows
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| {
            panic!(
                "no row {label:?} in {:?}",
                rows.iter().map(|r| &r.0).collect::<Vec<_>>()
            )
        })
        .1
}

#[test]
fn plain_progress_ends_with_the_time_of_each_step() {
    if !can_run() {
        return;
    }
    for backend in BACKENDS {
        let rig = Rig::create();
        let ctx = context(DOCKERFILE, &[("a.txt", "a\n")]);
        let args = [
            "build",
            "--progress=plain",
            "--backend",
            backend,
            "-t",
            "timed",
        ];
        let started = Instant::now();
        let stderr = rig.img_ok_stderr(&[&args[..], &[ctx.path().to_str().unwrap()]].concat());
        let wall = started.elapsed().as_secs_f64();
        // What img prints without --progress is still there, before the table.
        assert!(stderr.contains("[stage-0 2/4] RUN sleep 0.3"), "{stderr}");
        assert!(
            stderr.find("Successfully tagged timed").unwrap() < stderr.find("time by").unwrap(),
            "{stderr}"
        );

        let rows = table(&stderr);
        let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "[stage-0 1/4] FROM busybox",
                "[stage-0 2/4] RUN sleep 0.3 && echo ran > /ran",
                "[stage-0 3/4] COPY a.txt /a.txt",
                "[stage-0 4/4] ENV X=1",
                "outside steps",
                "total",
            ],
            "{backend}\n{stderr}"
        );
        let run = row(&rows, "[stage-0 2/4] RUN sleep 0.3 && echo ran > /ran");
        assert!(
            run.phases[1] >= 0.3,
            "{backend}: the RUN slept 0.3 s\n{stderr}"
        );
        // Rounded to milliseconds: a row's parts may exceed its total by one per column.
        // The blob's sync (STORE) runs on its own thread beside COMMIT, so it may overlap the
        // rest of the row; without it the parts add up to the total.
        let slack = 0.004;
        for (label, r) in &rows[..4] {
            let beside = r.phases[3];
            let parts: f64 = r.phases.iter().sum::<f64>() + r.other;
            assert!(
                parts >= r.total - slack && parts <= r.total + beside + slack,
                "{backend}: {label}\n{stderr}"
            );
        }
        let total = row(&rows, "total");
        let steps: f64 = rows[..4].iter().map(|(_, r)| r.total).sum();
        let outside = row(&rows, "outside steps").total;
        assert!(
            (steps + outside - total.total).abs() <= slack,
            "{backend}\n{stderr}"
        );
        assert!(
            total.phases.iter().sum::<f64>() <= total.total,
            "{backend}\n{stderr}"
        );
        assert!(
            total.total <= wall,
            "{backend}: {wall} s measured\n{stderr}"
        );

        // Again: every step comes from the cache, and says so.
        let stderr = rig.img_ok_stderr(&[&args[..], &[ctx.path().to_str().unwrap()]].concat());
        let rows = table(&stderr);
        let run = row(
            &rows,
            "[stage-0 2/4] RUN sleep 0.3 && echo ran > /ran CACHED",
        );
        assert!(run.phases[1] < 0.3, "{backend}\n{stderr}");
        row(&rows, "[stage-0 3/4] COPY a.txt /a.txt CACHED");
    }
}

#[test]
fn a_failed_build_still_ends_with_its_times() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context("FROM busybox\nRUN echo before && exit 3\n", &[]);
    let out = rig.img(&["build", "--progress=plain", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    let rows = table(&stderr);
    row(&rows, "[stage-0 2/2] RUN echo before && exit 3");
    // The error comes last, as without the table.
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("error: "),
        "{stderr}"
    );
}

#[test]
fn quiet_prints_nothing_and_q_only_the_image_id() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context("FROM busybox\nRUN echo RAN-IN-QUIET > /q\n", &[]);
    let dir = ctx.path().to_str().unwrap();
    let out = rig.img(&["build", "--progress=quiet", "-t", "quiet", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");

    let out = rig.img(&["build", "-q", "--no-cache", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let id = String::from_utf8(out.stdout).unwrap();
    // The same ID the default output names.
    let out = rig.img(&["build", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("Successfully built {}", id.trim_end())),
        "{id:?}\n{stderr}"
    );
    assert!(
        id.starts_with("sha256:") && id.len() == "sha256:".len() + 64 + 1,
        "{id:?}"
    );
}

#[test]
fn progress_values_img_lacks_are_refused_by_name() {
    // Refused before img opens a state or needs anything: no root, no runc.
    let state = tempfile::tempdir().unwrap();
    for (args, expect) in [
        (
            &["--progress=rawjson"][..],
            "--progress=rawjson is not supported",
        ),
        (
            &["--progress=fancy"],
            "invalid value 'fancy' for '--progress",
        ),
        (
            &["-q", "-o", "type=tar,dest=-"],
            "-q prints the image ID on standard output",
        ),
        (&["-q", "--progress=plain"], "cannot be used with"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_img"))
            .arg("-s")
            .arg(state.path())
            .arg("build")
            .args(args)
            .arg(state.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
