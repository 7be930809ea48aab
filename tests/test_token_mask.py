"""Kernels: pixel mask -> latent-pixel mask -> token mask, for FLUX, Qwen-Image and UNets."""
import pytest
import torch

from precise_edit.kernels.token_mask import (
    MaskError, build_token_masks, expand_token_mask, flatten_tokens, latent_pixel_mask, token_grid,
    token_mask_from_latent)

# (family, pixels per latent pixel, latent pixels per token)
FAMILIES = [("flux", 8, 2), ("qwen_image", 8, 2), ("unet", 8, 1)]


def brute_force_tokens(latent: torch.Tensor, p: int) -> torch.Tensor:
    h, w = latent.shape[-2:]
    th, tw = -(-h // p), -(-w // p)
    out = torch.zeros(latent.shape[0], th, tw, dtype=torch.bool)
    for b in range(latent.shape[0]):
        for i in range(th):
            for j in range(tw):
                out[b, i, j] = bool(latent[b, i * p:(i + 1) * p, j * p:(j + 1) * p].any())
    return out


@pytest.mark.parametrize("family,ds,p", FAMILIES)
@pytest.mark.parametrize("H,W", [(64, 64), (72, 104), (40, 56), (24, 8)])
def test_tokens_match_brute_force_on_random_masks(family, ds, p, H, W):
    gen = torch.Generator().manual_seed(H * W)
    for _ in range(5):
        mask = (torch.rand(2, H, W, generator=gen) > 0.97).float()
        mask[0, 0, 0] = 1.0
        mask[1, -1, -1] = 1.0
        hw = (H // ds, W // ds)
        tm = build_token_masks(mask, hw, p)
        assert tm.latent.shape == (2, *hw)
        assert tm.tokens.shape == (2, *token_grid(hw, p))
        assert torch.equal(tm.tokens, brute_force_tokens(tm.latent, p))


def test_any_touched_latent_pixel_counts():
    # Plain bilinear downsampling would read only pixels 3,4 and 11,12 and lose this one.
    mask = torch.zeros(1, 16, 16)
    mask[0, 8, 8] = 1.0
    lat = latent_pixel_mask(mask, (2, 2))
    assert lat.tolist() == [[[False, False], [False, True]]]
    # Non-integer ratio: the stroke lands in the latent pixel whose footprint holds it only.
    mask = torch.zeros(1, 20, 20)
    mask[0, :, 9] = 1.0
    lat = latent_pixel_mask(mask, (3, 3))
    assert lat[0, :, 1].all() and not lat[0, :, 2].any()
    # A single lit pixel anywhere is never lost.
    for y in range(16):
        for x in range(16):
            m = torch.zeros(1, 16, 16)
            m[0, y, x] = 1.0
            assert latent_pixel_mask(m, (2, 2)).any(), (y, x)


def test_exact_latent_size_is_thresholded_without_resampling():
    m = torch.zeros(1, 4, 6)
    m[0, 1, 2] = 0.3
    lat = latent_pixel_mask(m, (4, 6))
    assert lat.sum() == 1 and lat[0, 1, 2]


def test_single_token_mask_flux():
    # A 16x16 px square aligned to one FLUX token selects exactly that token.
    mask = torch.zeros(1, 64, 64)
    mask[0, 16:32, 32:48] = 1.0
    tm = build_token_masks(mask, (8, 8), 2)
    flat = flatten_tokens(tm.tokens)
    assert int(flat.sum()) == 1
    assert int(flat[0].nonzero()) == 1 * 4 + 2  # row-major: row 1, column 2 of a 4x4 grid
    assert tm.computed_fraction().tolist() == [1 / 16]


@pytest.mark.parametrize("family,ds,p", FAMILIES)
def test_masks_touching_every_border(family, ds, p):
    H, W = 40, 56  # odd latent sizes (5 x 7): FLUX/Qwen pad to 6 x 8 latent pixels
    mask = torch.zeros(1, H, W)
    mask[0, 0, :] = 1
    mask[0, -1, :] = 1
    mask[0, :, 0] = 1
    mask[0, :, -1] = 1
    tm = build_token_masks(mask, (H // ds, W // ds), p)
    t = tm.tokens[0]
    assert t[0].all() and t[-1].all() and t[:, 0].all() and t[:, -1].all()
    if t.shape[0] > 2 and t.shape[1] > 2:
        assert not t[1:-1, 1:-1].any()


def test_odd_latent_padding_tokens_only_from_real_pixels():
    lat = torch.zeros(1, 5, 7, dtype=torch.bool)
    lat[0, 4, 6] = True  # last real pixel sits in the padded border token
    tokens = token_mask_from_latent(lat, 2)
    assert tokens.shape == (1, 3, 4)
    assert tokens[0, 2, 3] and int(tokens.sum()) == 1
    back = expand_token_mask(tokens, 2, (5, 7))
    assert back.shape == (1, 5, 7) and back[0, 4, 6] and int(back.sum()) == 1


def test_unet_tokens_are_latent_pixels():
    mask = torch.zeros(1, 64, 64)
    mask[0, 10:20, 30:33] = 1
    tm = build_token_masks(mask, (8, 8), 1)
    assert torch.equal(tm.tokens, tm.latent)


def test_batch_items_are_independent():
    mask = torch.zeros(3, 32, 32)
    mask[0, :8, :8] = 1
    mask[1] = 1
    mask[2, -1, -1] = 1
    tm = build_token_masks(mask, (4, 4), 2)
    assert tm.counts() == ([1, 4, 1], 4)
    assert tm.computed_fraction().tolist() == [0.25, 1.0, 0.25]


def test_empty_mask_is_rejected_clearly():
    with pytest.raises(MaskError, match="selects no pixel"):
        build_token_masks(torch.zeros(1, 32, 32), (4, 4), 2)
    with pytest.raises(MaskError, match=r"item\(s\) \[1\]"):
        m = torch.zeros(2, 32, 32)
        m[0, 0, 0] = 1
        build_token_masks(m, (4, 4), 2)
    assert build_token_masks(torch.zeros(1, 32, 32), (4, 4), 2, allow_empty=True).tokens.sum() == 0


def test_bad_mask_shapes_are_rejected():
    with pytest.raises(MaskError, match="shape"):
        build_token_masks(torch.zeros(2, 3, 32, 32), (4, 4), 2)
    with pytest.raises(MaskError):
        build_token_masks(torch.zeros(1, 32, 32) + 1, (4, 4), 0)


def test_kernels_never_import_comfyui():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "kernels"
    for f in root.rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top not in {"comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths",
                                   "comfy_execution", "node_helpers"}, f"{f.name} imports {n}"


def test_bilinear_resize_matches_the_authors_and_can_drop_thin_strokes():
    mask = torch.zeros(1, 16, 16)
    mask[0, 8, 8] = 1.0  # not on rows/columns 3, 4, 11, 12 that bilinear-by-8 reads
    assert not latent_pixel_mask(mask, (2, 2), "bilinear").any()
    assert latent_pixel_mask(mask, (2, 2), "touched").sum() == 1
    blob = torch.zeros(1, 32, 32)
    blob[0, 5:20, 2:30] = 1.0
    assert torch.equal(latent_pixel_mask(blob, (4, 4), "bilinear"),
                       torch.nn.functional.interpolate(blob[:, None], size=(4, 4), mode="bilinear")[:, 0] > 0)
    with pytest.raises(MaskError, match="resize"):
        latent_pixel_mask(blob, (4, 4), "nearest")
