//! Export for timm: the key set and shapes are exactly timm's VisionTransformer's, the
//! encoder choice is recorded, and where PyTorch and timm are installed the exported
//! file loads into timm and gives our features (benches/pytorch/export_check.py).

use std::path::Path;
use std::process::Command;

use cim_reference::Reference;
use cim_train::cli::{Cli, run};
use cim_train::recipe::Recipe;
use cim_train::tensors::TensorSet;
use cim_train::trainer::{Resume, SyntheticSource, TrainOptions, pretrain};
use clap::Parser;

/// timm's `VisionTransformer` state-dict keys for `depth` blocks with `num_classes=0`
/// (class token, no register tokens, fc_norm off), written out from timm's module layout.
fn timm_keys(depth: usize) -> Vec<String> {
    let mut k: Vec<String> = [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..depth {
        for s in [
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ] {
            k.push(format!("blocks.{i}.{s}"));
        }
    }
    k.sort();
    k
}

fn train_micro(dir: &Path) {
    let r = Recipe::load("micro", &[]).unwrap();
    let mut src = SyntheticSource {
        config: r.model_config().unwrap(),
        batch_size: 2,
        per_epoch: 2,
        seed: 1,
    };
    let opts = TrainOptions {
        run_dir: dir.to_path_buf(),
        resume: Resume::No,
        max_steps: Some(2),
        progress: false,
    };
    pretrain(&Reference::new(), &r, &mut src, &opts).unwrap();
}

#[test]
fn export_has_timms_keys_and_loads_into_timm() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    train_micro(&run_dir);
    for (encoder, name) in [("online", "online"), ("target", "target")] {
        let out = dir.path().join(format!("export-{name}"));
        let cli = Cli::parse_from([
            "cim",
            "export",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--encoder",
            encoder,
            "--out",
            out.to_str().unwrap(),
        ]);
        run(&Reference::new(), cli).unwrap();
        let set = TensorSet::read(&out.join("model.safetensors")).unwrap();
        let mut names: Vec<String> = set.names().map(String::from).collect();
        names.sort();
        assert_eq!(names, timm_keys(2));
        assert_eq!(set.get("pos_embed").unwrap().0, &[1, 37, 32]);
        assert_eq!(set.get("blocks.1.attn.qkv.weight").unwrap().0, &[96, 32]);
        assert_eq!(
            set.get("patch_embed.proj.weight").unwrap().0,
            &[32, 3, 8, 8]
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["encoder"], name);
        let has_timm = Command::new("python3")
            .args(["-c", "import timm, torch, safetensors"])
            .status()
            .is_ok_and(|s| s.success());
        if !has_timm {
            eprintln!(
                "skipping the timm load check: python3 with torch, timm and safetensors is not installed"
            );
            continue;
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/pytorch/export_check.py");
        let o = Command::new("python3")
            .arg(script)
            .arg(&out)
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "timm check failed: {text}");
        eprintln!("{text}");
    }
    // Bad paths are named.
    let e = run(
        &Reference::new(),
        Cli::parse_from([
            "cim",
            "export",
            "--checkpoint",
            "/nonexistent/run",
            "--out",
            "/tmp/x",
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/run"), "{e}");
}
