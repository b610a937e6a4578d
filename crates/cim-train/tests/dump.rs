//! The step dump on the reference backend: every file and tensor is there, with the
//! shapes the issue names, and bad arguments are refused with a clear message.

use cim_reference::Reference;
use cim_train::cli::{Cli, run};
use cim_train::tensors::TensorSet;
use clap::Parser;

#[test]
fn step_dump_writes_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dump");
    let cli = Cli::parse_from([
        "cim",
        "step-dump",
        "--model",
        "micro",
        "--seed",
        "7",
        "--batch",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    run(&Reference::new(), cli).unwrap();
    let params = TensorSet::read(&out.join("params.safetensors")).unwrap();
    let after = TensorSet::read(&out.join("params_after.safetensors")).unwrap();
    let outputs = TensorSet::read(&out.join("outputs.safetensors")).unwrap();
    let inputs = TensorSet::read(&out.join("inputs.safetensors")).unwrap();
    for name in [
        "cls_token",
        "pos_embed",
        "blocks.1.attn.qkv.weight",
        "blocks_c.1.attn.qkv.weight",
        "norm_c.bias",
        "decoder_pos_embed",
        "decoder_corr_block.block.attn.kv.weight",
        "decoder_pred_mask.0.bias",
    ] {
        assert!(params.get(name).is_some(), "params lack {name}");
        assert!(after.get(name).is_some(), "params_after lack {name}");
    }
    assert_eq!(inputs.get("context").unwrap().0, &[2, 3, 32, 32]);
    assert_eq!(inputs.get("exemplars").unwrap().0, &[2, 2, 3, 16, 16]);
    assert_eq!(inputs.get("masks").unwrap().0, &[2, 2, 32, 32]);
    assert_eq!(outputs.get("logits").unwrap().0, &[2, 2, 2, 32, 32]);
    let loss = outputs.get("loss").unwrap().1[0];
    assert!(loss.is_finite() && loss > 0.0);
    assert!(outputs.get("grad.blocks.0.mlp.fc1.weight").is_some());
    assert!(
        outputs.get("grad.patch_embed.proj.weight").is_some(),
        "micro trains the patch embedding"
    );
    // AdamW moved the online weights; the target moved towards them.
    let before = params.get("blocks.0.attn.proj.weight").unwrap().1;
    let moved = after.get("blocks.0.attn.proj.weight").unwrap().1;
    assert!(before.iter().zip(moved).any(|(a, b)| a != b));
    let step: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("step.json")).unwrap()).unwrap();
    assert_eq!(step["step"], 1);
    assert_eq!(step["config"]["dim"], 32);
    assert_eq!(step["config"]["correlation"], "attention");
    assert_eq!(step["config"]["predictor"], "conv1x1");
    let masks = inputs.get("masks").unwrap().1;
    assert!(masks.iter().all(|&v| v == 0.0 || v == 1.0) && masks.contains(&1.0));
}

#[test]
fn bad_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    let err = run(
        &Reference::new(),
        Cli::parse_from(["cim", "step-dump", "--model", "vit-gigantic", "--out", &out]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown model \"vit-gigantic\""),
        "{err}"
    );
    let err = run(
        &Reference::new(),
        Cli::parse_from(["cim", "step-dump", "--batch", "0", "--out", &out]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--batch"), "{err}");
    assert!(Cli::try_parse_from(["cim", "step-dump", "--seed", "x", "--out", &out]).is_err());
    for (flag, value) in [("--correlation", "xcorr"), ("--predictor", "conv")] {
        let err = run(
            &Reference::new(),
            Cli::parse_from(["cim", "step-dump", flag, value, "--out", &out]),
        )
        .unwrap_err();
        assert!(err.to_string().contains(flag), "{err}");
    }
}

#[test]
fn step_dump_records_the_decoder_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dump");
    let cli = Cli::parse_from([
        "cim",
        "step-dump",
        "--correlation",
        "conv",
        "--predictor",
        "deconv",
        "--out",
        out.to_str().unwrap(),
    ]);
    run(&Reference::new(), cli).unwrap();
    let params = TensorSet::read(&out.join("params.safetensors")).unwrap();
    let outputs = TensorSet::read(&out.join("outputs.safetensors")).unwrap();
    // micro: decoder width 24, two logit maps, the deconvolution's 4 x 4 kernel.
    assert_eq!(
        params.get("decoder_pred_mask.0.weight").unwrap().0,
        &[24, 2, 4, 4]
    );
    assert!(
        params
            .get("decoder_corr_block.block.corr.proj.weight")
            .is_some()
    );
    assert!(
        params
            .get("decoder_corr_block.block.attn.q.weight")
            .is_none()
    );
    assert!(outputs.get("grad.decoder_pred_mask.0.weight").is_some());
    assert_eq!(outputs.get("logits").unwrap().0, &[2, 2, 2, 32, 32]);
    let step: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("step.json")).unwrap()).unwrap();
    assert_eq!(step["config"]["correlation"], "conv");
    assert_eq!(step["config"]["predictor"], "deconv");
}
