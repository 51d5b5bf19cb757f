//! Every case of tests/reference/processors.json (torchvision 0.29 on float32 images, written by
//! tests/reference/gen_processors.py) replayed through the processors and their deterministic kernels.

use std::collections::{BTreeMap, HashMap};

use ecstrain_kernels::rng::Rng;
use serde_json::{json, Value};

use super::super::sample::Sample;
use super::color::{adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, jitter, JitterFactors};
use super::flip::{flip, Axis};
use super::pad::{pad_crop, Padding, PaddingMode};
use super::resample::{resize_crop, CropBox, Interpolation};
use super::{center_crop, normalize, resize, to_float};

/// Largest accepted difference per group. torchvision computes in f32 with its own summation order (and FMA
/// in its vectorised loops), so a few ulps of the values' magnitude are expected; the resampling groups add
/// their weight normalisation.
fn tolerance(group: &str) -> f32 {
    match group {
        g if g.starts_with("resize") || g == "resized_crop" => 2e-6,
        "normalize" => 2e-6,
        _ => 1e-6,
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

type Build = fn(&Value) -> Result<Box<dyn super::Processor>, String>;

fn run_processor(build: Build, options: &Value, s: &mut Sample) {
    let p = build(options).unwrap();
    p.apply(s, &mut Vec::new(), &mut Rng::new(0)).unwrap();
}

/// Applies one case to `s`.
fn replay(group: &str, params: &Value, s: &mut Sample) {
    let mut scratch = Vec::new();
    let (c, h, w) = s.chw().unwrap();
    let f = |k: &str| params[k].as_f64().unwrap();
    match group {
        g if g.starts_with("resize_") => run_processor(resize::build, params, s),
        "center_crop" => run_processor(center_crop::build, params, s),
        "normalize" => run_processor(normalize::build, params, s),
        "to_float" => run_processor(to_float::build, params, s),
        "resized_crop" => {
            let b = usizes(&params["box"]);
            let size = usizes(&params["size"]);
            let interp: Interpolation = serde_json::from_value(params["interpolation"].clone()).unwrap();
            let b = CropBox { top: b[0], left: b[1], height: b[2], width: b[3] };
            resize_crop(s, &mut scratch, b, (size[0], size[1]), interp, true);
        }
        "flip" => {
            let axis = if params["axis"] == "horizontal" { Axis::Horizontal } else { Axis::Vertical };
            flip(&mut s.data, h, w, axis);
        }
        "pad_crop" => {
            let p = usizes(&params["padding"]);
            let crop = usizes(&params["crop"]);
            let mode: PaddingMode = serde_json::from_value(params["mode"].clone()).unwrap();
            let pad = Padding { left: p[0], top: p[1], right: p[2], bottom: p[3] };
            let b = CropBox { top: crop[0], left: crop[1], height: crop[2], width: crop[3] };
            pad_crop(s, &mut scratch, pad, mode, f("fill") as f32, b);
        }
        "brightness" => adjust_brightness(&mut s.data, f("factor")),
        "contrast" => adjust_contrast(&mut s.data, c, f("factor")),
        "saturation" => adjust_saturation(&mut s.data, c, f("factor")),
        "hue" => adjust_hue(&mut s.data, c, f("factor")),
        "color_jitter" => {
            let o = usizes(&params["order"]);
            let order = [o[0] as u8, o[1] as u8, o[2] as u8, o[3] as u8];
            let factors = JitterFactors {
                brightness: Some(f("brightness")),
                contrast: Some(f("contrast")),
                saturation: Some(f("saturation")),
                hue: Some(f("hue")),
            };
            jitter(&mut s.data, c, order, &factors);
        }
        other => panic!("unknown fixture group {other}"),
    }
}

#[test]
fn torchvision_reference_cases() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reference/processors.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let images: HashMap<&str, Sample> = doc["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), Sample { data: floats(&v["data"]), shape: usizes(&v["shape"]) }))
        .collect();
    let mut worst: BTreeMap<String, (f32, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in doc["cases"].as_array().unwrap() {
        let group = case["group"].as_str().unwrap();
        let mut s = images[case["image"].as_str().unwrap()].clone();
        replay(group, &case["params"], &mut s);
        let want_shape = usizes(&case["shape"]);
        let want = floats(&case["out"]);
        let label = format!("{group} {} {}", case["image"], case["params"]);
        if s.shape != want_shape {
            failures.push(format!("{label}: shape {:?}, torchvision {want_shape:?}", s.shape));
            continue;
        }
        // A NaN counts as an infinite error (f32::max would skip it).
        let err = s.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, |m, d| {
            if d.is_nan() {
                f32::INFINITY
            } else {
                m.max(d)
            }
        });
        let e = worst.entry(group.to_string()).or_insert((0.0, 0));
        e.0 = e.0.max(err);
        e.1 += 1;
        if err > tolerance(group) {
            failures.push(format!("{label}: max abs error {err:e} > {:e}", tolerance(group)));
        }
    }
    for (g, (e, n)) in &worst {
        println!("{g:<22} {n:>3} cases  max abs error {e:.3e}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(worst.len() >= 15, "fixture groups missing: {worst:?}");
}

#[test]
fn bilinear_upscaling_is_the_same_with_and_without_antialias() {
    // torch runs its antialiasing kernel when upscaling too; for the triangle filter it reduces to plain
    // bilinear interpolation (torchvision agrees: its outputs for both settings match the fixtures).
    let mut a = Sample::default();
    for (i, v) in a.reset(&[2, 5, 7]).iter_mut().enumerate() {
        *v = ((i * 31) % 17) as f32 / 17.0;
    }
    let mut b = a.clone();
    run_processor(resize::build, &json!({"size": [11, 16], "antialias": true}), &mut a);
    run_processor(resize::build, &json!({"size": [11, 16], "antialias": false}), &mut b);
    let err = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-6, "{err}");
}
