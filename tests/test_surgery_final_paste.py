"""ExemplarLatentSurgery's sampling wrapper and its messages (issue 14: survivors of mutation
testing of ``nodes/pixels/patch.py``): what the user sees in the log and the node text, and
what the patched model does with a LATENT that is not the surgery's."""
import logging

import comfy.sample
import nodes as comfy_nodes
import pytest
import torch

import tiny_models as tm
from comfy_extras.nodes_differential_diffusion import DifferentialDiffusion
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.pixels.nodes import ExemplarLatentSurgery
from precise_edit.nodes.pixels.patch import surgery

LH, LW = 8, 12
IH, IW = LH * 8, LW * 8
NAME = "sd15"
_MODEL = []


def model():
    if not _MODEL:
        _MODEL.append(tm.FIXTURES[NAME].model())
    return _MODEL[0]


def source():
    return torch.randn(1, 4, LH, LW, generator=torch.Generator().manual_seed(2))


def ksample(m, latent, denoise=0.7):
    c = tm.stub_conditioning(tm.FIXTURES[NAME].family, "a photo")
    return comfy_nodes.common_ksampler(m, 7, 3, 1.0, "euler", "normal", c, c, latent, denoise=denoise)[0]["samples"]


def test_differential_diffusion_after_the_surgery_is_logged(caplog):
    C = torch.zeros(1, IH, IW)
    C[:, :, 48:] = 1.0
    patched, latent, _ = surgery(model(), {"samples": source()}, C, [])
    dd = DifferentialDiffusion.execute(patched).args[0]
    with caplog.at_level(logging.INFO, logger="comfyui-precise-edit"):
        ksample(dd, latent)
    assert ("ExemplarLatentSurgery: another denoise-mask function (e.g. DifferentialDiffusion) was set after "
            "the surgery; the surgery schedule 1 - C > t_i is used instead for this run") in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="comfyui-precise-edit"):
        ksample(patched, latent)                       # the surgery alone: nothing to say
    assert not any("another denoise-mask function" in m for m in caplog.messages)


def test_patched_model_on_a_latent_without_the_change_map_samples_plainly():
    """A patched MODEL sampled with some other LATENT (no noise mask) is the plain model."""
    patched, _, _ = surgery(model(), {"samples": source()}, torch.ones(1, IH, IW), [])
    other = {"samples": source() * 0.5}
    assert torch.equal(ksample(patched, other), ksample(model(), other))


def test_sigmoid_steepness_is_checked_on_the_node():
    for bad in (float("nan"), 0.0, -1.0):
        with pytest.raises(NodeInputError) as e:
            ExemplarLatentSurgery.execute(model(), {"samples": source()}, torch.ones(1, IH, IW),
                                          pinning_curve="sigmoid", curve_steepness=bad)
        assert str(e.value) == (f"ExemplarLatentSurgery: the sigmoid curve's steepness must be a positive "
                                f"number, got {bad}")


def test_map_notes_and_messages_name_the_node_and_the_input():
    S = source()
    C = torch.full((1, 32, 48), 1.5)
    _, _, notes = surgery(model(), {"samples": S}, C, [])
    assert notes == ["ExemplarLatentSurgery: change_map has values outside [0, 1]; they are clamped",
                     "ExemplarLatentSurgery: change_map is 48x32 but the source image is 96x64; it is resized",
                     "ExemplarLatentSurgery: no exemplar is connected: the changed pixels are regenerated from "
                     "the source (plain differential regeneration)"]
    with pytest.raises(NodeInputError) as e:
        surgery(model(), {"samples": S}, torch.ones(1, 2, 3, IH, IW), [])
    assert str(e.value) == ("ExemplarLatentSurgery: change_map: expected a mask of shape [H, W] or [B, H, W], "
                            "got (1, 2, 3, 64, 96)")
    with pytest.raises(NodeInputError) as e:
        surgery(model(), {"samples": S}, torch.ones(1, IH, IW),
                [({"samples": torch.zeros(1, 4, 2, 2)}, torch.ones(2, IH, IW), "fit")])
    assert str(e.value) == ("ExemplarLatentSurgery: region_1 has a batch of 2 but the source latent has 1; "
                            "give one, or one per latent")


def test_source_and_region_messages_are_whole():
    S = source()
    with pytest.raises(NodeInputError) as e:
        surgery(model(), S, torch.ones(1, IH, IW), [])                  # an IMAGE/tensor, not a LATENT
    assert str(e.value) == "ExemplarLatentSurgery: 'source' must be a LATENT"
    bad = S.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(NodeInputError) as e:
        surgery(model(), {"samples": bad}, torch.ones(1, IH, IW), [])
    assert str(e.value) == ("ExemplarLatentSurgery: the source latent holds 1 NaN or infinite value(s); encode the "
                            "source image again (VAE Encode) or check the node that made the latent")
    with pytest.raises(NodeInputError) as e:
        surgery(model(), {"samples": S}, torch.ones(1, IH, IW),
                [({"samples": torch.zeros(1, 4, 2, 2)}, torch.zeros(1, IH, IW), "fit")])
    assert str(e.value) == ("ExemplarLatentSurgery: region_1 selects no pixel inside the 96x64 source image (it is "
                            "empty or lies outside the image); paint the region on the source image")
    with pytest.raises(NodeInputError) as e:
        surgery(model(), {"samples": S}, torch.ones(1, IH, IW), [({"samples": torch.zeros(2, 4, 2, 2)}, None, "fit")])
    assert str(e.value) == ("ExemplarLatentSurgery: exemplar_1 has a batch of 2 but the source latent has 1; "
                            "give one, or one per latent")
    _, _, notes = surgery(model(), {"samples": S}, torch.zeros(1, IH, IW), [(None, torch.ones(1, IH, IW), "fit")])
    assert notes == ["ExemplarLatentSurgery: region_1 is given without exemplar_1; it is ignored"]


def test_half_strength_region_counts_as_selected():
    """A region MASK is selected where it is >= 0.5 (a soft brush at half strength counts)."""
    S = source()
    r = torch.zeros(1, IH, IW)
    r[:, 16:32, 24:48] = 0.5
    _, latent, _ = surgery(model(), {"samples": S}, torch.ones(1, IH, IW),
                           [({"samples": torch.full((1, 4, 2, 3), 7.0)}, r, "stretch")])
    assert torch.equal(latent["samples"][..., 2:4, 3:6], torch.full((1, 4, 2, 3), 7.0))


def test_replaced_function_and_no_effect_notes_are_whole():
    S = source()
    dd = DifferentialDiffusion.execute(model()).args[0]
    C = torch.zeros(1, IH, IW)
    C[:, :, :48] = 0.5                                   # below 1 everywhere: the exemplar cannot land
    _, _, notes = surgery(dd, {"samples": S}, C, [({"samples": torch.zeros(1, 4, 2, 2)}, None, "fit")])
    assert notes == ["ExemplarLatentSurgery: exemplar_1 has no effect: the change map is below 1 everywhere in its "
                     "region (the exemplar lands only where change = 1)",
                     "ExemplarLatentSurgery: the model already has a denoise-mask function (e.g. "
                     "DifferentialDiffusion); it is replaced by the surgery schedule, which is applied once per step"]
