//! PNG plots with `plotters` (bitmap backend): latency p50/p99 vs N per column, and
//! programming time vs N. Text is drawn with DejaVu Sans, shipped in `assets/` (its licence
//! beside it), through plotters' `ab_glyph` text renderer.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{BenchError, Result};
use crate::results::Results;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the shipped DejaVu Sans font could not be registered; plots lack text");
        }
    });
}

/// A fixed colour per column, so every plot agrees.
fn colour(column: &str) -> RGBColor {
    match column {
        "direct" => RGBColor(0, 0, 0),
        "kube-proxy-iptables" => RGBColor(214, 39, 40),
        "kube-proxy-nftables" => RGBColor(31, 119, 180),
        "serval-iptables" => RGBColor(44, 160, 44),
        "serval-bpf" => RGBColor(148, 103, 189),
        "serval-bpf-ctlb" => RGBColor(255, 127, 14),
        _ => RGBColor(127, 127, 127),
    }
}

/// A series to draw: label, colour, points, whether it is the secondary (p99 / one-more) kind.
struct Series {
    label: String,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
    secondary: bool,
}

fn plot_err(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |reason| BenchError::Plot {
        path: path.to_path_buf(),
        reason,
    }
}

fn log_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (1.0, 10.0);
    }
    let (lo, hi) = (lo / pad, hi * pad);
    if hi / lo < 10.0 {
        let mid = (lo * hi).sqrt();
        (mid / 3.2, mid * 3.2)
    } else {
        (lo, hi)
    }
}

fn draw(path: &Path, title: &str, y_desc: &str, series: &[Series]) -> Result<()> {
    register_font();
    let err = plot_err(path);
    let (x0, x1) = log_range(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        1.5,
    );
    let (y0, y1) = log_range(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        1.3,
    );
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("services (N)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_labels(12)
        .y_label_formatter(&|v| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else if *v >= 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        })
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let c = s.colour;
        let width = if s.secondary { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(width)))
            .map_err(|e| err(e.to_string()))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(width))
            });
        if s.secondary {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 5, c.filled())),
                )
                .map_err(|e| err(e.to_string()))?;
        } else {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn columns(r: &Results) -> Vec<String> {
    r.config.dataplanes.clone()
}

/// `latency.png`: p50 (circles) and p99 (triangles) vs N per column. `None` when there is
/// nothing to draw.
pub fn latency(r: &Results, dir: &Path) -> Result<Option<PathBuf>> {
    let mut series = Vec::new();
    for c in columns(r) {
        let mut pts: Vec<_> = r
            .latency
            .iter()
            .filter(|p| p.dataplane == c)
            .filter_map(|p| p.summary.map(|s| (p.n as f64, s.p50, s.p99)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.is_empty() {
            continue;
        }
        series.push(Series {
            label: format!("{c} p50"),
            colour: colour(&c),
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
            secondary: false,
        });
        series.push(Series {
            label: format!("{c} p99"),
            colour: colour(&c),
            points: pts.iter().map(|p| (p.0, p.2)).collect(),
            secondary: true,
        });
    }
    if series.is_empty() {
        return Ok(None);
    }
    let path = dir.join("latency.png");
    draw(
        &path,
        "New-connection latency to the last of N services",
        "latency (µs)",
        &series,
    )?;
    Ok(Some(path))
}

/// `programming.png`: N services from nothing until the last answers (circles) and one
/// more at N (triangles), per column.
pub fn programming(r: &Results, dir: &Path) -> Result<Option<PathBuf>> {
    let mut series = Vec::new();
    for c in columns(r) {
        let mut pts: Vec<_> = r
            .programming
            .iter()
            .filter(|p| p.dataplane == c)
            .map(|p| (p.n as f64, p.answer_ms, p.add_one_answer_ms))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.is_empty() {
            continue;
        }
        series.push(Series {
            label: format!("{c}: N from nothing"),
            colour: colour(&c),
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
            secondary: false,
        });
        let one: Vec<_> = pts.iter().filter_map(|p| p.2.map(|v| (p.0, v))).collect();
        if !one.is_empty() {
            series.push(Series {
                label: format!("{c}: one more at N"),
                colour: colour(&c),
                points: one,
                secondary: true,
            });
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let path = dir.join("programming.png");
    draw(
        &path,
        "Programming time until the service answers",
        "time (ms)",
        &series,
    )?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_never_degenerate() {
        let (a, b) = log_range([5.0].into_iter(), 1.5);
        assert!(a < 5.0 && b > 5.0 && b / a >= 10.0);
        assert_eq!(log_range(std::iter::empty(), 1.5), (1.0, 10.0));
        let (a, b) = log_range([1.0, 50_000.0].into_iter(), 1.5);
        assert!(a < 1.0 && b > 50_000.0);
    }

    #[test]
    fn draws_a_png_with_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.png");
        let series = vec![
            Series {
                label: "a p50".into(),
                colour: colour("direct"),
                points: vec![(1.0, 100.0), (100.0, 110.0), (1000.0, 120.0)],
                secondary: false,
            },
            Series {
                label: "a p99".into(),
                colour: colour("direct"),
                points: vec![(1.0, 200.0), (100.0, 210.0), (1000.0, 260.0)],
                secondary: true,
            },
        ];
        draw(&path, "test", "latency (µs)", &series).expect("drawn");
        let bytes = std::fs::read(&path).expect("png written");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5_000, "a real picture, not an empty canvas");
    }
}
