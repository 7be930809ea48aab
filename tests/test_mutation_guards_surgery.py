"""PIXELS latent surgery kernels (kernels/surgery.py): behaviour that mutation testing found
unguarded (issue 14): messages on bad input, edge sizes, video (5-D) latents, dtypes kept,
the pinning curves' parameters, antialiased shrinking and the feather ramps."""
import math

import pytest
import torch

from precise_edit.kernels import surgery as K


# ------------------------------------------------------------------------------ bad input

def test_mask_messages_name_what_was_given():
    with pytest.raises(K.SurgeryError, match=r"^expected a tensor mask, got list$"):
        K.as_map_batch([[0.0]])
    with pytest.raises(K.SurgeryError, match=r"^expected a mask of shape \[H, W\] or \[B, H, W\], got \(2, 3, 4, 5\)$"):
        K.as_map_batch(torch.zeros(2, 3, 4, 5))
    # a one-row mask batch [B, 1, W] is a mask, not a channel axis to drop
    assert K.as_map_batch(torch.ones(2, 1, 5)).shape == (2, 1, 5)
    assert K.as_map_batch(torch.ones(2, 1, 1, 5)).shape == (2, 1, 5)


def test_batch_mismatch_message():
    assert K.match_batch(torch.zeros(1, 3, 3), 3, "m").shape == (3, 3, 3)
    with pytest.raises(K.SurgeryError, match=r"^change_map has a batch of 2 but the source latent has 3; "
                                             r"give one, or one per latent$"):
        K.match_batch(torch.zeros(2, 3, 3), 3, "change_map")


def test_pinning_parameters_are_checked_with_their_messages():
    with pytest.raises(K.SurgeryError, match=r"^steps must be >= 1, got 0$"):
        K.pin_threshold(0, 0)
    assert K.pin_threshold(1, 4, "power", 0.5) == 0.5  # exponents below 1 are allowed
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(K.SurgeryError, match=r"^the power curve's exponent must be a positive number, got "):
            K.pin_threshold(1, 4, "power", bad)
    assert K.pin_threshold(2, 4, "sigmoid", steepness=0.5) == 0.5  # gentle curves are allowed
    with pytest.raises(K.SurgeryError, match=r"^the sigmoid curve's steepness must be a positive number, got 0.0$"):
        K.pin_threshold(1, 4, "sigmoid", steepness=0.0)
    with pytest.raises(K.SurgeryError, match=r"^placement must be one of fit, fill, stretch, got 'zoom'$"):
        K.placement((2, 2), (4, 4), "zoom")


def test_clamp_reports_each_kind_of_out_of_range_value():
    for bad in (float("nan"), -0.25, 1.5):
        m = torch.tensor([[0.5, bad]])
        out, changed = K.clamp_unit(m)
        assert changed, bad
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert K.clamp_unit(torch.tensor([[0.0, 1.0, 0.5]]))[1] is False


def test_placement_refuses_empty_sizes_and_takes_one_cell_ones():
    for src, box in (((0, 4), (4, 4)), ((4, 0), (4, 4)), ((4, 4), (0, 4)), ((4, 4), (4, 0)),
                     ((-1, 4), (4, 4)), ((4, 4), (4, -2))):
        with pytest.raises(K.SurgeryError, match=r"^cannot place a \(.*\) exemplar into a \(.*\) box$"):
            K.placement(src, box, "stretch")
    for src, box in (((1, 4), (4, 4)), ((4, 1), (4, 4)), ((4, 4), (1, 4)), ((4, 4), (4, 1))):
        assert K.placement(src, box, "stretch").paste == box


# ------------------------------------------------------------------------ pinning schedule

def test_pinning_defaults_are_the_authors_linear_schedule():
    c = torch.tensor([0.0, 0.3, 0.6, 1.0])
    assert K.pin_threshold(1, 4) == 0.25
    assert K.pin_threshold(1, 4, "power") == 0.0625  # p = 2 by default
    assert K.pin_threshold(1, 4, "sigmoid") == pytest.approx(1 / (1 + math.exp(1.5)))  # k = 6
    assert K.pinned(c, 1, 4).tolist() == [True, True, True, False]
    assert K.pinned(c, 2, 4, "power").tolist() == [True, True, True, False]   # t = 1/4
    assert K.pinned(torch.tensor([0.5]), 3, 4, "power").tolist() == [False]  # t = 9/16 (p = 3: 27/64)
    assert K.pinned(c, 1, 4, "sigmoid").tolist() == [True, True, True, False]  # t = 0.18
    assert K.pinned(torch.tensor([0.78]), 3, 10, "sigmoid").tolist() == [False]  # t = 0.231 (k = 7: 0.198)


def test_free_mask_passes_the_curve_parameters_and_keeps_the_dtype():
    sigmas = torch.linspace(1, 0, 11)
    c = torch.tensor([0.5])
    # step 6 of 10: power p = 2 gives t = 0.36 (pinned: 0.5 > 0.36), p = 1 gives t = 0.6 (free)
    assert K.free_mask(c, float(sigmas[6]), sigmas, "power", 2.0).tolist() == [0.0]
    assert K.free_mask(c, float(sigmas[6]), sigmas, "power", 1.0).tolist() == [1.0]
    # default p = 2: change 0.7 is free at t = 0.36 (p = 3 would give t = 0.216 and pin it)
    assert K.free_mask(torch.tensor([0.7]), float(sigmas[6]), sigmas, "power").tolist() == [1.0]
    # step 4: sigmoid k = 6 gives t = 0.354, k = 20 gives t = 0.119, k = 0.5 gives 0.4875
    c6 = torch.tensor([0.6])
    assert K.free_mask(c6, float(sigmas[4]), sigmas, "sigmoid").tolist() == [0.0]
    assert K.free_mask(c6, float(sigmas[4]), sigmas, "sigmoid", steepness=20.0).tolist() == [0.0]
    assert K.free_mask(c6, float(sigmas[4]), sigmas, "sigmoid", steepness=0.5).tolist() == [1.0]
    # default k = 6: change 0.66 is free at t = 0.354 (k = 7 would give t = 0.332 and pin it)
    assert K.free_mask(torch.tensor([0.66]), float(sigmas[4]), sigmas, "sigmoid").tolist() == [1.0]
    # ComfyUI blends with 1 - mask: a float mask of the change map's dtype, not a bool one
    for dt in (torch.float32, torch.float16):
        m = K.free_mask(c.to(dt), float(sigmas[6]), sigmas)
        assert m.dtype == dt


def test_a_single_sigma_schedule_is_step_zero():
    assert K.step_index(0.5, torch.tensor([1.0])) == 0
    assert K.free_mask(torch.tensor([0.5, 1.0]), 1.0, torch.tensor([1.0])).tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------- change maps

def test_resize_map_averages_when_shrinking_either_side_and_interpolates_when_growing():
    # shrinking the height only (width unchanged, narrower than the height): area averaging
    m = torch.zeros(1, 12, 2)
    m[0, 0] = 1.0
    assert K.resize_map(m, (4, 2))[0, :, 0].tolist() == pytest.approx([1 / 3, 0, 0, 0])
    # shrinking the width only (height unchanged, lower than the width)
    m = torch.zeros(1, 2, 12)
    m[0, :, 0] = 1.0
    assert K.resize_map(m, (2, 4))[0, 0].tolist() == pytest.approx([1 / 3, 0, 0, 0])
    # shrinking one side while growing the other: bilinear (no blocky duplication)
    m = torch.zeros(1, 4, 2)
    m[0, :, 1] = 1.0
    out = K.resize_map(m, (2, 4))
    assert out[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    # growing: bilinear on pixel centres (half-pixel), not corner-aligned
    assert K.resize_map(torch.tensor([[[0.0, 1.0]]]), (1, 4))[0, 0].tolist() == pytest.approx([0, 0.25, 0.75, 1])


def test_bounding_box_of_a_batch_is_the_union():
    r = torch.zeros(2, 6, 8, dtype=torch.bool)
    r[0, 1, 2] = True
    r[1, 4, 6] = True
    assert K.bounding_box(r) == K.Box(1, 5, 2, 7)


# --------------------------------------------------------------------------------- placement

def test_fit_keeps_at_least_one_cell_and_centres_on_whole_cells():
    assert K.placement((1, 100), (4, 4), "fit").resize == (1, 4)
    assert K.placement((100, 1), (4, 4), "fit").resize == (4, 1)
    p = K.placement((1, 1), (4, 3), "fit")  # 3 x 3 in a 4 x 3 box: one spare row
    assert p.offset == (0, 0) and all(isinstance(v, int) for v in p.offset)
    p = K.placement((1, 1), (3, 4), "fit")
    assert p.offset == (0, 0)
    canvas = torch.zeros(1, 1, 6, 6)
    out, cover = K.paste(canvas, torch.ones(1, 1, 3, 3), K.Box(1, 5, 2, 5), K.placement((1, 1), (4, 3), "fit"))
    assert cover[1:4, 2:5].all() and int(cover.sum()) == 9


def test_paste_offsets_and_the_cover_map():
    p = K.placement((1, 1), (5, 7), "fit")  # 5 x 5 centred: offset (0, 1)
    assert p.offset == (0, 1)
    p = K.Placement((2, 3), (0, 0), (2, 3), (2, 1))
    canvas = torch.zeros(1, 1, 8, 8)
    out, cover = K.paste(canvas, torch.ones(1, 1, 2, 3), K.Box(1, 7, 2, 8), p)
    assert cover.dtype == torch.bool and cover.shape == (8, 8)
    assert cover.nonzero().tolist() == [[3, 3], [3, 4], [3, 5], [4, 3], [4, 4], [4, 5]]
    assert torch.equal(out[0, 0].bool(), cover)
    # video (5-D) latents: the cover map is over the last two axes only
    out5, cover5 = K.paste(torch.zeros(1, 2, 1, 8, 8), torch.ones(1, 2, 1, 2, 3), K.Box(1, 7, 2, 8), p)
    assert cover5.shape == (8, 8) and torch.equal(cover5, cover)
    assert torch.equal(out5[0, 1, 0].bool(), cover)


def test_arrange_cuts_a_non_square_paste():
    p = K.Placement((4, 6), (1, 0), (2, 6), (0, 0))
    x = torch.arange(24.0).view(1, 1, 4, 6)
    y = K.arrange(x, p)
    assert y.shape == (1, 1, 2, 6)
    assert torch.equal(y, x[..., 1:3, :])


def test_resize_last2_on_video_latents_and_antialiased_shrinking():
    x5 = torch.zeros(1, 2, 1, 8, 2)
    x5[..., 0, :] = 1.0  # a one-row stroke
    y5 = K.resize_last2(x5, (2, 2))
    assert y5.shape == (1, 2, 1, 2, 2)
    assert float(y5[0, 0, 0, 0, 0]) > 0.05  # antialiased: the stroke survives shrinking the height
    x = torch.zeros(1, 1, 8, 2)
    x[..., 0, :] = 1.0
    assert float(K.resize_last2(x, (2, 2))[0, 0, 0, 0]) > 0.05
    x = torch.zeros(1, 1, 2, 8)
    x[..., 0] = 1.0  # a one-column stroke, shrinking the width only
    assert float(K.resize_last2(x, (2, 2))[0, 0, 0, 0]) > 0.05
    x = torch.zeros(1, 1, 2, 16)
    x[..., 0] = 1.0
    assert float(K.resize_last2(x, (2, 4))[0, 0, 0, 0]) > 0.05
    # growing: half-pixel bilinear
    g = K.resize_last2(torch.tensor([[[[0.0, 1.0]]]]), (1, 4))
    assert g[0, 0, 0].tolist() == pytest.approx([0, 0.25, 0.75, 1])
    # the same size is returned as it is; another size is resized
    assert K.resize_last2(x, (2, 16)) is x
    assert K.resize_last2(x, (4, 8)).shape == (1, 1, 4, 8)


def test_composite_start_on_a_video_batch_keeps_the_source_dtype():
    src = torch.zeros(2, 3, 2, 4, 4, dtype=torch.bfloat16)
    placed = torch.ones(2, 3, 2, 4, 4)
    where = torch.zeros(2, 4, 4, dtype=torch.bool)
    where[0, 0, 0] = True
    where[1, 3, 3] = True
    change = torch.ones(2, 4, 4)
    out, written = K.composite_start(src, [(placed, where)], change)
    assert out.dtype == torch.bfloat16 and written == [2]
    assert out[0, :, :, 0, 0].eq(1).all() and out[1, :, :, 3, 3].eq(1).all()
    assert int(out.sum()) == 2 * 3 * 2


# ----------------------------------------------------------------------------- strength maps

def test_feathers_stay_in_unit_range_for_out_of_range_masks():
    m = torch.zeros(1, 6, 6)
    m[0, 2:4, 2:4] = 3.0
    m[0, 0, 0] = -2.0
    f = K.box_feather(m, 1)
    assert float(f.max()) == 1.0 and float(f.min()) == 0.0


def test_inner_feather_ramp_on_a_straight_edge():
    m = torch.zeros(1, 5, 12)
    m[0, :, 4:] = 1.0
    w = K.inner_feather(m, 2)
    assert w[0, 2, :8].tolist() == pytest.approx([0, 0, 0, 0, 0.2, 0.6, 1.0, 1.0])


def test_grow_feather_grows_in_both_directions():
    m = torch.zeros(1, 9, 11)
    m[0, 4, 5] = 1.0
    g = K.grow_feather(m, 1)
    assert g.shape == m.shape
    assert float(g[0, 4, 5]) == 1.0
    assert float(g[0, 4, 7]) > 0 and float(g[0, 6, 5]) > 0
    assert torch.allclose(g[0, :, 1:10], g[0, :, 1:10].flip(0)) and torch.allclose(g[0], g[0].flip(1))
    assert float(g[0, 4, 8]) == 0.0 and float(g[0, 1, 5]) == 0.0


def test_radial_gradient_radii_are_fractions_of_the_shorter_side():
    g = K.radial_gradient((10, 20), 0.5, 0.5, 0.2, 0.4)
    # pixel centres (x + 0.5, y + 0.5); centre (10, 5); distance / 10
    assert float(g[4, 9]) == 1.0  # distance 0.07
    assert float(g[4, 12]) == pytest.approx((0.4 - math.hypot(2.5, 0.5) / 10) / 0.2)
    assert float(g[0, 0]) == 0.0
