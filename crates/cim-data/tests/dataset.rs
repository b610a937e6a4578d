//! Dataset layouts and `check_data`: an ImageFolder keeps torchvision's class indices (an
//! empty class folder included), hidden and non-image files are left out but reported, flat
//! and nested folders and file lists open unlabelled, and `check_data` names every bad file.

mod common;

use cim_data::{DataError, Dataset, Layout, check_data};
use common::*;

#[test]
fn image_folder_keeps_sorted_classes_and_their_indices() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put(root, "zebra/b.jpg", &jpeg_rgb(20, 10));
    put(root, "zebra/a.png", &png_rgb(4, 4, &pattern(4, 4)));
    put(root, "zebra/sub/c.JPEG", &jpeg_rgb(8, 8));
    put(
        root,
        "apple/x.webp",
        &webp(3, 3, image_webp::ColorType::Rgb8, &pattern(3, 3)),
    );
    put(root, "apple/.DS_Store", b"\0\0\0\x01Bud1");
    put(root, "apple/readme.txt", b"not an image");
    std::fs::create_dir_all(root.join("mango")).unwrap();
    put(root, ".DS_Store", b"\0\0\0\x01Bud1");

    let ds = Dataset::open(root).unwrap();
    assert_eq!(ds.layout(), Layout::ImageFolder);
    assert_eq!(ds.classes(), ["apple", "mango", "zebra"]);
    assert_eq!(ds.len(), 4);
    let names: Vec<String> = (0..ds.len())
        .map(|i| {
            ds.path(i)
                .unwrap()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "apple/x.webp",
            "zebra/a.png",
            "zebra/b.jpg",
            "zebra/sub/c.JPEG"
        ]
    );
    let labels: Vec<_> = (0..ds.len()).map(|i| ds.label(i)).collect();
    assert_eq!(labels, [Some(0), Some(2), Some(2), Some(2)]);
    assert_eq!(ds.label(99), None);
    assert_eq!(ds.path(99), None);
    assert_eq!(ds.ignored().len(), 3, "{:?}", ds.ignored());
    for i in 0..ds.len() {
        ds.load(i).unwrap();
    }
}

#[test]
fn flat_and_nested_folders_and_lists_are_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    put(&root, "b.jpg", &jpeg_rgb(16, 16));
    put(&root, "a.png", &png_rgb(2, 2, &pattern(2, 2)));
    put(&root, "more/c.jpg", &jpeg_rgb(16, 8));
    let ds = Dataset::open(&root).unwrap();
    assert_eq!(ds.layout(), Layout::Folder);
    assert_eq!(ds.len(), 3);
    assert!(ds.classes().is_empty());
    assert_eq!(ds.label(0), None);

    let list = put(
        dir.path(),
        "train.txt",
        b"# a comment\nphotos/b.jpg\n\n  photos/more/c.jpg  \n",
    );
    let ds = Dataset::open(&list).unwrap();
    assert_eq!(ds.layout(), Layout::List);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.path(1).unwrap(), dir.path().join("photos/more/c.jpg"));
    assert_eq!(ds.load(1).unwrap().width(), 16);
}

#[test]
fn empty_or_missing_datasets_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("empty_class")).unwrap();
    put(dir.path(), ".DS_Store", b"x");
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Dataset { .. }), "{err:?}");
    assert!(err.to_string().contains("no images"));
    let err = Dataset::open(dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, DataError::Unreadable { .. }));
    assert!(err.to_string().contains("nope"));
}

#[test]
fn check_data_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let good = jpeg_rgb(64, 48);
    put(root, "cat/ok1.jpg", &good);
    put(root, "cat/ok2.JPEG", &png_rgb(8, 8, &pattern(8, 8)));
    put(root, "cat/cut.jpg", &good[..good.len() * 6 / 10]);
    put(root, "dog/ok.jpg", &jpeg_rgb(4000, 10));
    put(root, "dog/zero.jpg", b"");
    put(root, "dog/fake.png", b"hello");
    put(root, "dog/.DS_Store", b"\0\0\0\x01Bud1");
    std::fs::create_dir_all(root.join("empty")).unwrap();

    let report = check_data(root);
    assert!(!report.is_clean());
    assert_eq!(report.layout, Some(Layout::ImageFolder));
    assert_eq!((report.images, report.decoded), (6, 3));
    let mut problems: Vec<String> = report
        .problems
        .iter()
        .map(|p| p.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    problems.sort();
    assert_eq!(problems, ["cut.jpg", "empty", "fake.png", "zero.jpg"]);
    let counts: Vec<(&str, usize, usize)> = report
        .classes
        .iter()
        .map(|c| (c.name.as_str(), c.images, c.bad))
        .collect();
    assert_eq!(counts, [("cat", 3, 1), ("dog", 3, 2), ("empty", 0, 0)]);
    assert_eq!(report.min_size, Some((8, 8)));
    assert_eq!(report.max_size, Some((4000, 48)));
    assert_eq!(report.ignored.len(), 1);
    let text = report.to_string();
    for needle in [
        "cut.jpg: truncated JPEG",
        "zero.jpg: empty file",
        "fake.png: not an image",
        "holds no images",
        ".DS_Store",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The report serialises for machine consumption.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["problems"].as_array().unwrap().len(), 4);

    let unopenable = check_data(root.join("missing"));
    assert_eq!(unopenable.layout, None);
    assert_eq!(unopenable.problems.len(), 1);
}

#[test]
fn a_single_image_or_a_binary_file_is_not_taken_for_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let img = put(dir.path(), "photo.jpg", &jpeg_rgb(8, 8));
    let err = Dataset::open(&img).unwrap_err().to_string();
    assert!(
        err.contains("photo.jpg") && err.contains("a single image"),
        "{err}"
    );
    let bin = put(dir.path(), "weights.bin", &[0xff, 0xfe, 0x00, 0x80]);
    let err = Dataset::open(&bin).unwrap_err().to_string();
    assert!(
        err.contains("weights.bin") && err.contains("not a text file"),
        "{err}"
    );
}

/// A FIFO named like an image would block `check_data` forever if it were opened.
#[cfg(unix)]
#[test]
fn files_that_are_not_regular_are_named_and_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "a.jpg", &jpeg_rgb(8, 8));
    let fifo = dir.path().join("b.jpg");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipping: mkfifo is not available");
        return;
    }
    let report = check_data(dir.path());
    assert_eq!((report.images, report.decoded), (2, 1));
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].path, fifo);
    assert!(
        report.problems[0].reason.contains("not a regular file"),
        "{}",
        report.problems[0].reason
    );
}
