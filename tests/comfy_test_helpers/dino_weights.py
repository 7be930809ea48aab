"""Seeded DINO ViT state dicts (the key layout of the released checkpoints), for the structure
distance tests."""
import torch


def tiny_dino_state(dim=128, depth=2, patch=8, grid=28, seed=3, scale=0.05, qkv_scale=None, final_norm=True):
    """Random ViT weights: LayerNorm gains ~1, everything else ``scale`` (``qkv_scale`` for the
    query/key/value projection, so attention is not uniform); ``final_norm`` adds the last norm."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=scale: scale * torch.randn(*s, generator=g)  # noqa: E731
    qkv = scale if qkv_scale is None else qkv_scale
    sd = {"cls_token": r(1, 1, dim, scale=1.0), "pos_embed": r(1, 1 + grid * grid, dim, scale=0.5),
          "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim), p + "attn.qkv.weight": r(3 * dim, dim, scale=qkv),
                   p + "attn.qkv.bias": r(3 * dim), p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
                   p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim), p + "mlp.fc1.weight": r(4 * dim, dim),
                   p + "mlp.fc1.bias": r(4 * dim), p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim)})
    if final_norm:
        sd.update({"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)})
    return sd
