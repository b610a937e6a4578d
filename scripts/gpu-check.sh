#!/usr/bin/env bash
# The whole GPU check, from prebuilt binaries (scripts/gpu-bundle.sh), on a machine with
# CUDA 13, PyTorch and no Rust toolchain. Run from the repository root. The device tool
# brings back at most 8 files from $OUT (default: gpu-results/), so every part writes into
# a scratch folder ($WORK, default a fresh one under /tmp) and $OUT receives three files:
# summary.json (what passed, with every bench's numbers), logs.tar.gz (every part's log and
# JSON, the pretrain's metrics and pictures; no checkpoints) and nvidia-smi.txt. It checks:
#   1. the conformance suite and whole micro steps on the GPU, with f32 GEMMs, with bf16
#      mixed-precision GEMMs and with TF32 tensor-core GEMMs (both under the bf16 tolerance
#      column), CIM_REQUIRE_GPU=1;
#   2. `cim-cuda selftest` (the preflight alone), as JSON; the on-device pair renderer
#      against cim-data's CPU renderer; a one-rank NCCL communicator summing gradient
#      buckets during the backward (status skipped_no_libnccl where libnccl is missing);
#   3. a short `cim-cuda pretrain` of the demo recipe on data/photos: the loss must fall;
#   4. the benchmark: our ViT-B/16 CIM step (f32, bf16, bf16-fused and TF32 GEMMs: `bf16`
#      converts each operand in a kernel of ours, `bf16-fused` leaves that to cuBLAS's
#      FAST_16BF compute type; whichever is faster should become the default; and bf16 with
#      CIM_CUDA_EPILOGUES=1, the linear layers' bias add and bias gradient inside cuBLASLt
#      GEMMs, whose conformance is checked too), and the same step in PyTorch on the same card,
#      the release's way (f32 eager) and the strongest way (bf16 autocast, SDPA,
#      torch.compile): images/s and MFU against the dense bf16 peak; our bench also profiles
#      one step op by op (`--breakdown`: time, share and TFLOP/s per op and GEMM shape).
# Each part runs under its own time limit, cut to what is left of the whole run's budget
# ($BUDGET_S seconds, default 540, so the run fits one 10-minute device call with room to
# spare; a part with under 20 s left is skipped as out_of_time), and the script goes on
# after a failure, so one run reports everything. `--dry-run` runs the same plumbing on the
# host emulator with tiny sizes (no GPU needed; used to test this script). ONLY='regex'
# runs just the parts whose names match (e.g. ONLY='conformance_tf32|bench_cim_bf16.*' to
# finish in a second device call what the budget cut from the first; the benches' FLOPs
# come from bench_cim, so select it with any PyTorch bench).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
WORK="${WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}"
: "${WORK:?no scratch folder (mktemp failed)}"
mkdir -p "$WORK"
BUNDLE="${BUNDLE:-gpu-bundle}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
BUDGET_S="${BUDGET_S:-540}"
dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1

# CUDA libraries by soname (GPU.md): cuBLAS and NVRTC 13 from the toolkit or from PyTorch's
# wheels; NCCL only as libnccl.so.2 inside the wheels, so a symlink under the name cudarc
# looks for.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
libdir="$WORK/lib"
mkdir -p "$libdir"
# The CUDA 13 wheel's first (nvidia/cu13/lib, beside the cuBLAS we load), then the older
# layout (nvidia/nccl/lib), then wherever the wheels put one.
nccl=
for candidate in "$site/nvidia/cu13/lib/libnccl.so.2" "$site/nvidia/nccl/lib/libnccl.so.2"; do
    [[ -n "$site" && -e "$candidate" ]] && nccl=$candidate && break
done
if [[ -z "$nccl" && -n "$site" && -d "$site/nvidia" ]]; then
    nccl=$(find "$site/nvidia" -name libnccl.so.2 2>/dev/null | head -n 1)
fi
if [[ -n "$nccl" ]]; then
    ln -sf "$nccl" "$libdir/libnccl.so"
fi
export LD_LIBRARY_PATH="$libdir:/usr/local/cuda/lib64:${site:+$site/nvidia/cu13/lib:}${LD_LIBRARY_PATH:-}"

cim=("$BUNDLE/cim-cuda")
model=vit-base batch=64 steps=20 recipe=demo pretrain_steps=60
if ((dry_run)); then
    export CIM_CUDA_EMULATE=1
    model=micro batch=2 steps=2 recipe=micro pretrain_steps=4
fi

declare -A status
part() { # name timeout command...
    local name=$1 limit=$2
    shift 2
    if [[ -n "${ONLY:-}" && ! "$name" =~ ^(${ONLY})$ ]]; then
        status[$name]=not_selected
        return
    fi
    local left=$((BUDGET_S - SECONDS))
    if ((left < 20)); then
        status[$name]=out_of_time
        echo "== $name: skipped, ${left} s of the ${BUDGET_S} s budget left" >&2
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit $limit s)" >&2
    local start=$SECONDS
    # -k: a part that ignores SIGTERM (pretrain checkpoints first) or hangs in the driver
    # is killed 15 s later, so the run always reaches its summary.
    timeout -k 15 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    status[$name]=$rc
    echo "   rc $rc in $((SECONDS - start)) s (log $WORK/$name.log)" >&2
    tail -n 3 "$WORK/$name.log" >&2
}

# Straight into $OUT: it comes back even if the run is killed before its summary.
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"

# Most telling first, each under a limit, so the whole run fits one device call (10 min)
# and a part that overruns costs only itself.
conformance() { # name CIM_CUDA_GEMM [CIM_CUDA_EPILOGUES]
    if ((dry_run)); then
        status[$1]=skipped
    else
        part "$1" 150 env CIM_REQUIRE_GPU=1 CIM_CUDA_GEMM="$2" CIM_CUDA_EPILOGUES="${3:-0}" \
            "$BUNDLE/gpu-conformance" --test-threads 1
    fi
}
bench_cim() { # name CIM_CUDA_GEMM json [CIM_CUDA_EPILOGUES]
    part "$1" 90 env CIM_CUDA_GEMM="$2" CIM_CUDA_EPILOGUES="${4:-0}" "${cim[@]}" bench \
        --model "$model" --batch "$batch" --steps "$steps" --peak-tflops "$PEAK_TFLOPS" \
        --breakdown --json "$WORK/$3"
}
conformance conformance_f32 f32
conformance conformance_bf16 bf16
bench_cim bench_cim f32 bench-cim.json
bench_cim bench_cim_bf16 bf16 bench-cim-bf16.json
bench_cim bench_cim_bf16_epilogues bf16 bench-cim-bf16-epilogues.json 1
bench_cim bench_cim_bf16_fused bf16-fused bench-cim-bf16-fused.json
bench_cim bench_cim_tf32 tf32 bench-cim-tf32.json
flops=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1]))["flops_per_image"]; print(sum(f.values()))' \
    "$WORK/bench-cim.json" 2>/dev/null || echo 0)
torch_device=cuda
((dry_run)) && torch_device=cpu
torch_bench() { # mode amp limit
    part "bench_torch_$1_$2" "$3" python3 benches/pytorch/step_bench.py --device "$torch_device" \
        --model "$model" --batch "$batch" --steps "$steps" --mode "$1" --amp "$2" \
        --flops-per-image "$flops" --peak-tflops "$PEAK_TFLOPS"
}
torch_bench eager none 90
part pretrain 120 "${cim[@]}" pretrain --recipe "$recipe" --data data/photos --out "$WORK/run" \
    --max-steps "$pretrain_steps" --no-progress --set optim.warmup_epochs=0
part selftest 60 "${cim[@]}" selftest --json "$WORK/selftest.json"
((dry_run)) || part render 60 env CIM_REQUIRE_GPU=1 "$BUNDLE/gpu-render" gpu_renders_like_the_cpu
# One GPU allows one NCCL rank only (NCCL refuses two on a card): the communicator's
# plumbing, not a multi-GPU run.
if ((!dry_run)); then
    part nccl 60 env CIM_REQUIRE_GPU=1 "$BUNDLE/gpu-nccl" --nocapture
    if [[ "${status[nccl]}" == 0 ]] && grep -q "^skipped: libnccl" "$WORK/nccl.log"; then
        status[nccl]=skipped_no_libnccl
        echo "   nccl: skipped, libnccl.so is not on LD_LIBRARY_PATH (see nccl.log)" >&2
    fi
fi
conformance conformance_bf16_epilogues bf16 1
# torch.compile takes a minute even for the micro model on a CPU: not in the dry run.
((dry_run)) || torch_bench compile bf16 200
conformance conformance_bf16_fused bf16-fused
conformance conformance_tf32 tf32

python3 - "$WORK" "$(declare -p status)" <<'PY'
import json, os, re, sys
out = sys.argv[1]
status = dict(re.findall(r'\[(\w+)\]="?([^" ]*)"?', sys.argv[2]))
summary = {"status": status}
errors = summary["summary_errors"] = []
def guarded(what, f):
    """f(), or None with the failure recorded: one unreadable file must not cost the rest."""
    try:
        return f()
    except Exception as e:
        errors.append(f"{what}: {type(e).__name__}: {e}")
        return None
def load(name):
    path = os.path.join(out, name)
    return guarded(name, lambda: json.load(open(path))) if os.path.exists(path) else None
def last_json_line(path):
    for line in reversed(open(path).readlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None
summary["bench_cim"] = load("bench-cim.json")
summary["bench_cim_bf16"] = load("bench-cim-bf16.json")
summary["bench_cim_bf16_epilogues"] = load("bench-cim-bf16-epilogues.json")
summary["bench_cim_bf16_fused"] = load("bench-cim-bf16-fused.json")
summary["bench_cim_tf32"] = load("bench-cim-tf32.json")
for name in ("bench_torch_eager_none", "bench_torch_compile_bf16"):
    log = os.path.join(out, name + ".log")
    summary[name] = guarded(name, lambda: last_json_line(log)) if os.path.exists(log) else None
metrics = os.path.join(out, "run", "metrics.jsonl")
if os.path.exists(metrics):
    losses = guarded("metrics.jsonl", lambda: [
        json.loads(l)["loss"] for l in open(metrics) if '"loss"' in l]) or []
    if losses:
        k = max(1, len(losses) // 5)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        summary["pretrain"] = {"steps": len(losses), "loss_first_fifth": first,
                               "loss_last_fifth": last, "loss_fell": last < first}
for ours in ("bench_cim", "bench_cim_bf16", "bench_cim_bf16_epilogues", "bench_cim_bf16_fused",
             "bench_cim_tf32"):
    cim = summary[ours] or {}
    for name in ("bench_torch_eager_none", "bench_torch_compile_bf16"):
        t = summary[name]
        if cim.get("images_per_s") and t and t.get("images_per_s"):
            key = f"speedup_{ours[len('bench_'):]}_vs_torch_{name[len('bench_torch_'):]}"
            summary[key] = cim["images_per_s"] / t["images_per_s"]
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
# What comes back: the summary, the nvidia-smi report (already there), and everything else
# packed in one archive (the checkpoints and the library links stay behind; a log over
# 2 MiB keeps its last 2 MiB, so the archive stays far below the 16 MiB a file may have).
cp "$WORK/summary.json" "$OUT/"
for log in "$WORK"/*.log; do
    [[ -f "$log" ]] && (($(stat -c %s "$log") > 2097152)) && tail -c 2097152 "$log" >"$log.tail" && mv "$log.tail" "$log"
done
tar czf "$OUT/logs.tar.gz" -C "$WORK" --exclude=./lib --exclude=./run/checkpoints .
