"""The exemplar-context pair pipeline (SPEC S2) written the way the public PyTorch release
does it, as the speed baseline of cim-data's pairs bench: PIL decode, torchvision's
RandomResizedCrop and flip for the search view, and for each exemplar a full-image PIL
rotation about the exemplar's centre followed by a resized crop, torchvision's ColorJitter,
RandomGrayscale, a PIL Gaussian blur, RandomSolarize and a flip, and the ground-truth map
from a rotated pixel mask resized to the context. One thread (torch.set_num_threads(1)).

    python3 benches/python/pairs_baseline.py --images data/imagenet-val --seconds 5

Prints one JSON line: {"pairs_per_s": ..., "pairs": ..., "cpu_seconds": ..., "wall_seconds": ..., "images": ...}.
"""

import argparse
import json
import math
import os
import random
import time

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageDraw, ImageFilter

S, M, N, K = 224, 160, 64, 6
EXEMPLAR_SCALE, EXEMPLAR_RATIO, MAX_ROT = (0.05, 0.48), (1 / 3, 3.0), 45.0
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BICUBIC = T.InterpolationMode.BICUBIC


class PilGaussianBlur:
    """MoCo v2 / BYOL style blur: PIL's GaussianBlur with radius ~ U(0.1, 2.0)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


SEARCH_VIEW = T.Compose(
    [
        T.RandomResizedCrop(S, scale=(0.5, 1.0), interpolation=BICUBIC),
        T.RandomHorizontalFlip(),
    ]
)
EXEMPLAR_PHOTOMETRIC = T.Compose(
    [
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PilGaussianBlur()], p=0.5),
        T.RandomSolarize(threshold=128, p=0.2),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ]
)
TO_TENSOR = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def exemplar_rect():
    """S2 item 4: area fraction, log-uniform shape, angle; shrink to fit; uniform centre."""
    for _ in range(10):
        r0 = random.uniform(*EXEMPLAR_SCALE)
        r1 = math.exp(random.uniform(math.log(EXEMPLAR_RATIO[0]), math.log(EXEMPLAR_RATIO[1])))
        theta = random.uniform(-MAX_ROT, MAX_ROT)
        w, h = S * math.sqrt(r0 / r1), S * math.sqrt(r0 * r1)
        c, s = abs(math.cos(math.radians(theta))), abs(math.sin(math.radians(theta)))
        ex, ey = (w * c + h * s) / 2, (w * s + h * c) / 2
        if 2 * ex <= S and 2 * ey <= S:
            break
    else:
        f = min(S / (2 * ex), S / (2 * ey))
        w, h, ex, ey = w * f, h * f, ex * f, ey * f
    return random.uniform(ex, S - ex), random.uniform(ey, S - ey), w, h, theta


def make_pair(path):
    img = Image.open(path).convert("RGB")
    search = SEARCH_VIEW(img)
    context = TO_TENSOR(F.resize(search, [M, M], interpolation=BICUBIC))
    exemplars, maps = [], []
    for _ in range(K):
        cx, cy, w, h, theta = exemplar_rect()
        # Turn the whole search view so the rectangle becomes axis-aligned, then cut it.
        upright = F.rotate(search, -theta, interpolation=T.InterpolationMode.BILINEAR, center=[cx, cy])
        top, left = int(round(cy - h / 2)), int(round(cx - w / 2))
        crop = F.resized_crop(upright, top, left, max(1, int(round(h))), max(1, int(round(w))), [N, N], interpolation=BICUBIC)
        exemplars.append(EXEMPLAR_PHOTOMETRIC(crop))
        # Ground truth: an upright box mask turned back by theta, resized to the context.
        mask = Image.new("L", (S, S), 0)
        ImageDraw.Draw(mask).rectangle([left, top, left + int(round(w)) - 1, top + int(round(h)) - 1], fill=1)
        mask = F.rotate(mask, theta, interpolation=T.InterpolationMode.NEAREST, center=[cx, cy])
        mask = F.resize(mask, [M, M], interpolation=T.InterpolationMode.NEAREST)
        maps.append(torch.from_numpy(__import__("numpy").asarray(mask, dtype="float32")))
    return context, torch.stack(exemplars), torch.stack(maps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="data/imagenet-val")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    exts = (".jpg", ".jpeg", ".png", ".webp")
    files = sorted(
        os.path.join(d, f)
        for d, _, names in os.walk(args.images)
        for f in names
        if f.lower().endswith(exts) and not f.startswith(".")
    )
    if not files:
        raise SystemExit(f"no images in {args.images}")
    for f in files[:3]:
        make_pair(f)  # warm-up
    # Rates are per second of this thread's CPU time, as the Rust bench measures them, so a
    # busy machine slows both sides alike.
    pairs, start, cpu0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < args.seconds:
        context, exemplars, maps = make_pair(files[pairs % len(files)])
        assert context.shape == (3, M, M) and exemplars.shape == (K, 3, N, N) and maps.shape == (K, M, M)
        pairs += 1
    cpu = time.thread_time() - cpu0
    wall = time.perf_counter() - start
    print(json.dumps({"pairs_per_s": pairs / cpu, "pairs": pairs, "cpu_seconds": cpu, "wall_seconds": wall, "images": len(files)}))


if __name__ == "__main__":
    main()
