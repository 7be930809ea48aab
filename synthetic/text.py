"""The text side of the synthetic models: caption or instruction words -> conditioning.

A text is cut into phrases (at "and", "on", and before "into"/"to"); each phrase becomes one
token, the normalised sum of fixed per-word vectors (articles dropped), so a phrase binds its
colour, shape and place ("a red circle at the top left") the way the small models were trained.
Every text gives ``TOKENS`` tokens (padded with the "<pad>" vector) and a pooled vector.
"""
from __future__ import annotations

import re
import zlib

import torch

DIM = 64          # context width of the synthetic FLUX models
POOLED = 32       # width of the pooled vector (FLUX ``vec_in_dim``)
TOKENS = 4        # three objects and a background at most
_DROP = {"a", "an", "the"}
_SPLIT = re.compile(r"\s+(?:and|on)\s+|\s+(?=(?:into|to)\s)")


def word_vector(word: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(word.encode()))
    return torch.randn(DIM, generator=gen)


def phrases(text: str) -> list[str]:
    text = re.sub(r"[^a-z ]", " ", text.lower())
    return [p.strip() for p in _SPLIT.split(" ".join(text.split())) if p.strip()]


def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(TOKENS, DIM) context and (POOLED,) pooled vector of a caption or instruction."""
    toks = []
    for p in phrases(text)[:TOKENS]:
        words = [w for w in p.split() if w not in _DROP]
        if words:
            toks.append(torch.stack([word_vector(w) for w in words]).sum(0) / len(words) ** 0.5)
    toks += [word_vector("<pad>")] * (TOKENS - len(toks))
    ctx = torch.stack(toks)
    return ctx, ctx.mean(0)[:POOLED]


def encode_batch(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [encode(t) for t in texts]
    return torch.stack([c for c, _ in pairs]), torch.stack([p for _, p in pairs])
