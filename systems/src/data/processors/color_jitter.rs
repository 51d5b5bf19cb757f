//! `color_jitter`: torchvision's `ColorJitter(brightness, contrast, saturation, hue)` on float images in
//! [0, 1]. Each factor is drawn uniformly from its range (a number `x` means [max(0, 1 - x), 1 + x], for hue
//! [-x, x] with x <= 0.5; a `[min, max]` pair is taken as given) and the four ops run in a random order.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::color::{jitter, JitterFactors};
use super::image::{image_input, sample_chw};
use super::options::{parse, NumberOrRange};
use super::Processor;

/// `color_jitter` options (each absent = not jittered).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    brightness: Option<NumberOrRange>,
    contrast: Option<NumberOrRange>,
    saturation: Option<NumberOrRange>,
    hue: Option<NumberOrRange>,
}

/// Random brightness, contrast, saturation and hue.
#[derive(Debug)]
pub struct ColorJitter {
    brightness: Option<(f64, f64)>,
    contrast: Option<(f64, f64)>,
    saturation: Option<(f64, f64)>,
    hue: Option<(f64, f64)>,
}

/// torchvision's `_check_input`: the range of one option, `None` when it leaves images unchanged.
fn range(key: &str, v: Option<NumberOrRange>, hue: bool) -> Result<Option<(f64, f64)>, String> {
    let (center, lo_bound, hi_bound) = if hue { (0.0, -0.5, 0.5) } else { (1.0, 0.0, f64::INFINITY) };
    let (lo, hi) = match v {
        None => return Ok(None),
        Some(NumberOrRange::One(x)) => {
            if !x.is_finite() || x < 0.0 || (hue && x > 0.5) {
                let valid = if hue { "in [0, 0.5]" } else { ">= 0" };
                return Err(format!("`{key}` as one number must be {valid}, got {x}"));
            }
            if hue {
                (-x, x)
            } else {
                ((center - x).max(0.0), center + x)
            }
        }
        Some(NumberOrRange::Range([lo, hi])) => (lo, hi),
    };
    if !(lo_bound <= lo && lo <= hi && hi <= hi_bound) {
        return Err(format!(
            "`{key}` must be a range [min, max] with {lo_bound} <= min <= max <= {hi_bound}, got [{lo}, {hi}]"
        ));
    }
    Ok(if lo == center && hi == center { None } else { Some((lo, hi)) })
}

/// Builds `color_jitter` from `{brightness, contrast, saturation, hue}` (each optional).
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    Ok(Box::new(ColorJitter {
        brightness: range("brightness", o.brightness, false)?,
        contrast: range("contrast", o.contrast, false)?,
        saturation: range("saturation", o.saturation, false)?,
        hue: range("hue", o.hue, true)?,
    }))
}

fn check_channels(c: usize, dims: &[usize]) -> Result<(), String> {
    if c == 1 || c == 3 {
        return Ok(());
    }
    Err(format!("color_jitter needs 1 or 3 channels (gray or RGB), got {c} in {dims:?}"))
}

impl ColorJitter {
    /// Draws the op order and factors as torchvision's `make_params` does: the permutation first, then a factor
    /// for each jittered op in the order brightness, contrast, saturation, hue.
    pub fn draw(&self, rng: &mut Rng) -> ([u8; 4], JitterFactors) {
        let mut order = [0u8, 1, 2, 3];
        rng.shuffle(&mut order);
        let mut draw = |r: Option<(f64, f64)>| r.map(|(lo, hi)| lo + (hi - lo) * rng.next_f64());
        let f = JitterFactors {
            brightness: draw(self.brightness),
            contrast: draw(self.contrast),
            saturation: draw(self.saturation),
            hue: draw(self.hue),
        };
        (order, f)
    }
}

impl Processor for ColorJitter {
    fn name(&self) -> &str {
        "color_jitter"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        let (c, _, _) = image_input("color_jitter", input)?;
        check_channels(c, &input.dims)?;
        Ok(input.clone())
    }
    fn is_random(&self) -> bool {
        true
    }
    fn apply(&self, sample: &mut Sample, _scratch: &mut Vec<f32>, rng: &mut Rng) -> Result<(), String> {
        let (c, _, _) = sample_chw("color_jitter", sample)?;
        check_channels(c, &sample.shape)?;
        let (order, f) = self.draw(rng);
        jitter(&mut sample.data, c, order, &f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranges_as_torchvision() {
        let r = |v, hue| range("x", Some(v), hue);
        assert_eq!(r(NumberOrRange::One(0.4), false).unwrap(), Some((0.6, 1.4)));
        assert_eq!(r(NumberOrRange::One(1.5), false).unwrap(), Some((0.0, 2.5)));
        assert_eq!(r(NumberOrRange::One(0.0), false).unwrap(), None);
        assert_eq!(r(NumberOrRange::One(0.2), true).unwrap(), Some((-0.2, 0.2)));
        assert_eq!(r(NumberOrRange::Range([0.5, 0.9]), false).unwrap(), Some((0.5, 0.9)));
        assert!(r(NumberOrRange::Range([0.9, 0.5]), false).is_err());
        let e = build(&json!({"hue": 0.6})).err().unwrap();
        assert!(e.contains("`hue`") && e.contains("[0, 0.5]"), "{e}");
        let e = build(&json!({"hue": [-0.6, 0.1]})).err().unwrap();
        assert!(e.contains("`hue`") && e.contains("-0.5"), "{e}");
        let e = build(&json!({"brightness": -1})).err().unwrap();
        assert!(e.contains("`brightness`") && e.contains(">= 0"), "{e}");
        let e = build(&json!({"sharpness": 0.3})).err().unwrap();
        assert!(e.contains("unknown field `sharpness`") && e.contains("`saturation`"), "{e}");
    }

    #[test]
    fn draws_are_seeded_within_ranges_and_shapes_checked() {
        let p = build(&json!({"brightness": 0.4, "contrast": [0.5, 0.9], "saturation": 0.3, "hue": 0.1})).unwrap();
        let image = || {
            let mut s = Sample::default();
            for (i, v) in s.reset(&[3, 4, 5]).iter_mut().enumerate() {
                *v = ((i * 7) % 10) as f32 / 10.0;
            }
            s
        };
        let run = |i: u64| {
            let mut s = image();
            p.apply(&mut s, &mut Vec::new(), &mut Rng::derive(2, &[0xA06, 0, 0, i])).unwrap();
            s.data
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert!(run(5).iter().all(|v| (0.0..=1.0).contains(v)));
        let cj = ColorJitter {
            brightness: Some((0.6, 1.4)),
            contrast: Some((0.5, 0.9)),
            saturation: Some((0.7, 1.3)),
            hue: Some((-0.1, 0.1)),
        };
        let mut orders = std::collections::BTreeSet::new();
        for i in 0..500 {
            let (order, f) = cj.draw(&mut Rng::new(i));
            let mut sorted = order;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
            orders.insert(order);
            let b = f.brightness.unwrap();
            let c = f.contrast.unwrap();
            assert!((0.6..1.4).contains(&b) && (0.5..0.9).contains(&c), "{f:?}");
            assert!((-0.1..0.1).contains(&f.hue.unwrap()));
        }
        assert_eq!(orders.len(), 24);
        let e = p.output_shape(&ShapeInfo::fixed(&[4, 2, 2])).err().unwrap();
        assert!(e.contains("1 or 3 channels") && e.contains("[4, 2, 2]"), "{e}");
        assert!(p.output_shape(&ShapeInfo::fixed(&[12])).err().unwrap().contains("[12]"));
    }
}
