//! The sweep plot: latency against throughput, one colour per [`Sweep`]
//! (a solid p50 line and a dashed p99 line), every point labelled with its
//! concurrency, as an SVG file.
//!
//! Both axes are logarithmic: one chart holds etcd at ~10K ops/s and
//! paxos-kv on memory at hundreds of thousands, and latencies from tens of
//! microseconds to hundreds of milliseconds.

use crate::sweep::Sweep;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::series::DashedLineSeries;
use std::path::{Path, PathBuf};

/// Series colours, one per sweep (cycled past six).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Smallest values drawn, so a zero (no completed operations, or a
/// sub-microsecond quantile) stays on the log axes.
const MIN_OPS_PER_SEC: f64 = 1.0;
const MIN_LATENCY_MS: f64 = 0.001;

fn latency_ms(us: u64) -> f64 {
    (us as f64 / 1e3).max(MIN_LATENCY_MS)
}

fn throughput(ops_per_sec: f64) -> f64 {
    ops_per_sec.max(MIN_OPS_PER_SEC)
}

/// An axis label for a throughput: `800`, `20K`, `1.5M`.
fn ops_label(ops_per_sec: f64) -> String {
    if ops_per_sec >= 1e6 {
        format!("{}M", ops_per_sec / 1e6)
    } else if ops_per_sec >= 1e3 {
        format!("{}K", ops_per_sec / 1e3)
    } else {
        format!("{ops_per_sec}")
    }
}

/// Draws `sweeps` on one chart at `path`. Every sweep is validated first;
/// an empty list is an error.
pub fn write_svg(path: &Path, title: &str, sweeps: &[Sweep]) -> anyhow::Result<()> {
    anyhow::ensure!(!sweeps.is_empty(), "no sweeps to plot");
    for s in sweeps {
        s.validate()?;
    }
    let points = || sweeps.iter().flat_map(|s| s.points.iter());
    let (x_min, x_max) = points()
        .map(|p| throughput(p.ops_per_sec))
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (y_min, y_max) = points()
        .flat_map(|p| [latency_ms(p.p50_us), latency_ms(p.p99_us)])
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    // Room around the extremes for the point labels, and on the right for
    // the legend.
    let x_range = (x_min / 1.5)..(x_max * 4.0);
    let y_range = (y_min / 1.5)..(y_max * 2.0);

    let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("throughput (ops/s, log)")
        .y_desc("latency (ms, log)")
        .x_labels(12)
        .y_labels(12)
        // The minor lines of a log axis crowd into grey bands; the labelled
        // lines are enough to read values off.
        .light_line_style(WHITE)
        .x_label_formatter(&|x| ops_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(draw)?;

    for (i, sweep) in sweeps.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut pts = sweep.points.clone();
        pts.sort_by_key(|p| p.in_flight());
        let p50: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (throughput(p.ops_per_sec), latency_ms(p.p50_us)))
            .collect();
        let p99: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (throughput(p.ops_per_sec), latency_ms(p.p99_us)))
            .collect();
        chart
            .draw_series(LineSeries::new(p50.clone(), colour.stroke_width(2)))
            .map_err(draw)?
            .label(format!("{} p50", sweep.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(
                p99.clone(),
                6,
                4,
                colour.stroke_width(1),
            ))
            .map_err(draw)?
            .label(format!("{} p99", sweep.label))
            .legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 4, colour.stroke_width(1))
            });
        chart
            .draw_series(p50.iter().map(|&c| Circle::new(c, 4, colour.filled())))
            .map_err(draw)?;
        chart
            .draw_series(
                p99.iter()
                    .map(|&c| TriangleMarker::new(c, 5, colour.stroke_width(1))),
            )
            .map_err(draw)?;
        let font = ("sans-serif", 11).into_font().color(&colour);
        chart
            .draw_series(pts.iter().zip(&p50).zip(&p99).flat_map(|((p, &a), &b)| {
                let label = p.concurrency_label();
                // Beside the marker, not on it.
                [
                    EmptyElement::at(a) + Text::new(label.clone(), (6, 2), font.clone()),
                    EmptyElement::at(b) + Text::new(label, (6, -14), font.clone()),
                ]
            }))
            .map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        // Latency rises with throughput, so the low-latency, high-throughput
        // corner is where the curves are not.
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

/// Saves every sweep as `sweep-<name>.json` (`<name>` is `storage` for
/// paxos-kv, `etcd` for etcd) and draws them together as
/// `sweep-<storage>.svg`, all in `out_dir`; returns the files written.
pub fn write_outputs(
    out_dir: &Path,
    storage: &str,
    sweeps: &[Sweep],
) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(!sweeps.is_empty(), "no sweeps to write");
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    for s in sweeps {
        let name = if s.system == "etcd" { "etcd" } else { storage };
        let json = out_dir.join(format!("sweep-{name}.json"));
        s.save(&json)?;
        written.push(json);
    }
    let svg = out_dir.join(format!("sweep-{storage}.svg"));
    let workload = if sweeps[0].write_percent == 100 {
        "SETs".to_string()
    } else {
        format!("{}% writes", sweeps[0].write_percent)
    };
    let title = format!(
        "latency against throughput, {} B {workload}",
        sweeps[0].value_bytes
    );
    write_svg(&svg, &title, sweeps)?;
    written.push(svg);
    Ok(written)
}

/// `paxos-bench plot`: the sweeps saved at `from` on one chart at `out`.
pub fn plot_saved(from: &[PathBuf], out: &Path, title: &str) -> anyhow::Result<()> {
    let sweeps = from
        .iter()
        .map(|p| Sweep::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    write_svg(out, title, &sweeps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::tests::sweep;

    #[test]
    fn one_solid_and_one_dashed_series_per_sweep_with_labelled_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        let file = sweep(
            "paxos-kv file",
            &[
                (1, 16, 20_000.0, 700, 1500),
                (4, 16, 60_000.0, 1000, 2500),
                (64, 16, 150_000.0, 6000, 12_000),
            ],
        );
        let etcd = sweep(
            "etcd",
            &[
                (256, 1, 9_000.0, 25_000, 80_000),
                (1024, 1, 10_000.0, 90_000, 200_000),
            ],
        );
        write_svg(&path, "sweep test", &[file, etcd]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("sweep test"));
        for legend in [
            "paxos-kv file p50",
            "paxos-kv file p99",
            "etcd p50",
            "etcd p99",
        ] {
            assert!(svg.contains(legend), "legend {legend} missing");
        }
        // Every point carries its concurrency (once at p50, once at p99).
        let text_lines = |t: &str| svg.lines().filter(|l| l.trim() == t).count();
        assert_eq!(text_lines("64×16"), 2);
        assert_eq!(text_lines("1024"), 2);
        // The p50 lines are solid polylines of the sweep's points; the
        // legend adds one more per line.
        assert!(svg.matches("<polyline").count() >= 4, "the lines are drawn");
    }

    #[test]
    fn nothing_or_invalid_input_is_an_error_and_writes_no_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.svg");
        let e = write_svg(&path, "t", &[]).unwrap_err().to_string();
        assert!(e.contains("no sweeps"), "{e}");
        let bad = sweep("bad", &[(0, 16, 10.0, 1, 2)]);
        let e = write_svg(&path, "t", &[bad]).unwrap_err().to_string();
        assert!(e.contains("must be positive"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn a_sweep_run_writes_its_points_and_plot_which_plot_can_combine() {
        let dir = tempfile::tempdir().unwrap();
        let ours = sweep("paxos-kv file", &[(1, 16, 20_000.0, 700, 1500)]);
        let mut etcd = sweep("etcd", &[(256, 1, 9_000.0, 25_000, 80_000)]);
        etcd.system = "etcd".into();
        let written = write_outputs(dir.path(), "file", &[ours.clone(), etcd.clone()]).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["sweep-file.json", "sweep-etcd.json", "sweep-file.svg"]
        );
        assert_eq!(Sweep::load(&written[1]).unwrap(), etcd);
        let run_svg = std::fs::read_to_string(&written[2]).unwrap();
        assert!(
            run_svg.contains("paxos-kv file p50") && run_svg.contains("etcd p99"),
            "the run's plot has both systems"
        );

        let mut memory = sweep("paxos-kv memory", &[(4, 16, 90_000.0, 600, 1200)]);
        memory.storage = "memory".into();
        let memory_json = dir.path().join("sweep-memory.json");
        memory.save(&memory_json).unwrap();
        let combined = dir.path().join("combined.svg");
        plot_saved(
            &[written[0].clone(), memory_json, written[1].clone()],
            &combined,
            "all",
        )
        .unwrap();
        let svg = std::fs::read_to_string(&combined).unwrap();
        for legend in ["paxos-kv file p50", "paxos-kv memory p99", "etcd p50"] {
            assert!(svg.contains(legend), "legend {legend} missing");
        }
        let e = plot_saved(&[dir.path().join("nope.json")], &combined, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
    }

    #[test]
    fn zero_throughput_and_latency_stay_on_the_log_axes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero.svg");
        let s = sweep("z", &[(1, 1, 0.0, 0, 0), (2, 1, 100.0, 50, 80)]);
        write_svg(&path, "t", &[s]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("z p50"));
    }
}
