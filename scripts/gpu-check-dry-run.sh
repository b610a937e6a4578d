#!/usr/bin/env bash
# Runs scripts/gpu-check.sh on the host emulator at tiny sizes (no GPU), so its plumbing
# (library paths, every part's command line, the summary) is tested on every push: the
# selftest, the short pretrain and our bench (f32 GEMMs, both bf16 modes, and bf16 with
# fused bias epilogues, on backends that say so) must succeed, and the loss and the bench's
# per-op breakdown must be reported. What the device tool would bring back ($OUT) must be
# the summary, the logs' archive and the nvidia-smi report alone (it returns 8 files at most).
# The PyTorch parts run only where torch is installed, and are not required here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-sample-data.sh >/dev/null
cargo build --release -p cim-cuda --bin cim-cuda
out=target/gpu-check-dry-run
rm -rf "$out"
OUT="$out/out" WORK="$out/work" BUNDLE="${CARGO_TARGET_DIR:-target}/release" \
    scripts/gpu-check.sh --dry-run >/dev/null
python3 - "$out/out" <<'PY'
import json, os, sys, tarfile
returned = sorted(os.listdir(sys.argv[1]))
assert returned == ["logs.tar.gz", "nvidia-smi.txt", "summary.json"], \
    f"gpu-check dry run: $OUT holds {returned}, not the three files the device tool brings back"
for name in returned:
    size = os.path.getsize(os.path.join(sys.argv[1], name))
    assert size < 16 << 20, f"gpu-check dry run: {name} is {size} bytes, over the 16 MiB a file may have"
logs = tarfile.open(os.path.join(sys.argv[1], "logs.tar.gz")).getnames()
assert "./pretrain.log" in logs and "./run/metrics.jsonl" in logs, f"gpu-check dry run: logs.tar.gz holds {logs}"
s = json.load(open(os.path.join(sys.argv[1], "summary.json")))
assert not s.get("summary_errors"), f"gpu-check dry run: the summary could not read {s['summary_errors']}"
required = ("selftest", "pretrain", "bench_cim", "bench_cim_bf16", "bench_cim_bf16_fused",
            "bench_cim_bf16_epilogues")
bad = {k: v for k, v in s["status"].items() if k in required and v != "0"}
bad.update({k: "did not run" for k in required if k not in s["status"]})
assert not bad, f"gpu-check dry run: parts failed: {bad} (logs in {sys.argv[1]}/logs.tar.gz)"
assert s.get("pretrain", {}).get("steps", 0) > 0, "gpu-check dry run: no pretrain loss reported"
assert (s.get("bench_cim") or {}).get("images_per_s", 0) > 0, "gpu-check dry run: no bench result"
assert (s.get("bench_cim") or {}).get("breakdown"), "gpu-check dry run: no bench breakdown"
for part, mode in (("bench_cim_bf16", "bf16"), ("bench_cim_bf16_fused", "bf16-fused"),
                   ("bench_cim_bf16_epilogues", "bf16+epilogues")):
    r = s.get(part) or {}
    assert r.get("images_per_s", 0) > 0, f"gpu-check dry run: no {mode} bench result"
    assert r.get("backend", "").endswith(mode), f"gpu-check dry run: the {mode} bench ran on {r.get('backend')!r}"
print("gpu-check dry run: selftest, pretrain and bench (f32, bf16, bf16-fused, bf16+epilogues) ran on the emulator")
PY
