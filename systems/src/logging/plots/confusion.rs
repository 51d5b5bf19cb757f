//! The confusion matrix image of a classification run: rows are the true classes, columns the predicted
//! ones, each cell shaded by its share of the row (the recall of that class when on the diagonal) and
//! labelled with its count while the cells are big enough to hold one.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::chart::{draw_err, ensure_font};

/// Blues, from white (0) to dark blue (1), as matplotlib's `Blues` ends.
fn blue(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(lerp(247, 8), lerp(251, 48), lerp(255, 107))
}

/// A label cut to `n` characters.
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// Draws the `classes x classes` matrix `counts` (row-major, `[true][predicted]`) with the class `names`;
/// returns the RGB buffer and its size.
pub fn confusion_image(
    counts: &[u64],
    classes: usize,
    names: &[String],
    title: &str,
) -> Result<(Vec<u8>, (u32, u32)), String> {
    ensure_font()?;
    let n = classes.max(1);
    let cell = (640 / n).clamp(6, 64) as i32;
    let (left, top, right, bottom) = (120i32, 80i32, 30i32, 90i32);
    let size = ((left + right + cell * n as i32) as u32, (top + bottom + cell * n as i32) as u32);
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let centre = Pos::new(HPos::Center, VPos::Center);
        let font = |px: f64| ("sans-serif", px).into_font();
        root.draw(&Text::new(title.to_string(), (size.0 as i32 / 2, 24), font(24.0).color(&BLACK).pos(centre)))
            .map_err(draw_err)?;
        root.draw(&Text::new("true \\ predicted", (left / 2, top - 14), font(14.0).color(&BLACK).pos(centre)))
            .map_err(draw_err)?;
        let grid_bottom = top + cell * n as i32;
        root.draw(&Text::new(
            "predicted class",
            (left + cell * n as i32 / 2, grid_bottom + 60),
            font(18.0).color(&BLACK).pos(centre),
        ))
        .map_err(draw_err)?;
        // Label every k-th class so labels never overlap.
        let every = (16 / cell).max(1) as usize;
        let label_px = (cell as f64 * 0.45).clamp(10.0, 15.0);
        for i in 0..n {
            let row_total: u64 = counts[i * n..(i + 1) * n].iter().sum();
            for j in 0..n {
                let c = counts[i * n + j];
                let share = if row_total > 0 { c as f64 / row_total as f64 } else { 0.0 };
                let (x, y) = (left + j as i32 * cell, top + i as i32 * cell);
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], blue(share).filled())).map_err(draw_err)?;
                if cell >= 28 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        c.to_string(),
                        (x + cell / 2, y + cell / 2),
                        font((cell as f64 * 0.32).min(16.0)).color(&ink).pos(centre),
                    ))
                    .map_err(draw_err)?;
                }
            }
            if i % every == 0 {
                let name = short(names.get(i).map_or("", String::as_str), 12);
                let name = if name.is_empty() { i.to_string() } else { name };
                let mid = top + i as i32 * cell + cell / 2;
                root.draw(&Text::new(
                    name.clone(),
                    (left - 8, mid),
                    font(label_px).color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center)),
                ))
                .map_err(draw_err)?;
                let midx = left + i as i32 * cell + cell / 2;
                root.draw(&Text::new(name, (midx, grid_bottom + 16), font(label_px).color(&BLACK).pos(centre)))
                    .map_err(draw_err)?;
            }
        }
        root.draw(&Rectangle::new([(left, top), (left + cell * n as i32, grid_bottom)], BLACK.stroke_width(1)))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok((buf, size))
}
