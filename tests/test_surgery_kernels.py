"""Latent surgery math (kernels/surgery.py): schedule, maps, placement, strength maps."""
import math

import pytest
import torch

from precise_edit.kernels import surgery as K


# ------------------------------------------------------------------------ pinning schedule

@pytest.mark.parametrize("n", [1, 4, 7, 20])
def test_pinned_follows_threshold_and_holds_ceil_steps(n):
    c = torch.tensor([0.0, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.9, 0.999, 1.0])
    held = torch.zeros_like(c, dtype=torch.long)
    prev = torch.ones_like(c, dtype=torch.bool)
    for i in range(n):
        p = K.pinned(c, i, n)
        assert torch.equal(p, (1.0 - c) > (i / n))
        assert not (p & ~prev).any(), "a freed pixel is never pinned again"
        prev = p
        held += p.long()
    # A pixel with change c is held for its first ceil((1 - c) N) steps (float32 threshold).
    for ci, h in zip(c.tolist(), held.tolist()):
        expect = sum(1 for i in range(n) if (1.0 - torch.tensor(ci)).item() > torch.tensor(i / n).item())
        assert h == expect
        assert abs(h - math.ceil((1 - ci) * n - 1e-6)) <= 1
    assert held[0] == n and held[-1] == 0  # keep: all steps; full change: none


def test_pinned_rejects_zero_steps():
    with pytest.raises(K.SurgeryError):
        K.pinned(torch.zeros(2), 0, 0)


def test_step_index_exact_between_and_tolerant():
    sig = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    for i in range(4):
        assert K.step_index(float(sig[i]), sig) == i
    assert K.step_index(5.0, sig) == 1          # between s_1 and s_2: part of step 1
    assert K.step_index(20.0, sig) == 0          # above the schedule
    assert K.step_index(0.0, sig) == 3           # the end counts for the last step
    assert K.step_index(3.0 * (1 + 1e-6), sig) == 2  # round-off through timesteps


def test_free_mask_is_complement_of_pinned():
    c = torch.rand(2, 4, 5, 6)
    sig = torch.linspace(1.0, 0.0, 6)
    for i in range(5):
        assert torch.equal(K.free_mask(c, float(sig[i]), sig), (~K.pinned(c, i, 5)).float())


# ------------------------------------------------------------------------------ change maps

def test_clamp_unit_reports_changes():
    m, changed = K.clamp_unit(torch.tensor([[-0.5, 0.3, 1.7, float("nan")]]))
    assert changed and torch.equal(m, torch.tensor([[0.0, 0.3, 1.0, 0.0]]))
    m2, changed2 = K.clamp_unit(torch.tensor([[0.0, 1.0]]))
    assert not changed2 and torch.equal(m2, torch.tensor([[0.0, 1.0]]))


def test_resize_map_keeps_constant_regions_exact():
    m = torch.zeros(1, 64, 96)
    m[:, 16:40, 24:72] = 1.0
    r = K.resize_map(m, (8, 12))
    assert r.shape == (1, 8, 12)
    assert torch.equal(r[:, 2:5, 3:9], torch.ones(1, 3, 3 * 2)) and float(r[:, 6:].abs().sum()) == 0.0
    # Uneven ratio: still exact inside constant blocks.
    r2 = K.resize_map(torch.ones(1, 50, 70), (7, 9))
    assert torch.equal(r2, torch.ones(1, 7, 9))
    assert K.resize_map(m, (64, 96)) is m
    up = K.resize_map(torch.ones(1, 4, 6), (8, 12))
    assert up.shape == (1, 8, 12) and torch.allclose(up, torch.ones(1, 8, 12))


def test_match_batch():
    assert K.match_batch(torch.zeros(1, 2, 2), 3, "x").shape == (3, 2, 2)
    with pytest.raises(K.SurgeryError, match="batch of 2"):
        K.match_batch(torch.zeros(2, 2, 2), 3, "x")


def test_as_map_batch_shapes():
    assert K.as_map_batch(torch.zeros(4, 5)).shape == (1, 4, 5)
    assert K.as_map_batch(torch.zeros(2, 1, 4, 5)).shape == (2, 4, 5)
    with pytest.raises(K.SurgeryError):
        K.as_map_batch(torch.zeros(2, 3, 4, 5))


# -------------------------------------------------------------------------------- placement

def test_bounding_box():
    r = torch.zeros(6, 8, dtype=torch.bool)
    r[1:3, 2:7] = True
    r[4, 3] = True
    assert K.bounding_box(r) == K.Box(1, 5, 2, 7)
    assert K.bounding_box(torch.zeros(2, 3, dtype=torch.bool)) is None


@pytest.mark.parametrize("mode,src,box,resize,crop,paste,offset", [
    ("stretch", (10, 30), (4, 4), (4, 4), (0, 0), (4, 4), (0, 0)),
    ("fit", (10, 20), (8, 8), (4, 8), (0, 0), (4, 8), (2, 0)),
    ("fit", (30, 10), (6, 6), (6, 2), (0, 0), (6, 2), (0, 2)),
    ("fill", (10, 20), (8, 8), (8, 16), (0, 4), (8, 8), (0, 0)),
    ("fill", (40, 10), (4, 6), (24, 6), (10, 0), (4, 6), (0, 0)),
])
def test_placement_geometry(mode, src, box, resize, crop, paste, offset):
    p = K.placement(src, box, mode)
    assert (p.resize, p.crop, p.paste, p.offset) == (resize, crop, paste, offset)
    assert p.paste[0] + p.offset[0] <= box[0] and p.paste[1] + p.offset[1] <= box[1]


def test_placement_bad_mode():
    with pytest.raises(K.SurgeryError, match="placement"):
        K.placement((4, 4), (4, 4), "tile")


def test_arrange_and_paste():
    x = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 1, 4, 8)
    p = K.placement((4, 8), (4, 4), "fill")   # resize to 4x8, crop the middle 4 columns
    a = K.arrange(x, p)
    assert torch.equal(a, x[..., 2:6])
    canvas = torch.zeros(1, 1, 6, 6)
    out, cover = K.paste(canvas, a, K.Box(1, 5, 1, 5), p)
    assert torch.equal(out[..., 1:5, 1:5], a) and int(cover.sum()) == 16 and float(out.sum()) == float(a.sum())
    # A unit (pixels per cell) scales the geometry: 3 channels, 8 px cells.
    img = torch.rand(1, 3, 40, 80)
    pf = K.placement((40, 80), (4, 4), "fit")
    assert K.arrange(img, pf, unit=8).shape == (1, 3, pf.paste[0] * 8, pf.paste[1] * 8)


def test_composite_start_only_where_change_is_one_later_on_top():
    S = torch.zeros(1, 4, 4, 6)
    C = torch.ones(1, 4, 6)
    C[:, :, 0] = 0.99
    a = torch.full_like(S, 1.0)
    b = torch.full_like(S, 2.0)
    wa = torch.zeros(1, 4, 6, dtype=torch.bool)
    wa[:, :, :4] = True
    wb = torch.zeros(1, 4, 6, dtype=torch.bool)
    wb[:, :, 3:] = True
    out, written = K.composite_start(S, [(a, wa), (b, wb)], C)
    assert torch.equal(out[0, 0, :, 0], torch.zeros(4))          # C < 1: source
    assert torch.equal(out[0, :, :, 1:3], torch.ones(4, 4, 2))   # a only
    assert torch.equal(out[0, :, :, 3:], torch.full((4, 4, 3), 2.0))  # b on top
    assert written == [4 * 3, 4 * 3]
    # 5-D latents: the mask broadcasts over frames.
    out5, _ = K.composite_start(S.unsqueeze(2), [(a.unsqueeze(2), wa)], C)
    assert torch.equal(out5[:, :, 0], K.composite_start(S, [(a, wa)], C)[0])


# --------------------------------------------------------------------------- strength maps

def test_box_feather_identity_ramp_and_exact_interior():
    m = torch.zeros(1, 40, 40)
    m[:, :, 20:] = 1.0
    assert K.box_feather(m, 0) is m
    f = K.box_feather(m, 3)
    row = f[0, 20]
    assert torch.equal(f[:, :, 24:], torch.ones(1, 40, 16))      # beyond r from the edge: exactly 1
    assert torch.equal(f[:, :, :16], torch.zeros(1, 40, 16))
    ramp = row[16:24]
    assert torch.allclose(ramp, torch.arange(0, 8, dtype=torch.float32) / 7, atol=1e-6)
    blob = torch.zeros(1, 30, 30)
    blob[:, 10:20, 10:20] = 1.0
    fb = K.box_feather(blob, 2)
    assert float(fb[0, 15, 15]) == 1.0 and torch.allclose(fb, fb.flip(-1).flip(-2), atol=1e-6)


def test_grow_feather_keeps_mask_and_fades_outside():
    m = torch.zeros(1, 40, 40)
    m[:, :, 20:] = 1.0
    assert K.grow_feather(m, 0) is m
    f = K.grow_feather(m, 3)
    assert torch.equal(f[:, :, 20:], torch.ones(1, 40, 20))       # the mask itself stays exactly 1
    row = f[0, 10]
    assert torch.all(row[:20].diff() >= 0) and float(row[19]) < 1.0 and float(row[13]) == 0.0
    assert torch.allclose(row[14:20], torch.arange(1, 7, dtype=torch.float32) / 7, atol=1e-6)


def test_linear_gradient():
    g = K.linear_gradient((4, 10), 0.0, 0.0, 1.0)
    assert torch.allclose(g[0], (torch.arange(10) + 0.5) / 10, atol=1e-6)
    assert torch.equal(g[0], g[3])
    v = K.linear_gradient((10, 4), 90.0, 0.0, 1.0)
    assert torch.allclose(v[:, 0], (torch.arange(10) + 0.5) / 10, atol=1e-6)
    rev = K.linear_gradient((4, 10), 0.0, 1.0, 0.0)
    assert torch.allclose(rev, 1 - g, atol=1e-6)
    step = K.linear_gradient((2, 10), 0.0, 0.5, 0.5)
    assert torch.equal(step[0], torch.tensor([0.0] * 5 + [1.0] * 5))
    part = K.linear_gradient((2, 10), 0.0, 0.2, 0.4)
    assert float(part[0, 0]) == 0.0 and float(part[0, -1]) == 1.0


def test_radial_gradient():
    g = K.radial_gradient((21, 21), 0.5, 0.5, 0.1, 0.4)
    assert float(g[10, 10]) == 1.0 and float(g[0, 0]) == 0.0
    assert torch.allclose(g, g.t(), atol=1e-6)
    hard = K.radial_gradient((10, 10), 0.5, 0.5, 0.3, 0.3)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_combine_ops():
    a = torch.tensor([[[0.2, 0.8]]])
    b = torch.tensor([[[0.5, 0.5]]])
    assert torch.equal(K.combine([a, b], "max"), torch.tensor([[[0.5, 0.8]]]))
    assert torch.equal(K.combine([a, b], "min"), torch.tensor([[[0.2, 0.5]]]))
    assert torch.allclose(K.combine([a, b], "multiply"), torch.tensor([[[0.1, 0.4]]]))
    with pytest.raises(K.SurgeryError):
        K.combine([a], "xor")
    with pytest.raises(K.SurgeryError):
        K.combine([], "max")


def test_map_preview():
    p = K.map_preview(torch.tensor([[[0.0, 0.5]]]))
    assert p.shape == (1, 1, 2, 3) and torch.equal(p[0, 0, 1], torch.full((3,), 0.5))


def test_pin_threshold_curves_are_the_authors_sketches():
    """PIXELS 9b1e5a8 ``diffusion_pipe.py``: thresholds ``arange(N) / N`` (used), and the
    commented shapes ``(arange(N) / N) ** 3``, ``** 2`` and ``sigmoid(arange(N) / N * 6 - 3)``."""
    N = 40
    x = torch.arange(N, dtype=torch.float64) / N
    for curve, kw, ref in [("linear", {}, x), ("power", {"power": 3.0}, x ** 3), ("power", {"power": 2.0}, x ** 2),
                           ("sigmoid", {"steepness": 6.0}, torch.sigmoid(x * 6 - 3))]:
        got = torch.tensor([K.pin_threshold(i, N, curve, **kw) for i in range(N)], dtype=torch.float64)
        assert torch.allclose(got, ref, atol=1e-12), curve
        # keep (C = 0) is pinned at every step, full change (C = 1) never
        for i in range(N):
            assert bool(K.pinned(torch.zeros(1), i, N, curve, **kw)) and not bool(K.pinned(torch.ones(1), i, N, curve, **kw))
    c = torch.tensor([0.5])
    # the authors' direction: a power curve releases a half-changed pixel later than linear
    first_free = {name: next(i for i in range(N) if not bool(K.pinned(c, i, N, name, **kw)))
                  for name, kw in [("linear", {}), ("power", {"power": 2.0})]}
    assert first_free == {"linear": 20, "power": 29}


def test_pin_threshold_rejects_unknown_curve_and_bad_parameters():
    with pytest.raises(K.SurgeryError, match="pinning curve must be one of linear, power, sigmoid"):
        K.pin_threshold(0, 4, "cubic")
    with pytest.raises(K.SurgeryError, match="exponent"):
        K.pin_threshold(0, 4, "power", power=float("nan"))
    with pytest.raises(K.SurgeryError, match="steepness"):
        K.pin_threshold(0, 4, "sigmoid", steepness=0.0)
