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


class _BlockVAE:
    """A VAE stand-in: latent channel k is the 8x8 block mean of pixel channel k % 3, plus the
    mean over all pixel channels it is given (so an alpha channel would show); returns 4-D
    latents, or 5-D with one frame like a video VAE."""

    def __init__(self, channels, five_d):
        self.channels, self.five_d = channels, five_d

    def encode(self, pixels):
        x = pixels.movedim(-1, 1)
        blocks = torch.nn.functional.avg_pool2d(x, 8)
        lat = torch.stack([blocks[:, k % 3] + blocks.mean(1) for k in range(self.channels)], 1)
        return lat.unsqueeze(2) if self.five_d else lat


def _image():
    return torch.rand(1, 16, 24, 3, generator=torch.Generator().manual_seed(4))   # 2x3 latent cells


@pytest.mark.parametrize("name,shape,five_d", [("sd15", (1, 4, LH, LW), True),
                                               ("qwen_image", (1, 16, 1, LH, LW), False)])
def test_image_exemplar_from_a_vae_of_the_other_dimensionality_lands(name, shape, five_d):
    """The VAE's latent gets (or loses) the frame axis to match the source; only RGB is encoded."""
    S = _source(shape)
    vae = _BlockVAE(shape[1], five_d)
    img = _image()
    rgba = torch.cat((img, torch.zeros(1, 16, 24, 1)), -1)       # an alpha channel is ignored
    _, latent, _ = surgery(model_of(name), {"samples": S}, _region(), [(rgba, _region(), "stretch")], vae=vae)
    expect = _BlockVAE(shape[1], False).encode(img)
    got = latent["samples"][:, :, 0] if len(shape) == 5 else latent["samples"]
    assert torch.equal(got[..., 2:4, 3:6], expect)


def test_multi_frame_exemplar_latent_gives_its_first_frame_to_every_source_frame():
    S = _source((1, 16, 2, LH, LW))                              # a two-frame source
    ex = torch.stack([torch.full((1, 16, 2, 3), 4.0), torch.full((1, 16, 2, 3), -4.0),
                      torch.full((1, 16, 2, 3), 9.0)], 2)       # three frames
    _, latent, _ = surgery(model_of("qwen_image"), {"samples": S}, _region(), [({"samples": ex}, _region(), "stretch")])
    L = latent["samples"]
    assert L.shape == S.shape
    assert torch.equal(L[..., 2:4, 3:6], torch.full((1, 16, 2, 2, 3), 4.0))


def test_exemplar_with_other_channel_count_message():
    S = _source((1, 4, LH, LW))
    with pytest.raises(NodeInputError) as e:
        surgery(model_of("sd15"), {"samples": S}, _region(), [({"samples": torch.zeros(1, 16, 2, 3)}, _region(), "fit")])
    assert str(e.value) == ("ExemplarLatentSurgery: exemplar_1 has 16 latent channels but the source has 4; "
                            "encode it with the same VAE as the source")


def test_nan_from_the_vae_message():
    class NanVAE(_BlockVAE):
        def encode(self, pixels):
            return super().encode(pixels) * float("nan")

    with pytest.raises(NodeInputError) as e:
        surgery(model_of("sd15"), {"samples": _source((1, 4, LH, LW))}, _region(), [(_image(), _region(), "fit")],
                vae=NanVAE(4, False))
    assert str(e.value) == ("ExemplarLatentSurgery: exemplar_1 encoded with the VAE holds 24 NaN or infinite "
                            "value(s); check the VAE and the exemplar image")


@pytest.mark.parametrize("name,shape", [("sd15", (2, 4, LH, LW)), ("qwen_image", (2, 16, 1, LH, LW))])
def test_a_batch_with_one_region_per_image_places_each_exemplar_in_its_own_region(name, shape):
    """Two images, two regions apart, one exemplar: each image starts as it would alone (the
    exemplar used to be stretched over the box around both regions, a fragment in each)."""
    S = _source(shape)
    ex = {"samples": torch.arange(1.0, 17.0).reshape(1, 1, 4, 4).expand(1, shape[1], 4, 4).clone()}
    reg = torch.zeros(2, IH, IW)
    reg[0, 8:40, 0:32] = 1.0    # latent rows 1..4, cols 0..3
    reg[1, 24:56, 64:96] = 1.0  # latent rows 3..6, cols 8..11
    _, batch, _ = surgery(model_of(name), {"samples": S}, reg, [(ex, reg, "stretch")])
    for b in range(2):
        _, alone, _ = surgery(model_of(name), {"samples": S[b:b + 1]}, reg[b:b + 1], [(ex, reg[b:b + 1], "stretch")])
        assert torch.equal(batch["samples"][b:b + 1], alone["samples"])
    assert torch.equal(batch["samples"][0, 0, ..., 1:5, 0:4].reshape(4, 4), ex["samples"][0, 0])


def test_a_batch_region_empty_in_one_image_says_so_and_leaves_that_image_alone():
    S = _source((2, 4, LH, LW))
    ex = {"samples": torch.ones(1, 4, 4, 4)}
    reg = torch.zeros(2, IH, IW)
    reg[0, 8:40, 0:32] = 1.0
    _, out, notes = surgery(model_of("sd15"), {"samples": S}, reg, [(ex, reg, "stretch")])
    assert torch.equal(out["samples"][1], S[1])
    assert any("selects nothing in image 2" in n for n in notes)
