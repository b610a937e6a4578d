"""Loads a `cim-cpu export` folder into timm and compares its features with ours.

    python3 benches/pytorch/export_check.py EXPORT_DIR

For a timm preset shape the model comes from `timm.create_model(arch, pretrained=True,
pretrained_cfg_overlay=dict(file=...), num_classes=0, global_pool="avg", fc_norm=False)`,
exactly how a user fine-tunes it; for other shapes (the micro test model) from timm's
VisionTransformer with the recorded kwargs and a strict load_state_dict. The features of
check.safetensors' images must match ours within 1e-4 normwise (f32, a 12-block encoder).
"""

import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer


def main():
    out = Path(sys.argv[1])
    cfg = json.loads((out / "config.json").read_text())
    kw = dict(cfg["timm_kwargs"])
    weights = out / "model.safetensors"
    if cfg["architecture"]:
        model = timm.create_model(
            cfg["architecture"],
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(weights)),
            num_classes=0,
            global_pool="avg",
            fc_norm=False,
        )
        how = f"timm.create_model({cfg['architecture']!r}, pretrained_cfg_overlay=file)"
    else:
        model = VisionTransformer(**kw)
        model.load_state_dict(load_file(weights), strict=True)
        how = "VisionTransformer(**timm_kwargs) + strict load_state_dict"
    ours = set(load_file(weights))
    theirs = set(model.state_dict())
    assert ours == theirs, f"keys differ: only ours {sorted(ours - theirs)}, only timm {sorted(theirs - ours)}"
    model.eval()
    check = load_file(out / "check.safetensors")
    with torch.no_grad():
        feats = model(check["images"])
    ref = check["features"]
    err = ((feats - ref).abs().max() / ref.abs().max()).item()
    print(f"{how}: keys and shapes identical ({len(ours)} tensors); encoder {cfg['encoder']}; "
          f"features normwise relative difference {err:.3e} (limit 1e-4)")
    sys.exit(0 if err <= 1e-4 else 1)


if __name__ == "__main__":
    main()
