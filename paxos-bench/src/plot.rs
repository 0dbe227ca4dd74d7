//! The scale benchmark's plot: worst write latency per interval over time,
//! with the checkpoints shaded, as an SVG file.

use crate::timeline::Window;
use plotters::prelude::*;
use std::path::Path;

/// Shading colour per node (cycled past three).
const PALETTE: [RGBColor; 3] = [
    RGBColor(255, 160, 0),
    RGBColor(0, 160, 255),
    RGBColor(0, 200, 100),
];

/// A shaded span with its label (e.g. `node1 checkpoint`).
#[derive(Clone, Debug)]
pub struct Shade {
    /// The span, microseconds from the origin.
    pub window: Window,
    /// 0-based node index, which picks the colour.
    pub node: usize,
}

/// A vertical marker (e.g. `wipe node2`), microseconds from the origin.
#[derive(Clone, Debug)]
pub struct Marker {
    /// When.
    pub at_us: u64,
    /// What.
    pub label: String,
}

/// Writes the plot of `series` (send time µs, worst latency µs) to `path`.
pub fn write_svg(
    path: &Path,
    title: &str,
    series: &[(u64, u64)],
    shades: &[Shade],
    markers: &[Marker],
) -> anyhow::Result<()> {
    let to_s = |us: u64| us as f64 / 1e6;
    let to_ms = |us: u64| us as f64 / 1e3;
    let end_s = series
        .iter()
        .map(|&(t, _)| to_s(t))
        .chain(shades.iter().map(|s| to_s(s.window.end_us)))
        .fold(1.0, f64::max);
    let top_ms = series.iter().map(|&(_, l)| to_ms(l)).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end_s, (0.1f64..top_ms).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the steady phase began")
        .y_desc("worst write latency per 100 ms (ms, log)")
        .draw()
        .map_err(draw)?;
    for s in shades {
        let c = PALETTE[s.node % PALETTE.len()].mix(0.25);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (to_s(s.window.start_us), 0.1),
                    (
                        to_s(s.window.end_us.max(s.window.start_us + 20_000)),
                        top_ms,
                    ),
                ],
                c.filled(),
            )))
            .map_err(draw)?;
    }
    for m in markers {
        let x = to_s(m.at_us);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.1), (x, top_ms)],
                RED.stroke_width(1),
            )))
            .map_err(draw)?;
        chart
            .draw_series(std::iter::once(Text::new(
                m.label.clone(),
                (x, top_ms / 1.5),
                ("sans-serif", 12).into_font().color(&RED),
            )))
            .map_err(draw)?;
    }
    chart
        .draw_series(LineSeries::new(
            series.iter().map(|&(t, l)| (to_s(t), to_ms(l).max(0.1))),
            BLACK.stroke_width(1),
        ))
        .map_err(draw)?
        .label("worst write latency")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (node, &c) in PALETTE.iter().enumerate() {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.1), (0.0, 0.1)],
                c.mix(0.25).filled(),
            )))
            .map_err(draw)?
            .label(format!("node{} checkpoint", node + 1))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.mix(0.4).filled())
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_an_svg_with_the_series_and_shades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let series: Vec<(u64, u64)> = (0..50).map(|i| (i * 100_000, 1000 + i * 10)).collect();
        let shades = [Shade {
            window: Window {
                start_us: 1_000_000,
                end_us: 2_000_000,
            },
            node: 1,
        }];
        let markers = [Marker {
            at_us: 3_000_000,
            label: "wipe node3".into(),
        }];
        write_svg(&path, "test plot", &series, &shades, &markers).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("test plot") && svg.contains("wipe node3"));
        assert!(svg.contains("<polyline"), "the latency line is drawn");
    }
}
