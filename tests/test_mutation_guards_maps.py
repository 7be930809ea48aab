"""Change maps, feathers and previews: behaviour the mutation run found unguarded (issue 14).
These maps decide which pixels an edit may touch and how softly; the previews are what a
user checks before running an edit."""
import pytest
import torch

from precise_edit.kernels import surgery as sg
from precise_edit.kernels.token_mask import overlay_image


def test_radius_one_feathers_are_soft():
    m = torch.zeros(1, 5, 9)
    m[0, :, 4:] = 1.0
    box = sg.box_feather(m, 1)
    assert box[0, 2].tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1, 1])
    grown = sg.grow_feather(m, 1)
    assert grown[0, 2, 4:].tolist() == [1.0] * 5 and 0 < grown[0, 2, 3] < 1 and 0 < grown[0, 2, 2] < 1
    inner = sg.inner_feather(m, 1)
    assert inner[0, 2, :4].tolist() == [0.0] * 4  # exactly 0 outside the mask
    assert 0 < inner[0, 2, 4] < 1 and inner[0, 2, 6:].tolist() == [1.0] * 3


def test_inner_feather_of_a_thin_mask_is_never_negative():
    """A one-pixel line blurred with radius 2 falls below one half everywhere: its paste
    weights are 0 (keep the source), not negative, and exactly 0 off the line."""
    m = torch.zeros(1, 7, 7)
    m[0, 3, :] = 1.0
    w = sg.inner_feather(m, 2)
    assert torch.isfinite(w).all()
    assert w.min().item() == 0.0 and w.max().item() == 0.0


def test_inner_feather_threshold_is_strictly_above_half():
    m = torch.tensor([[[0.5, 0.51, 1.0, 0.0]]])
    assert sg.inner_feather(m, 0).tolist() == [[[0.0, 1.0, 1.0, 0.0]]]


@pytest.mark.parametrize("angle", [0, 45, 90, 135, 180, 225, 270, 315, 30])
def test_linear_ramp_spans_the_image_corner_to_corner(angle):
    """Whatever the direction, the 0..1 ramp runs from one corner of the image to the
    opposite one: point-symmetric about the centre, using the whole range."""
    g = sg.linear_gradient((4, 8), angle, 0.0, 1.0)
    assert torch.allclose(g + g.flip(0, 1), torch.ones_like(g), atol=1e-6)
    assert g.min().item() <= 0.125 and g.max().item() >= 0.875


def test_linear_ramp_directions_and_hard_threshold():
    right = sg.linear_gradient((2, 8), 0, 0.0, 1.0)
    assert right[0].tolist() == pytest.approx([(x + 0.5) / 8 for x in range(8)])
    left = sg.linear_gradient((2, 8), 180, 0.0, 1.0)
    assert left[0].tolist() == pytest.approx([(7.5 - x) / 8 for x in range(8)], abs=1e-6)
    up = sg.linear_gradient((4, 2), 270, 0.0, 1.0)
    assert up[:, 0].tolist() == pytest.approx([(3.5 - y) / 4 for y in range(4)], abs=1e-6)
    # start == end: a hard edge; a pixel centre exactly at the threshold is in
    hard = sg.linear_gradient((1, 8), 0, 0.0625, 0.0625)
    assert hard[0].tolist() == [1.0] * 8
    hard = sg.linear_gradient((1, 8), 0, 0.5, 0.5)
    assert hard[0].tolist() == [0.0] * 4 + [1.0] * 4


def test_radial_hard_disk_includes_its_rim():
    # one row of four pixels, centre between pixels 1 and 2: distances 1.5, 0.5, 0.5, 1.5
    disk = sg.radial_gradient((1, 4), 0.5, 0.5, 0.5, 0.5)
    assert disk.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    soft = sg.radial_gradient((1, 4), 0.5, 0.5, 0.5, 1.5)
    assert soft.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    soft = sg.radial_gradient((1, 4), 0.5, 0.5, 0.0, 2.0)
    assert soft[0].tolist() == pytest.approx([0.25, 0.75, 0.75, 0.25])


def test_combine_messages():
    with pytest.raises(sg.SurgeryError, match="^nothing to combine$"):
        sg.combine([], "max")
    with pytest.raises(sg.SurgeryError, match="^combine must be one of max, min, multiply, got 'xor'$"):
        sg.combine([torch.zeros(1, 2, 2)], "xor")


def test_map_preview_shows_out_of_range_values_clamped():
    p = sg.map_preview(torch.tensor([[[-0.5, 0.25, 1.5]]]))
    assert p.shape == (1, 1, 3, 3)
    assert p[0, 0, :, 0].tolist() == [0.0, 0.25, 1.0] and torch.equal(p[..., 0], p[..., 2])


def test_region_overlay_tints_and_draws_the_token_grid():
    image = torch.full((8, 8, 4), 0.5)  # RGBA: the alpha channel is dropped
    region = torch.zeros(8, 8)
    region[:, 4:] = 1
    out = overlay_image(image, region, 4)
    assert out.shape == (8, 8, 3)
    fg = torch.tensor([1.0, 0.25, 0.2])
    bg = torch.tensor([0.2, 0.45, 1.0])
    inside, outside = 0.5 * 0.55 + fg * 0.45, 0.5 * 0.55 + bg * 0.45
    assert torch.allclose(out[1, 5], inside) and torch.allclose(out[1, 1], outside)
    # grid lines every 4 pixels, darkened by 35 %
    assert torch.allclose(out[0, 5], inside * 0.65) and torch.allclose(out[1, 4], inside * 0.65)
    assert torch.allclose(out[4, 1], outside * 0.65)
    # tokens smaller than 4 pixels: no grid
    small = overlay_image(image, region, 3)
    assert torch.allclose(small[0, 5], inside) and torch.allclose(small[3, 5], inside)
    # bright images stay within 0..1
    assert overlay_image(torch.full((4, 4, 3), 2.0), torch.ones(4, 4), 4).max().item() == 1.0
    assert overlay_image(torch.full((4, 4, 3), -1.0), torch.ones(4, 4), 4).min().item() == 0.0
