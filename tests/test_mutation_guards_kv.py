"""KV-Edit behaviour that mutation testing found unguarded (issue 14).

``attn_scale`` is an additive logit bias on the cached background keys, i.e. a log-weight:
attending to every cached key with bias ``ln 2`` is the same attention as attending to every
cached key twice with no bias. These tests run the whole FLUX model path (KVEditSampler,
KVEditInversionFree) rather than the bias helper alone.
"""
import dataclasses
import math

import pytest
import torch

import tiny_models as tm
from precise_edit.kernels.kv_store import KVStore
from precise_edit.kernels.token_mask import build_token_masks
from precise_edit.nodes.kv_edit.nodes import KVEditInversionFree, KVEditSampler, KVInvert

H, W = 64, 96


@pytest.fixture(scope="module")
def record(flux):
    latent = {"samples": torch.randn(1, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(1))}
    rec = KVInvert.execute(flux, latent, _mask(), _cond("a cat", 1.5), 4, mask_guided=False, storage="fp32",
                           cache_device="cpu").args[0]
    return latent, rec


def _mask():
    m = torch.zeros(1, H, W)
    m[0, 16:48, 24:72] = 1.0
    return m


def _cond(text, guidance):
    return tm.stub_conditioning("flux", text, guidance=guidance)


class _Twice:
    """A record store whose every entry holds each cached key/value twice."""

    def __init__(self, store: KVStore):
        self.store = store

    def __getattr__(self, name):  # everything but get(): the real store
        return getattr(self.store, name)

    def get(self, step, block, device, dtype):
        k, v = self.store.get(step, block, device, dtype)
        return torch.cat((k, k), dim=2), torch.cat((v, v), dim=2)


def _edit(flux, rec, attn_scale):
    return KVEditSampler.execute(flux, rec, _cond("a dog", 5.5), seed=0, skip_steps=1, reinit=False,
                                 attn_scale=attn_scale, mode="paper").args[0]["samples"]


def test_attn_scale_is_a_log_weight_on_the_background_keys(flux, record):
    latent, rec = record
    fg = rec.latent_mask[:, None].expand_as(latent["samples"])
    plain = _edit(flux, rec, 0.0)
    scaled = _edit(flux, rec, math.log(2.0))
    doubled = _edit(flux, dataclasses.replace(rec, store=_Twice(rec.store)), 0.0)
    # Background bit-exact whatever the scale; the foreground moves with it.
    for out in (plain, scaled, doubled):
        assert torch.equal(out[~fg], latent["samples"][~fg])
    change = (scaled[fg] - plain[fg]).abs().max().item()
    assert change > 1e-3
    # ln 2 on every cached column == every cached key/value attended twice.
    assert (scaled[fg] - doubled[fg]).abs().max().item() < change / 100


def test_negative_attn_scale_fades_the_background_keys_out(flux, record):
    """A very negative scale leaves the background keys almost no weight: the result
    approaches the edit whose cache is empty (foreground attends to text and itself)."""
    latent, rec = record
    fg = rec.latent_mask[:, None].expand_as(latent["samples"])

    class _Empty(_Twice):
        def get(self, step, block, device, dtype):
            k, v = self.store.get(step, block, device, dtype)
            return k[:, :, :0], v[:, :, :0]

    alone = _edit(flux, dataclasses.replace(rec, store=_Empty(rec.store)), 0.0)
    faded = _edit(flux, rec, -10.0)
    plain = _edit(flux, rec, 0.0)
    far = (plain[fg] - alone[fg]).abs().max().item()
    assert far > 1e-3
    assert (faded[fg] - alone[fg]).abs().max().item() < far / 20


def test_inversion_free_applies_attn_scale(flux, record):
    latent, _ = record
    outs = [KVEditInversionFree.execute(flux, latent, _mask(), _cond("a cat", 1.5), _cond("a dog", 5.5), 3, 1, 0,
                                        scale, "fp32").args[0]["samples"] for scale in (0.0, 2.0)]
    m = build_token_masks(_mask(), latent["samples"].shape[-2:], 2).latent[:, None].expand_as(outs[0])
    for out in outs:
        assert torch.equal(out[~m], latent["samples"][~m])
    assert (outs[0][m] - outs[1][m]).abs().max().item() > 1e-3
