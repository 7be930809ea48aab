"""SpatialInstruction and MoveObject nodes; a move sampled through ExemplarLatentSurgery on a real
(tiny) model: the object lands at its new place and the rest stays exact."""
from __future__ import annotations

import nodes as comfy_nodes
import pytest
import torch

import tiny_models as tm
from precise_edit.kernels import spatial as SP
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.instruct.move import move_object
from precise_edit.nodes.instruct.nodes import MoveObject, SpatialInstruction, spatial_instruction
from precise_edit.nodes.pixels.patch import surgery

LH, LW = 8, 12
IH, IW = LH * 8, LW * 8
_MODELS = {}


@pytest.fixture(autouse=True)
def _temp_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path))


def model_of(name):
    if name not in _MODELS:
        _MODELS[name] = tm.FIXTURES[name].model()
    return _MODELS[name]


def source_of(name, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ch = 4 if name == "sd15" else 16
    shape = (1, ch, 1, LH, LW) if name == "qwen_image" else (1, ch, LH, LW)
    return torch.randn(shape, generator=gen)


def cell_mask(cells):
    """An image-size MASK from latent cells (y, x)."""
    m = torch.zeros(1, IH, IW)
    for y, x in cells:
        m[0, y * 8:(y + 1) * 8, x * 8:(x + 1) * 8] = 1
    return m


# ------------------------------------------------------------------------ SpatialInstruction

def test_region_mask_is_the_place_with_a_soft_edge():
    region, text, dx, dy, understood, notes = spatial_instruction("add a tree in the bottom right corner",
                                                                  width=96, height=60, feather=4)
    assert text == "add a tree" and (dx, dy) == (0.0, 0.0) and "bottom right corner" in understood
    want = SP.boxes_mask([SP.REGIONS["corner_br"]], 60, 96)
    assert region.shape == (1, 60, 96)
    assert SP.iou(region[0] >= 0.5, want) > 0.97
    assert bool(((region > 0) & (region < 1)).any())  # feathered
    hard, *_ = spatial_instruction("add a tree in the bottom right corner", width=96, height=60, feather=0)
    assert torch.equal(hard[0], want)


def test_non_spatial_instruction_passes_through_with_an_empty_region():
    out = SpatialInstruction.execute("make it look like a watercolor painting", width=64, height=64)
    region, text = out.result[0], out.result[1]
    assert not bool(region.any()) and text == "make it look like a watercolor painting"
    assert "empty" in out.ui["text"][0]


def test_size_comes_from_the_image():
    region, *_ = spatial_instruction("add a cat on the left", image=torch.zeros(1, 40, 80, 3), feather=0)
    assert region.shape == (1, 40, 80) and bool(region[0, :, :40].all()) and not bool(region[0, :, 40:].any())


def test_relative_place_uses_the_object_mask():
    obj = cell_mask([(3, 4), (3, 5), (4, 4), (4, 5)])  # x 32-48, y 24-40
    region, text, *_ = spatial_instruction("put a lamp to the right of the sofa", object_mask=obj, feather=0)
    assert text == "put a lamp"
    assert bool(region[0, 24:40, 48:64].all()) and int(region.sum()) == 16 * 16


def test_bad_inputs_are_clear_messages():
    with pytest.raises(NodeInputError, match=r"^SpatialInstruction: the instruction is empty"):
        spatial_instruction("   ")
    with pytest.raises(NodeInputError, match=r"^SpatialInstruction: .*connect that object's mask to 'object_mask'"):
        spatial_instruction("put a lamp next to the sofa")
    with pytest.raises(NodeInputError, match="language must be one of"):
        spatial_instruction("add a tree on the left", language="klingon")
    with pytest.raises(NodeInputError, match="entirely outside"):
        spatial_instruction("move it 90% to the right", object_mask=cell_mask([(3, 5)]))


def test_move_gives_offsets_and_the_new_place():
    obj = cell_mask([(3, 2), (3, 3)])
    region, text, dx, dy, understood, notes = spatial_instruction("move it 25% to the right", object_mask=obj,
                                                                  feather=0)
    assert (dx, dy) == pytest.approx((0.25, 0.0))
    assert torch.equal(region[0], cell_mask([(3, 5), (3, 6)])[0])
    _, _, dx, dy, _, notes = spatial_instruction("di chuyển vật sang phải 80%", object_mask=obj, feather=0)
    assert dx == pytest.approx(1 - 4 / 12) and any("clipped" in n for n in notes)  # stops at the right border


# ------------------------------------------------------------------------------ MoveObject

@pytest.mark.parametrize("name", ["sd15", "flux_dev", "qwen_image"])
@pytest.mark.parametrize("shape", ["box", "L"])
def test_moved_object_lands_at_the_new_place_and_the_rest_stays_exact(name, shape):
    S = source_of(name)
    cells = [(2, 2), (2, 3), (3, 2), (3, 3)] + ([(4, 2)] if shape == "L" else [(4, 2), (4, 3)])
    ex, region, fill, fill_region, change, notes = move_object({"samples": S}, cell_mask(cells), 0.25, 0.25,
                                                               feather=0)
    model, latent, _ = surgery(model_of(name), {"samples": S}, change,
                               [(ex, region, "stretch"), (fill, fill_region, "stretch"), (None, None, "fit")])
    start = latent["samples"]
    # the object's latent cells, shifted by (2, 3) cells, land exactly
    for y, x in cells:
        assert torch.equal(start[..., y + 2, x + 3], S[..., y, x]), (y, x)
    # the old place that the new one does not cover starts from the fill
    moved = {(y + 2, x + 3) for y, x in cells}
    for y, x in cells:
        if (y, x) not in moved:
            assert torch.allclose(start[..., y, x], fill["samples"][..., y, x])
    C = latent["noise_mask"].reshape(LH, LW)
    assert bool((C[[y for y, _ in cells], [x for _, x in cells]] == 1).all())
    keep = (C == 0)
    assert int(keep.sum()) == LH * LW - len(moved | set(cells))
    out = comfy_nodes.common_ksampler(model, 3, 3, 1.0, "euler", "normal", tm.stub_conditioning(
        tm.FIXTURES[name].family), tm.stub_conditioning(tm.FIXTURES[name].family), latent, denoise=0.7)[0]["samples"]
    k = keep.view(*([1] * (S.ndim - 2)), LH, LW).expand_as(S)
    assert torch.equal(out[k], S[k])          # exact where ExemplarLatentSurgery keeps the source
    assert not torch.equal(out[~k], S[~k])    # the moved object and the old place are regenerated


def test_move_is_clipped_at_the_border_with_a_notice():
    S = source_of("sd15")
    ex, region, *_, notes = move_object({"samples": S}, cell_mask([(3, 9), (3, 10)]), 0.2, 0.0, feather=0)
    assert any("clipped" in n for n in notes)
    assert torch.equal(region, cell_mask([(3, 10), (3, 11)]))


def test_move_leaving_the_image_is_an_error_and_other_bad_input():
    S = {"samples": source_of("sd15")}
    with pytest.raises(NodeInputError, match=r"^MoveObject: .*entirely outside"):
        move_object(S, cell_mask([(3, 3)]), 0.95, 0.0)
    with pytest.raises(NodeInputError, match="object_mask is empty"):
        move_object(S, torch.zeros(1, IH, IW), 0.1, 0.0)
    with pytest.raises(NodeInputError, match="connect the model's VAE"):
        move_object(torch.zeros(1, IH, IW, 3), cell_mask([(3, 3)]), 0.1, 0.0)


def test_change_map_is_feathered_outward_and_the_node_runs():
    out = MoveObject.execute({"samples": source_of("sd15")}, cell_mask([(3, 3)]), 0.25, 0.0, feather=4)
    change = out.result[4]
    assert bool((change[0, 24:32, 24:32] == 1).all()) and bool((change[0, 24:32, 48:56] == 1).all())
    assert bool(((change > 0) & (change < 1)).any())


def test_move_on_an_image_size_not_divisible_by_8_keeps_the_vae_grid():
    """100x60 px encodes to 12x7 cells (factor 8); round(60 / 7) = 9 made 108x63 outputs."""
    S = torch.randn(1, 4, 7, 12, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(1, 60, 100)
    m[0, 16:32, 16:32] = 1
    ex, region, fill, fill_region, change, notes = move_object({"samples": S}, m, 0.25, 0.0, feather=0)
    assert region.shape[-2:] == change.shape[-2:] == fill_region.shape[-2:] == (56, 96)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_move_refuses_a_non_finite_offset(bad):
    S = torch.randn(1, 4, LH, LW)
    with pytest.raises(NodeInputError, match="MoveObject: offset_x is"):
        move_object({"samples": S}, cell_mask([(3, 3)]), bad, 0.0)
