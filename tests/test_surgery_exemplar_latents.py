"""ExemplarLatentSurgery: exemplar LATENTs of the other dimensionality, and the messages a
user gets for unusable exemplars (issue 14: survivors of mutation testing of
``nodes/pixels/patch.py``). Each test runs the node's own ``surgery()`` and checks the start
latent it hands to the sampler, or the whole message."""
import pytest
import torch

import tiny_models as tm
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.pixels.patch import surgery

LH, LW = 8, 12
IH, IW = LH * 8, LW * 8
_MODELS = {}


def model_of(name):
    if name not in _MODELS:
        _MODELS[name] = tm.FIXTURES[name].model()
    return _MODELS[name]


def _region():
    """Latent rows 2..3, cols 3..5 as a pixel MASK."""
    r = torch.zeros(1, IH, IW)
    r[:, 16:32, 24:48] = 1.0
    return r


def _source(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def test_4d_exemplar_latent_lands_in_a_qwen_5d_source():
    """Qwen-Image latents are [B, C, T, h, w]; a 4-D exemplar LATENT gets its T axis."""
    S = _source((1, 16, 1, LH, LW))
    ex = torch.arange(16 * 2 * 3, dtype=torch.float32).reshape(1, 16, 2, 3) / 10
    _, latent, _ = surgery(model_of("qwen_image"), {"samples": S}, _region(), [({"samples": ex}, _region(), "stretch")])
    L = latent["samples"]
    assert L.shape == S.shape
    assert torch.equal(L[:, :, 0, 2:4, 3:6], ex)
    outside = torch.ones(LH, LW, dtype=torch.bool)
    outside[2:4, 3:6] = False
    assert torch.equal(L[0, :, 0][:, outside], S[0, :, 0][:, outside])


def test_single_frame_5d_exemplar_latent_lands_in_a_4d_source():
    """A one-frame 5-D LATENT (e.g. encoded by a video VAE) used on FLUX: its frame lands."""
    S = _source((1, 16, LH, LW))
    ex = torch.arange(16 * 2 * 3, dtype=torch.float32).reshape(1, 16, 1, 2, 3) / 10
    _, latent, _ = surgery(model_of("flux_dev"), {"samples": S}, _region(), [({"samples": ex}, _region(), "stretch")])
    L = latent["samples"]
    assert L.shape == S.shape
    assert torch.equal(L[:, :, 2:4, 3:6], ex[:, :, 0])


def test_multi_frame_5d_exemplar_on_a_4d_source_is_refused_with_the_fix():
    S = _source((1, 16, LH, LW))
    ex = torch.zeros(1, 16, 2, 2, 3)
    with pytest.raises(NodeInputError) as e:
        surgery(model_of("flux_dev"), {"samples": S}, _region(), [({"samples": ex}, _region(), "stretch")])
    assert str(e.value) == ("ExemplarLatentSurgery: exemplar_1 is a 5-D latent but the source is 4-D; "
                            "encode the exemplar with this model's VAE")


def test_non_finite_exemplars_messages_name_the_fix():
    S = _source((1, 4, LH, LW))
    ex = torch.zeros(1, 4, 2, 2)
    ex[0, 0, 0, 0] = float("nan")
    with pytest.raises(NodeInputError) as e:
        surgery(model_of("sd15"), {"samples": S}, torch.ones(1, IH, IW), [({"samples": ex}, None, "fit")])
    assert str(e.value) == ("ExemplarLatentSurgery: exemplar_1 (a LATENT) holds 1 NaN or infinite value(s); "
                            "encode the exemplar image again or check the node that made it")
    img = torch.rand(1, 16, 16, 3)
    img[0, 1, 1, 1] = float("inf")
    img[0, 2, 2, 2] = float("nan")
    with pytest.raises(NodeInputError) as e:
        surgery(model_of("sd15"), {"samples": S}, torch.ones(1, IH, IW), [(img, None, "fit")], vae=object())
    assert str(e.value) == ("ExemplarLatentSurgery: exemplar_1 (an IMAGE) holds 2 NaN or infinite value(s); "
                            "check the node that made the image")
