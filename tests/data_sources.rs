//! The datasets of issue 5 end to end: `image_folder` (sorted classes, pixel values, mixed sizes, corrupt
//! images), `npy` shards / float16 / bfloat16, `annotations`, `csv`, `engine data pack`, and every bad-input
//! case of the acceptance list exiting 2 with the file named. Fixtures are written into a scratch directory
//! by each test (images with the `image` crate, arrays with `write_npy` or by hand).

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use ecstrain::systems::data::npy::{write_npy, NpyArray};
use image::{Rgb, RgbImage};

/// Writes an RGB image whose pixel (x, y) is `f(x, y)`; the format follows the extension.
fn image(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y))).save(path).unwrap();
}

/// A 3-class image folder under `dir` (`bird`, `cat`, `dog` written out of order): `per_class` 4x4 images
/// each, the pixel values a function of class, image and position.
fn image_folder(dir: &Path, per_class: u32) {
    for (k, class) in ["dog", "bird", "cat"].iter().enumerate() {
        for i in 0..per_class {
            let ext = if i % 2 == 0 { "png" } else { "bmp" };
            let base = (k as u32 * 60 + i * 7) as u8;
            image(&dir.join(class).join(format!("{i:02}.{ext}")), 4, 4, |x, y| {
                [base, base.wrapping_add((x * 4 + y) as u8), 255 - base]
            });
        }
    }
}

/// The parameters (and optimizer state) of a run's last checkpoint, as their Debug text (every f32 printed
/// exactly, so equal text is equal bits).
fn tensors(save: &Path) -> String {
    let f = ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/last.safetensors"))
        .unwrap();
    let text = format!("{:?}", f.tensors);
    assert!(text.len() > 1000 && text.contains("weight"), "{text}");
    text
}

/// Runs a config that must train; returns the output.
fn trains(dir: &Path, name: &str, yaml: &str) -> Output {
    let cfg = write_config(dir, &format!("{name}.yaml"), yaml);
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{name}: expected to train:\n{}", text(&out));
    out
}

/// Runs a config that must be rejected with exit 2 and no run directory; returns the message.
fn rejected(dir: &Path, name: &str, yaml: &str, save: &Path) -> String {
    let cfg = write_config(dir, &format!("{name}.yaml"), yaml);
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: expected exit 2:\n{msg}");
    assert!(!save.exists(), "{name}: a run directory was created");
    assert!(!msg.contains("panicked"), "{name}: {msg}");
    msg
}

/// A config training a tiny CNN (3 classes) on the dataset section `dataset` (indented under `datasets:`).
fn cnn_yaml(dataset: &str, save: &Path, extra_run: &str) -> String {
    format!(
        "model:\n  arch: cnn\n  channels: [4]\n  hidden_sizes: []\n  output_size: 3\ndatasets:\n{dataset}run:\n  \
         epochs: 2\n  batch: 4\n  optimizer: SGD\n  lr0: 0.0001\n  seed: 3\n  save_dir: {}\n{extra_run}",
        save.display()
    )
}

/// An `image_folder` dataset section for `root` with its `train` and `val` folders.
fn folder_section(root: &Path, extra: &str) -> String {
    format!(
        "  imgs:\n    builder: image_folder\n    root: {}\n    train: train\n    val: {{path: val}}\n{extra}",
        root.display()
    )
}

/// The dataset `name` built through the registry, as assembly builds it.
fn open(
    builder: &str,
    options: serde_json::Value,
    root: &Path,
) -> Result<ecstrain::engine::registry::DatasetSplits, String> {
    let app = ecstrain::engine::cli::default_app();
    let entry = app.registry.dataset("datasets.d.builder", builder).unwrap().clone();
    (entry.build)(options.as_object().unwrap(), root)
}

#[test]
fn image_folder_sorted_classes_pixels_and_classes_json() {
    let dir = scratch("ds_folder");
    image_folder(&dir.join("data/train"), 3);
    image_folder(&dir.join("data/val"), 2);
    // One JPEG: lossy, so only its shape and rough colour are checked.
    image(&dir.join("data/train/cat/z.jpg"), 4, 4, |_, _| [200, 100, 50]);

    let splits =
        open("image_folder", serde_json::json!({"train": "train", "val": {"path": "val"}}), &dir.join("data")).unwrap();
    let t = &splits.train;
    assert_eq!(t.class_names().unwrap(), vec!["bird", "cat", "dog"]);
    assert_eq!((t.len(), t.sample_shape(), t.fixed_shape()), (10, &[3, 4, 4][..], true));
    let mut targets = t.empty_targets(10);
    t.read_targets(&(0..10).collect::<Vec<_>>(), &mut targets);
    assert_eq!(targets, ecstrain::components::Targets::Classes(vec![0, 0, 0, 1, 1, 1, 1, 2, 2, 2]));
    // Sample 4 is cat/01.bmp (class index 1 but folder order 2, i = 1): base 2 * 60 + 7 = 127. Pixel (x 3,
    // y 1) of each plane: R = base, G = base + 13, B = 255 - base.
    let mut s = ecstrain::systems::data::Sample::default();
    t.read_sample(4, &mut s).unwrap();
    assert_eq!(s.shape, vec![3, 4, 4]);
    let at = |c: usize| s.data[c * 16 + 4 + 3];
    assert_eq!([at(0), at(1), at(2)], [127.0, 140.0, 128.0]);
    t.read_sample(6, &mut s).unwrap();
    assert!((s.data[0] - 200.0).abs() < 8.0 && (s.data[16] - 100.0).abs() < 8.0, "jpeg {:?}", &s.data[..1]);

    // Training from the folder writes the class-to-index map into the run directory.
    let save = dir.join("run");
    trains(&dir, "folder", &cnn_yaml(&folder_section(&dir.join("data"), ""), &save, ""));
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes, serde_json::json!({"bird": 0, "cat": 1, "dog": 2}));
}

#[test]
fn image_folder_errors_exit_2_naming_the_path() {
    let dir = scratch("ds_folder_errors");
    let save = dir.join("run");
    image_folder(&dir.join("data/train"), 2);
    image_folder(&dir.join("data/val"), 1);

    // Missing root.
    let m = rejected(&dir, "root", &cnn_yaml(&folder_section(&dir.join("nope"), ""), &save, ""), &save);
    assert!(m.contains(&dir.join("nope/train").display().to_string()) && m.contains("not found"), "{m}");

    // Mixed sizes without a processor that makes them one size.
    image(&dir.join("data/train/cat/big.png"), 6, 5, |_, _| [1, 2, 3]);
    let m = rejected(&dir, "mixed", &cnn_yaml(&folder_section(&dir.join("data"), ""), &save, ""), &save);
    assert!(m.contains("do not all have the same shape") && m.contains("resize"), "{m}");
    std::fs::remove_file(dir.join("data/train/cat/big.png")).unwrap();

    // An empty class folder.
    std::fs::create_dir_all(dir.join("data/train/eel")).unwrap();
    let m = rejected(&dir, "empty", &cnn_yaml(&folder_section(&dir.join("data"), ""), &save, ""), &save);
    assert!(m.contains(&dir.join("data/train/eel").display().to_string()) && m.contains("has no images"), "{m}");
    std::fs::remove_dir(dir.join("data/train/eel")).unwrap();

    // Val classes must be train's.
    image(&dir.join("data/val/eel/0.png"), 4, 4, |_, _| [0, 0, 0]);
    let m = rejected(&dir, "classes", &cnn_yaml(&folder_section(&dir.join("data"), ""), &save, ""), &save);
    assert!(m.contains("not in train: eel"), "{m}");
    std::fs::remove_dir_all(dir.join("data/val/eel")).unwrap();

    // A corrupt image: an error naming it, or with skip_corrupt a notice and a run without it.
    let bad = dir.join("data/train/dog/zz.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let m = rejected(&dir, "corrupt", &cnn_yaml(&folder_section(&dir.join("data"), ""), &save, ""), &save);
    assert!(m.contains(&bad.display().to_string()) && m.contains("skip_corrupt: true"), "{m}");
    let out =
        trains(&dir, "skip", &cnn_yaml(&folder_section(&dir.join("data"), "    skip_corrupt: true\n"), &save, ""));
    let m = text(&out);
    assert!(m.contains("skipped 1 corrupt image") && m.contains(&bad.display().to_string()), "{m}");
}

/// Writes the digits train / val arrays into `dir`: `x` as `shards` shards (with f16, bf16 or f32 storage)
/// and `y` as two shards. Returns the dataset section.
fn digits_npy(dir: &Path, storage: &str, shards: usize) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut section = format!("  digits:\n    builder: npy\n    root: {}\n", dir.display());
    if storage == "u2" {
        section.push_str("    dtype: bfloat16\n");
    }
    for split in ["train", "val"] {
        let x = NpyArray::open(&repo().join(format!("data/digits/{split}_x.npy"))).unwrap();
        let y = NpyArray::open(&repo().join(format!("data/digits/{split}_y.npy"))).unwrap();
        let (xv, yv, n) = (x.to_f32_vec(), y.to_i64_vec().unwrap(), x.rows());
        let cut = |k: usize, parts: usize| n * k / parts;
        let mut xs = Vec::new();
        for k in 0..shards {
            let (a, b) = (cut(k, shards), cut(k + 1, shards));
            let name = format!("{split}_x{k}.npy");
            let rows = &xv[a * 64..b * 64];
            match storage {
                "f32" => write_npy(&dir.join(&name), &[b - a, 64], rows).unwrap(),
                "f16" => {
                    let h: Vec<half::f16> = rows.iter().map(|&v| half::f16::from_f32(v)).collect();
                    write_npy(&dir.join(&name), &[b - a, 64], &h).unwrap()
                }
                // ml_dtypes' encoding (<V2), which write_npy uses for bf16.
                "bf16" => {
                    let h: Vec<half::bf16> = rows.iter().map(|&v| half::bf16::from_f32(v)).collect();
                    write_npy(&dir.join(&name), &[b - a, 64], &h).unwrap()
                }
                // bfloat16 bits stored as uint16, read with `dtype: bfloat16`; the header written by hand.
                "u2" => {
                    let header = format!("{{'descr': '<u2', 'fortran_order': False, 'shape': ({}, 64), }}", b - a);
                    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
                    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
                    bytes.extend_from_slice(header.as_bytes());
                    for &v in rows {
                        bytes.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
                    }
                    std::fs::write(dir.join(&name), bytes).unwrap();
                }
                other => unreachable!("{other}"),
            }
            xs.push(name);
        }
        let h = n / 2;
        write_npy(&dir.join(format!("{split}_y0.npy")), &[h], &yv[..h]).unwrap();
        write_npy(&dir.join(format!("{split}_y1.npy")), &[n - h], &yv[h..]).unwrap();
        section.push_str(&format!(
            "    {split}:\n      x: [{}]\n      y: [{split}_y0.npy, {split}_y1.npy]\n",
            xs.join(", ")
        ));
    }
    section
}

/// The digits MLP config of the other end-to-end tests with its dataset section replaced.
fn digits_with(section: &str, save: &Path) -> String {
    let y = digits_yaml(save);
    let start = y.find("datasets:\n").unwrap() + "datasets:\n".len();
    let end = y.find("run:\n").unwrap();
    format!("{}{section}{}", &y[..start], &y[end..])
}

#[test]
fn npy_shards_and_half_storage_train_bit_identically() {
    let dir = scratch("ds_npy");
    let reference = dir.join("ref");
    trains(&dir, "ref", &digits_yaml(&reference));
    let want = tensors(&reference);
    // The digits pixels are multiples of 1/16: exact in float16 and bfloat16, so every storage trains to the
    // same parameters as the float32 original, bit for bit.
    for (storage, shards) in [("f32", 1), ("f32", 3), ("f16", 2), ("bf16", 3), ("u2", 1)] {
        let name = format!("{storage}_{shards}");
        let section = digits_npy(&dir.join(&name), storage, shards);
        if storage != "f32" {
            let x = NpyArray::open(&dir.join(&name).join("train_x0.npy"));
            let orig = NpyArray::open(&repo().join("data/digits/train_x.npy")).unwrap().to_f32_vec();
            if storage == "u2" {
                assert!(x.is_err(), "<u2 needs dtype: bfloat16");
                let a = NpyArray::open_as_bf16(&dir.join(&name).join("train_x0.npy")).unwrap();
                assert_eq!(a.to_f32_vec(), orig, "u2 values");
            } else {
                let v = x.unwrap().to_f32_vec();
                assert_eq!(v[..], orig[..v.len()], "{storage} values read exactly");
            }
        }
        let save = dir.join(format!("run_{name}"));
        trains(&dir, &name, &digits_with(&section, &save));
        assert!(tensors(&save) == want, "{name}: training differs from the unsharded float32 run");
    }
}

#[test]
fn npy_errors_exit_2_naming_the_file() {
    let dir = scratch("ds_npy_errors");
    let save = dir.join("run");
    let section = digits_npy(&dir.join("data"), "f32", 2);
    // A truncated .npy.
    let f = dir.join("data/train_x1.npy");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    let m = rejected(&dir, "truncated", &digits_with(&section, &save), &save);
    assert!(m.contains(&f.display().to_string()) && m.contains("truncated"), "{m}");
    std::fs::write(&f, &bytes).unwrap();

    // Arrays of different lengths: the labels of one shard are one short.
    let y = dir.join("data/train_y1.npy");
    let labels = NpyArray::open(&y).unwrap().to_i64_vec().unwrap();
    write_npy(&y, &[labels.len() - 1], &labels[1..]).unwrap();
    let m = rejected(&dir, "lengths", &digits_with(&section, &save), &save);
    assert!(m.contains("train_x0.npy") && m.contains("has 1437 samples"), "{m}");
    assert!(m.contains("train_y0.npy") && m.contains("has 1436"), "{m}");
    write_npy(&y, &[labels.len()], &labels).unwrap();

    // Extra arrays: gathered per batch; a length mismatch names both files.
    let w = dir.join("data/w.npy");
    write_npy(&w, &[5], &[1.0f32; 5]).unwrap();
    let with_extra = section.replacen(
        "      y: [train_y0.npy, train_y1.npy]\n",
        "      y: [train_y0.npy, train_y1.npy]\n      extra: {w: w.npy}\n",
        1,
    );
    let m = rejected(&dir, "extra", &digits_with(&with_extra, &save), &save);
    assert!(m.contains("extra `w`") && m.contains("w.npy") && m.contains("has 5"), "{m}");
    // An unknown dtype lists the choices.
    let m = rejected(&dir, "dtype", &digits_with(&format!("{section}    dtype: int4\n"), &save), &save);
    assert!(m.contains("dtype: unknown input dtype `int4`") && m.contains("bfloat16"), "{m}");
}

#[test]
fn annotations_labels_targets_captions() {
    let dir = scratch("ds_ann");
    let images = dir.join("images");
    for i in 0..6u32 {
        image(&images.join(format!("{i}.png")), 4, 4, move |x, _| [(i * 40) as u8, x as u8, 0]);
    }
    let names = ["cat", "dog", "cat", "eel", "dog", "cat"];
    let labelled: Vec<serde_json::Value> = (0..6)
        .map(|i| serde_json::json!({"image": format!("{i}.png"), "label": names[i], "caption": format!("photo {i}")}))
        .collect();
    std::fs::write(dir.join("labels.json"), serde_json::to_string(&labelled).unwrap()).unwrap();
    let targets: Vec<serde_json::Value> =
        (0..6).map(|i| serde_json::json!({"image": format!("{i}.png"), "target": [i as f64 * 0.5, 1.0]})).collect();
    std::fs::write(dir.join("targets.json"), serde_json::to_string(&targets).unwrap()).unwrap();

    let splits =
        open("annotations", serde_json::json!({"train": {"file": "labels.json", "images": "images"}}), &dir).unwrap();
    assert_eq!(splits.train.class_names().unwrap(), vec!["cat", "dog", "eel"]);
    assert_eq!((splits.train.caption(3), splits.train.len()), (Some("photo 3"), 6));
    let mut s = ecstrain::systems::data::Sample::default();
    splits.train.read_sample(5, &mut s).unwrap();
    assert_eq!((s.data[0], s.data[16 + 3]), (200.0, 3.0));

    let section = |file: &str| {
        format!(
            "  ann:\n    builder: annotations\n    root: {}\n    train: {{file: {file}, images: images}}\n    val: {{file: {file}, images: images}}\n",
            dir.display()
        )
    };
    let save = dir.join("run_labels");
    trains(&dir, "labels", &cnn_yaml(&section("labels.json"), &save, ""));
    assert!(std::fs::read_to_string(save.join("classes.json")).unwrap().contains("\"eel\": 2"));
    let save = dir.join("run_targets");
    trains(
        &dir,
        "targets",
        &cnn_yaml(&section("targets.json"), &save, "  task: regression\n").replace("output_size: 3", "output_size: 2"),
    );
    assert!(!save.join("classes.json").exists());

    // A record without an image file names the record and the path.
    std::fs::write(dir.join("bad.json"), r#"[{"image": "0.png", "label": 1}, {"image": "gone.png", "label": 0}]"#)
        .unwrap();
    let save = dir.join("run_bad");
    let m = rejected(&dir, "bad", &cnn_yaml(&section("bad.json"), &save, ""), &save);
    assert!(m.contains("bad.json: record 1") && m.contains("gone.png"), "{m}");
}

#[test]
fn csv_regression_and_classification() {
    let dir = scratch("ds_csv");
    let mut rows = String::from("a,b,species,y\n");
    for i in 0..40 {
        let (a, b) = (i as f64 / 10.0, (i % 7) as f64);
        let species = ["setosa", "virginica", "versicolor"][i % 3];
        rows.push_str(&format!("{a},{b},{species},{}\n", 2.0 * a - b));
    }
    std::fs::write(dir.join("t.csv"), &rows).unwrap();
    let yaml = |save: &Path, ds: &str, task: &str, out: usize| {
        format!(
            "model:\n  arch: mlp\n  hidden_sizes: [8]\n  output_size: {out}\ndatasets:\n  t:\n    builder: csv\n    root: {}\n{ds}run:\n  task: {task}\n  epochs: 2\n  batch: 8\n  optimizer: AdamW\n  lr0: 0.01\n  save_dir: {}\n",
            dir.display(),
            save.display()
        )
    };
    let save = dir.join("reg");
    trains(&dir, "reg", &yaml(&save, "    train: {file: t.csv, target: y, features: [a, b]}\n    val: t.csv\n    features: [a, b]\n    target: y\n", "regression", 1));
    let save = dir.join("cls");
    trains(
        &dir,
        "cls",
        &yaml(
            &save,
            "    train: t.csv\n    val: t.csv\n    target: species\n    features: [a, b]\n",
            "classification",
            3,
        ),
    );
    let classes = std::fs::read_to_string(save.join("classes.json")).unwrap();
    assert!(classes.contains("\"setosa\": 0") && classes.contains("\"virginica\": 2"), "{classes}");

    let save = dir.join("none");
    let m =
        rejected(&dir, "notarget", &yaml(&save, "    train: t.csv\n    target: label\n", "classification", 3), &save);
    assert!(m.contains("t.csv") && m.contains("no column `label`") && m.contains("a, b, species, y"), "{m}");
    let m = rejected(&dir, "nonnumeric", &yaml(&save, "    train: t.csv\n    target: y\n", "regression", 1), &save);
    assert!(m.contains("line 2, column `species`") && m.contains("not a number"), "{m}");
}

fn pack(args: &[&str]) -> Output {
    let mut a = vec!["data", "pack"];
    a.extend_from_slice(args);
    engine(&a)
}

#[test]
fn pack_trains_like_the_image_folder() {
    let dir = scratch("ds_pack");
    image_folder(&dir.join("src/train"), 4);
    image_folder(&dir.join("src/val"), 2);
    let out_dir = dir.join("packed");
    let out =
        pack(&["--src", dir.join("src").to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--shard-size", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // 12 train images in shards of 5: three shards; labels int64; values the raw bytes.
    let x = |k: usize| NpyArray::open(&out_dir.join(format!("train/images_{k:05}.npy"))).unwrap();
    assert_eq!((x(0).shape(), x(2).shape()), (&[5, 3, 4, 4][..], &[2, 3, 4, 4][..]));
    assert_eq!(x(0).dtype(), ecstrain::kernels::DType::U8);
    // Sample 5 (shard 1, row 0) is cat/01.bmp: base 127; pixel (x 3, y 1) of the G plane is 140.
    assert_eq!(x(1).to_f32_vec()[16 + 4 + 3], 140.0);
    let labels = NpyArray::open(&out_dir.join("train/labels_00000.npy")).unwrap();
    assert_eq!((labels.dtype(), labels.to_i64_vec().unwrap()), (ecstrain::kernels::DType::I64, vec![0, 0, 0, 0, 1]));
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes, serde_json::json!({"bird": 0, "cat": 1, "dog": 2}));

    // The printed snippet trains; raw 0..255 values on both sides, so the parameters match the run on the
    // folder itself bit for bit.
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let snippet = &printed[printed.find("datasets:\n").expect("a YAML snippet") + "datasets:\n".len()..];
    assert!(snippet.contains("builder: npy") && snippet.contains("train/images_00002.npy"), "{printed}");
    let (a, b) = (dir.join("run_folder"), dir.join("run_packed"));
    trains(&dir, "folder", &cnn_yaml(&folder_section(&dir.join("src"), ""), &a, ""));
    trains(&dir, "packed", &cnn_yaml(snippet, &b, ""));
    assert!(tensors(&a) == tensors(&b), "training from the packed shards differs from the image folder");
    assert_eq!(
        std::fs::read_to_string(b.join("classes.json")).unwrap(),
        std::fs::read_to_string(a.join("classes.json")).unwrap()
    );

    // Mixed sizes need --size; nothing is written then. With --size they are resized.
    image(&dir.join("src/train/cat/big.png"), 9, 6, |_, _| [10, 20, 30]);
    let out2 = dir.join("packed2");
    let out = pack(&["--src", dir.join("src").to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--size") && text(&out).contains("big.png"), "{}", text(&out));
    assert!(
        !out2.exists()
            && std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial"))
    );
    let out = pack(&[
        "--src",
        dir.join("src").to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--size",
        "3",
        "--channels",
        "1",
        "--splits",
        "train",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let x = NpyArray::open(&out2.join("train/images_00000.npy")).unwrap();
    assert_eq!(x.shape(), &[13, 1, 3, 3]);
    assert!(!out2.join("val").exists());
    // A corrupt image fails the pack with its name and leaves no output.
    std::fs::write(dir.join("src/val/dog/bad.png"), b"nope").unwrap();
    let out3 = dir.join("packed3");
    let out = pack(&["--src", dir.join("src").to_str().unwrap(), "--out", out3.to_str().unwrap(), "--size", "4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bad.png") && !out3.exists(), "{}", text(&out));
}

#[test]
fn malformed_splits_name_their_key() {
    let dir = scratch("ds_keys");
    let err = |builder: &str, options: serde_json::Value| open(builder, options, &dir).err().unwrap();
    let e = err("image_folder", serde_json::json!({"train": 5}));
    assert!(e.starts_with("train: ") && e.contains("a directory path, or {path: directory}"), "{e}");
    let e = err("npy", serde_json::json!({"train": {"x": 5, "y": "y.npy"}}));
    assert!(e.starts_with("train: ") && e.contains("a list of .npy shard paths"), "{e}");
    let e = err("csv", serde_json::json!({"train": "t.csv", "val": {"file": "v.csv", "colour": 1}}));
    // The map form names the bad key and the valid ones (not only "a CSV file path, or ...").
    assert!(e.starts_with("val: ") && e.contains("unknown field `colour`") && e.contains("`target`"), "{e}");
    let e = err("image_folder", serde_json::json!({"train": "t", "channels": 4}));
    assert!(e.contains("channels: 4") && e.contains("valid choices: 1 (grey), 3 (RGB)"), "{e}");
    let e = err("synthetic", serde_json::json!({"shape": [2], "targets": "dense", "train_samples": 2}));
    assert!(e.contains("target_len: must be >= 1"), "{e}");
}
