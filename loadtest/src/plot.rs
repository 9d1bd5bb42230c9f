//! Plots of a run (SVG, or PNG): the distribution of proxy convergence
//! latencies, and each change's p50/p99/max over the run.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

/// Fonts a PNG's text may be drawn with (PNG rasterises text itself; SVG
/// leaves it to the viewer). Debian's fonts-dejavu-core provides the first.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok()).ok_or_else(|| {
            format!("PNG plots need a TrueType font and none of {FONT_PATHS:?} exists (install fonts-dejavu-core), or plot to .svg")
        })?;
        // Registered fonts live for the process: leaking the one copy is the intent.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "the font file is not a valid TrueType font".to_string())
    })
    .clone()
}

/// Writes the plot to `path`: `.svg` or `.png`.
pub fn write(path: &Path, report: &Report, all: &Histogram<u64>) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), message: e.to_string() };
    // Both backends lay text out with the registered font (plotters'
    // ab_glyph text backend), SVG included.
    register_font().map_err(|e| err(&e))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            draw(BitMapBackend::new(path, (1000, 800)).into_drawing_area(), report, all).map_err(|e| err(&e))
        }
        _ => draw(SVGBackend::new(path, (1000, 800)).into_drawing_area(), report, all).map_err(|e| err(&e)),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    report: &Report,
    all: &Histogram<u64>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(400);
    let title = format!("{} proxies, {}, {}", report.proxies, report.mode, report.scenario);

    // Distribution: share of proxy-changes per latency bucket (ms).
    let max_ms = (all.max() as f64 / 1e3).max(1.0);
    let buckets = 50usize;
    let width = max_ms / buckets as f64;
    let mut counts = vec![0u64; buckets];
    for v in all.iter_recorded() {
        let ms = v.value_iterated_to() as f64 / 1e3;
        let i = ((ms / width) as usize).min(buckets - 1);
        counts[i] += v.count_at_value();
    }
    let total = all.len().max(1) as f64;
    let peak = counts.iter().copied().max().unwrap_or(1) as f64 / total;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("convergence distribution — {title}"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_ms, 0.0..(peak * 1.1).max(0.01))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("ms from change to proxy ACK")
        .y_desc("share of proxy-changes")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, *c as f64 / total)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| err(&e))?;

    // Timeline: per change, p50 / p99 / max.
    let changes = &report.per_change;
    let t_max = changes.iter().map(|c| c.at_s).fold(1.0, f64::max);
    let y_max = changes.iter().map(|c| c.max_ms).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("convergence per change", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..t_max * 1.02, 0.0..y_max * 1.1)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("s since start").y_desc("ms").draw().map_err(|e| err(&e))?;
    for (label, color, pick) in [
        ("p50", GREEN, (|c: &crate::measure::ChangeResult| c.p50_ms) as fn(&crate::measure::ChangeResult) -> f64),
        ("p99", BLUE, |c| c.p99_ms),
        ("max", RED, |c| c.max_ms),
    ] {
        chart
            .draw_series(LineSeries::new(changes.iter().map(|c| (c.at_s, pick(c))), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
