//! Line charts with a title, labelled axes and a legend, drawn by `plotters` into an RGB buffer and
//! encoded as PNG by `image` (so plotters needs neither its own image stack nor system fonts: text uses the
//! DejaVu Sans font embedded in the binary, see `assets/fonts/`).

use std::sync::OnceLock;

use plotters::prelude::*;

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (900, 560);

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as plotters' `sans-serif` family, once per process.
pub fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

/// One named line.
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points; non-finite ones are left out before drawing.
    pub points: Vec<(f64, f64)>,
}

/// Distinct colours for the lines (matplotlib's first tab10 colours).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A range padded by 5% on each side, and widened when every value is the same.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    if span.abs() < 1e-12 * (1.0 + lo.abs()) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - d, hi + d)
    } else {
        (lo - span * 0.05, hi + span * 0.05)
    }
}

/// An axis label: whole numbers on a wide range (epochs, steps), otherwise about three significant digits, in the
/// exponent form for very small or large magnitudes (learning rates).
fn tick(v: f64, span: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if span >= 5.0 && v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() < 1e-2 || v.abs() >= 1e5 {
        format!("{v:.2e}")
    } else {
        let digits = (2 - span.abs().max(1e-12).log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}

pub(super) fn draw_err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing failed: {e:?}")
}

/// Draws the series as a line chart (with markers, so a one-epoch run still shows its point) into an RGB
/// buffer of [`SIZE`]. `None` when no series has a finite point.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<Option<Vec<u8>>, String> {
    ensure_font()?;
    let clean: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.name.as_str(), s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()))
        .filter(|(_, p): &(&str, Vec<_>)| !p.is_empty())
        .collect();
    if clean.is_empty() {
        return Ok(None);
    }
    let all = clean.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let ((x0, x1), (y0, y1)) = (padded(x0, x1), padded(y0, y1));
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(18)
            .x_label_area_size(52)
            .y_label_area_size(90)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        let (xs, ys) = (x1 - x0, y1 - y0);
        let fx = move |v: &f64| tick(*v, xs);
        let fy = move |v: &f64| tick(*v, ys);
        chart
            .configure_mesh()
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .max_light_lines(2)
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        for (i, (name, points)) in clean.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
            // Markers only where they stay readable.
            if points.len() <= 60 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw_err)?;
            }
        }
        // One line needs no legend (the title names it). Otherwise the legend goes where the first line is
        // not at its end: bottom right for a rising curve (accuracy), top right for a falling one (loss).
        if clean.len() > 1 {
            let last = clean[0].1.last().map_or(y1, |p| p.1);
            let corner =
                if last > (y0 + y1) / 2.0 { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight };
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(corner)
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Some(buf))
}

/// Encodes an RGB buffer of `size` as PNG.
pub fn encode_png(rgb: &[u8], size: (u32, u32)) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, size.0, size.1, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(out)
}
