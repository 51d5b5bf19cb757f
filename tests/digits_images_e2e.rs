//! The shipped image-folder example: configs/digits_images_cnn.yaml trains from the PNG files of
//! data/digits_images with augmentation (random resized crop, padded random crop, colour jitter) on two loader
//! workers, reaches the accuracy the npy digits CNN does, records `data_wait` in every train record, and writes
//! the class map.

mod common;

use common::*;

#[test]
fn digits_images_cnn_trains_from_png_files() {
    let dir = scratch("digits_images");
    let save = dir.join("run");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = engine(&[
        "--config",
        root.join("configs/digits_images_cnn.yaml").to_str().unwrap(),
        "--set",
        &format!("datasets.digits_images.root={}", root.join("data/digits_images").display()),
        "--set",
        &format!("run.save_dir={}", save.display()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    let best = summary["best"]["fitness"].as_f64().unwrap_or_else(|| panic!("no best value: {summary}"));
    assert!(best >= 0.97, "best val accuracy {best} < 0.97: {summary}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<_> = records.iter().filter(|r| r["split"] == "train").collect();
    assert!(!train.is_empty());
    for r in &train {
        let f = r["data_wait_frac"].as_f64().unwrap_or_else(|| panic!("no data_wait_frac in {r}"));
        assert!((0.0..=1.0).contains(&f), "{r}");
    }
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes.as_object().unwrap().len(), 10);
    assert_eq!(classes["7"], 7);
}
