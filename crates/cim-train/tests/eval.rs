//! `eval` on a labelled ImageFolder pair (train/ and val/): two colour classes that any
//! encoder separates, so a working pipeline scores far above chance; and a folder of
//! neither layout is refused by name.

use std::path::Path;

use cim_model::{Cim, EncoderChoice};
use cim_reference::Reference;
use cim_train::eval::{image_folder, knn_top1, labelled_sets};
use cim_train::recipe::Recipe;
use cim_train::trainer::{Resume, SyntheticSource, TrainOptions, pretrain};

fn write_class(dir: &Path, class: &str, colour: [u8; 3], n: u32) {
    let d = dir.join(class);
    std::fs::create_dir_all(&d).unwrap();
    for k in 0..n {
        let img = image::RgbImage::from_fn(40 + k, 36, |x, y| {
            image::Rgb([
                colour[0].saturating_add((x * 2) as u8),
                colour[1].saturating_add((y * 2) as u8),
                colour[2],
            ])
        });
        img.save(d.join(format!("{k}.png"))).unwrap();
    }
}

#[test]
fn image_folder_evaluation_separates_two_colour_classes() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "val"] {
        write_class(&dir.path().join(split), "red", [200, 20, 20], 6);
        write_class(&dir.path().join(split), "blue", [20, 20, 200], 6);
    }
    let (train, test) = labelled_sets(dir.path(), 32).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.channels, train.height),
        (12, 12, 3, 32)
    );
    assert_eq!(train.labels.iter().filter(|&&l| l == 1).count(), 6);
    let b = Reference::new();
    let r = Recipe::load("micro", &[]).unwrap();
    let model = Cim::new(&b, r.model_config().unwrap(), 1, 0).unwrap();
    let ftr = cim_train::eval::extract(&b, &model, EncoderChoice::Target, &train, 32, 4).unwrap();
    let fte = cim_train::eval::extract(&b, &model, EncoderChoice::Target, &test, 32, 4).unwrap();
    let acc = knn_top1(&ftr, &train.labels, &fte, &test.labels, 32, 5, 0.07);
    assert!(acc >= 0.9, "k-NN top-1 {acc}");
    let e = labelled_sets(&dir.path().join("train"), 32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither Fashion-MNIST"), "{e}");
    let e = image_folder(&dir.path().join("train/red"), 32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an ImageFolder"), "{e}");
    // The CLI path end to end on a trained micro run.
    let run = dir.path().join("run");
    let mut src = SyntheticSource {
        config: r.model_config().unwrap(),
        batch_size: 2,
        per_epoch: 2,
        seed: 1,
    };
    let opts = TrainOptions {
        run_dir: run.clone(),
        resume: Resume::No,
        max_steps: Some(1),
        progress: false,
    };
    pretrain(&b, &r, &mut src, &opts).unwrap();
    let cli = <cim_train::cli::Cli as clap::Parser>::parse_from([
        "cim",
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
        "--knn-k",
        "5",
        "--probe-epochs",
        "20",
        "--baseline",
    ]);
    cim_train::cli::run(&b, cli).unwrap();
}
