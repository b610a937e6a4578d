"""The CIM network and training step in PyTorch + timm, built from SPEC.md alone.

Shared by the parity check (step_parity.py) and the speed baseline (step_bench.py). The
encoder uses timm's own ViT `Block` and `PatchEmbed`-equivalent conv, so the names and
numerics are timm's; the correlation decoder (S4) is written here because timm has no
cross-attention block, with its two Figure 4 options selected by the config's
`correlation` ("attention" | "conv") and `predictor` ("conv1x1" | "deconv") keys, as
cim-rs defines them (cim_spec::config::Correlation and Predictor). Tensor names follow
SPEC S12, so a cim-rs step dump loads with a plain `load_state_dict`.
"""

import math
import warnings
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block, Mlp

# conv2d(padding="same") warns that an even kernel (the 4 x 4 exemplar grid) needs a
# padded copy of the input; that is the definition the correlation option uses.
warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")


def resize_pos(pos, g0, g):
    """S3: bicubic resize of a [1, 1+g0^2, D] table to g x g with scale (g+0.1)/g0
    (the table as it is at g0 itself, as timm uses it at its native resolution)."""
    if g == g0:
        return pos
    cls, grid = pos[:, :1], pos[:, 1:]
    d = grid.shape[-1]
    grid = grid.reshape(1, g0, g0, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(g + 0.1) / g0, mode="bicubic", align_corners=False)
    assert grid.shape[-1] == g, grid.shape
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, g * g, d)], dim=1)


class CrossAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, t, sdpa=False):
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        kv = self.kv(t).reshape(b, t.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        if sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
            o = a.softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class CrossBlock(nn.Module):
    """S4: x += Proj(MHA(q=LN1(x), k=v=LN1(t))); x += MLP(LN2(x))."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x, t, sdpa=False):
        x = x + self.attn(self.norm1(x), self.norm1(t), sdpa)
        return x + self.mlp(self.norm2(x))


class XCorr(nn.Module):
    """S4 "conv" correlation option (Figure 4), SiamFC-style: each map's exemplar patch
    features are per-channel kernels slid over its context patch features (depthwise
    cross-correlation, 'same' zero padding as conv2d's padding="same", sum scaled by
    1/n' = 1/sqrt(n'^2)); the class token's row is zero; then the output projection."""

    def __init__(self, dim, grid, kernel):
        super().__init__()
        self.grid, self.kernel = grid, kernel
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, t):
        n, _, d = x.shape
        g, k = self.grid, self.kernel
        maps = x[:, 1:].transpose(1, 2).reshape(1, n * d, g, g)
        kernels = t[:, 1:].transpose(1, 2).reshape(n * d, 1, k, k)
        o = F.conv2d(maps, kernels, padding="same", groups=n * d) / k
        o = o.reshape(n, d, g * g).transpose(1, 2)
        return self.proj(torch.cat([torch.zeros_like(x[:, :1]), o], dim=1))


class XCorrBlock(nn.Module):
    """S4 conv option: x += Proj(XCorr(LN1(x), LN1(t))); x += MLP(LN2(x))."""

    def __init__(self, dim, mlp_ratio, grid, kernel):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.corr = XCorr(dim, grid, kernel)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x, t, sdpa=False):
        x = x + self.corr(self.norm1(x), self.norm1(t))
        return x + self.mlp(self.norm2(x))


class Holder(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        for k, v in kw.items():
            setattr(self, k, v)


class Cim(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, p, depth = c["dim"], c["patch"], c["depth"]
        w = c["decoder_width"]
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.g0 = c["pos_embed_size"] // p
        self.gc = c["context_size"] // p
        self.gz = c["exemplar_size"] // p
        self.k = c["exemplars"]
        self.channels = 2 if c["loss"] == "softmax_ce" else 1
        mk_blocks = lambda: nn.ModuleList(
            [Block(d, c["heads"], c["mlp_ratio"], qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", torch.zeros(1, 1 + self.g0**2, d))
        self.patch_embed = Holder(proj=nn.Conv2d(3, d, p, p))
        self.blocks = mk_blocks()
        self.norm = norm(d)
        self.patch_embed_c = Holder(proj=nn.Conv2d(3, d, p, p))
        self.blocks_c = mk_blocks()
        self.norm_c = norm(d)
        for prm in list(self.patch_embed_c.parameters()) + list(self.blocks_c.parameters()) + list(self.norm_c.parameters()):
            prm.requires_grad_(False)
        if c["frozen_patch_embed"]:
            for prm in self.patch_embed.parameters():
                prm.requires_grad_(False)
        self.decoder_embed = nn.Linear(d, w)
        self.register_buffer("decoder_pos_embed", torch.zeros(1, 1 + self.gc**2, w))
        # S4 options (Figure 4); a config without the keys is the paper's decoder.
        correlation = c.get("correlation", "attention")
        predictor = c.get("predictor", "conv1x1")
        if correlation == "attention":
            mk_block = lambda: CrossBlock(w, c["decoder_heads"], c["mlp_ratio"])
        elif correlation == "conv":
            mk_block = lambda: XCorrBlock(w, c["mlp_ratio"], self.gc, self.gz)
        else:
            raise ValueError(f"unknown correlation {correlation!r}")
        blocks = [mk_block() for _ in range(c["decoder_depth"])]
        self.decoder_corr_block = Holder(block=blocks[0], **{f"block{i}": b for i, b in enumerate(blocks) if i > 0})
        self.dec_blocks = blocks
        self.decoder_norm = norm(w)
        if predictor == "conv1x1":
            self.decoder_pred_mask = nn.Sequential(nn.Conv2d(w, self.channels, 1))
        elif predictor == "deconv":
            # Doubles the g x g map before the bilinear upsampling; weight [w, C, 4, 4].
            self.decoder_pred_mask = nn.Sequential(nn.ConvTranspose2d(w, self.channels, 4, 2, 1))
        else:
            raise ValueError(f"unknown predictor {predictor!r}")

    def encode(self, x, pe, blocks, norm, g):
        x = pe.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_pos(self.pos_embed, self.g0, g)
        for b in blocks:
            x = b(x)
        return norm(x)

    def forward(self, context, exemplars, sdpa=False):
        b = context.shape[0]
        hz = self.encode(exemplars.flatten(0, 1), self.patch_embed, self.blocks, self.norm, self.gz)
        with torch.no_grad():
            hc = self.encode(context, self.patch_embed_c, self.blocks_c, self.norm_c, self.gc)
        x = self.decoder_embed(hc) + self.decoder_pos_embed
        x = x.repeat_interleave(self.k, dim=0)
        t = self.decoder_embed(hz)
        for blk in self.dec_blocks:
            x = blk(x, t, sdpa)
        x = self.decoder_norm(x)[:, 1:]
        w = x.shape[-1]
        x = x.transpose(1, 2).reshape(-1, w, self.gc, self.gc)
        logits = self.decoder_pred_mask(x)
        m = self.c["context_size"]
        logits = F.interpolate(logits, size=(m, m), mode="bilinear", align_corners=True)
        return logits.reshape(b, self.k, self.channels, m, m)

    def loss(self, logits, masks):
        """S5: per-map mean over pixels, mean over the batch, sum over the K exemplars."""
        b, k = masks.shape[:2]
        kind = self.c["loss"]
        if kind == "softmax_ce":
            per_map = F.cross_entropy(logits.flatten(0, 1), masks.flatten(0, 1).long(), reduction="none")
        else:
            z, y = logits[:, :, 0].flatten(0, 1), masks.flatten(0, 1)
            if kind == "bce":
                per_map = F.binary_cross_entropy_with_logits(z, y, reduction="none")
            elif kind == "balanced_bce":
                pos = y.mean(dim=(1, 2), keepdim=True)
                wgt = torch.where(y > 0.5, 1 - pos, pos)
                per_map = wgt * F.binary_cross_entropy_with_logits(z, y, reduction="none")
            elif kind == "mse":
                per_map = (torch.sigmoid(z) - y) ** 2
            else:
                s = torch.sigmoid(z)
                pt = torch.where(y > 0.5, s, 1 - s)
                at = torch.where(y > 0.5, 0.25, 0.75)
                per_map = -at * (1 - pt) ** 2 * torch.log(pt)
        return per_map.mean(dim=(-2, -1)).sum() / b

    def param_groups(self, weight_decay):
        """S6: no decay for 1-D tensors and biases (timm's rule)."""
        decay, no_decay = [], []
        for name, prm in self.named_parameters():
            if not prm.requires_grad:
                continue
            (no_decay if prm.ndim <= 1 or name.endswith(".bias") else decay).append(prm)
        return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]

    @torch.no_grad()
    def ema(self, m):
        """S7: target = m * target + (1 - m) * online, after the optimizer step."""
        pairs = [(self.patch_embed, self.patch_embed_c), (self.blocks, self.blocks_c), (self.norm, self.norm_c)]
        for online, target in pairs:
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po, alpha=1 - m)
