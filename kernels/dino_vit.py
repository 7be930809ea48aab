"""DINO ViT (facebookresearch/dino's architecture) from its checkpoint tensors, for the structure
distance: the keys of one block's self-attention, nothing else.

PIE-Bench measures structure with ``dino_vitb8`` loaded through torch.hub; the same checkpoint
file (``dino_vitbase8_pretrain.pth``, keys ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``) loads here without conversion.
Pure torch; the width, depth and patch size are read from the tensors, heads are width / 64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DinoViT:
    def __init__(self, state_dict: dict, heads: int | None = None, eps: float = 1e-6):
        sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state_dict.items()}
        missing = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight") if k not in sd]
        if missing:
            raise ValueError(f"not a DINO ViT checkpoint (no {', '.join(missing)})")
        self.sd = {k: v.float() for k, v in sd.items()}
        self.dim = self.sd["cls_token"].shape[-1]
        self.patch = self.sd["patch_embed.proj.weight"].shape[-1]
        self.depth = 1 + max(int(k.split(".")[1]) for k in self.sd if k.startswith("blocks."))
        self.heads = heads or max(1, self.dim // 64)
        self.eps = eps

    def to(self, device) -> "DinoViT":
        self.sd = {k: v.to(device) for k, v in self.sd.items()}
        return self

    def _ln(self, x, name):
        return F.layer_norm(x, (self.dim,), self.sd[name + ".weight"], self.sd[name + ".bias"], self.eps)

    def _lin(self, x, name):
        return F.linear(x, self.sd[name + ".weight"], self.sd.get(name + ".bias"))

    def _pos_embed(self, h0: int, w0: int) -> torch.Tensor:
        pos = self.sd["pos_embed"]
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        if n == h0 * w0 and h0 == w0:
            return pos
        grid = pos[:, 1:].reshape(1, side, side, self.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, self.dim)], dim=1)

    def _attention(self, x, i):
        b, t, d = x.shape
        qkv = self._lin(x, f"blocks.{i}.attn.qkv").reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self._lin((attn @ v).transpose(1, 2).reshape(b, t, d), f"blocks.{i}.attn.proj")

    @torch.no_grad()
    def keys(self, pixels: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Keys ``[B, T, D]`` (heads concatenated, class token first) of block ``layer``'s
        attention for normalised pixels ``[B, 3, H, W]``."""
        layer = layer % self.depth
        x = F.conv2d(pixels.float(), self.sd["patch_embed.proj.weight"], self.sd["patch_embed.proj.bias"],
                     stride=self.patch)
        b, _, h0, w0 = x.shape
        x = torch.cat([self.sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self._pos_embed(h0, w0)
        for i in range(layer):
            x = x + self._attention(self._ln(x, f"blocks.{i}.norm1"), i)
            x = x + self._lin(F.gelu(self._lin(self._ln(x, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.fc1")),
                              f"blocks.{i}.mlp.fc2")
        qkv = self._lin(self._ln(x, f"blocks.{layer}.norm1"), f"blocks.{layer}.attn.qkv")
        return qkv[..., self.dim: 2 * self.dim]
