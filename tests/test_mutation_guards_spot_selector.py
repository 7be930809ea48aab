"""SpotEdit's selector on its own: which tokens each judge keeps active (issue 14: the
model-path tests use a user mask in "replace" mode, which never reaches the judges)."""
import logging
import types

import pytest
import torch

from precise_edit.nodes.spot_edit.patch import Selector

HW = (8, 12)  # latent -> 4 x 6 tokens of 2 x 2


def _pair():
    y = torch.randn(1, 16, *HW, generator=torch.Generator().manual_seed(0))
    x0 = y.clone()
    x0[:, :, 2:4, 6:8] = -x0[:, :, 2:4, 6:8]  # token (1, 3) changed
    x0[:, :, 7, 11] += 0.05                  # token (3, 5): a small change
    return x0, y


def _expected(*tokens):
    t = torch.zeros(4, 6, dtype=torch.bool)
    for r, c in tokens:
        t[r, c] = True
    return t


@pytest.mark.parametrize("judge", ["L4", "cosine"])
def test_judges_keep_the_changed_tokens_active(judge):
    x0, y = _pair()
    active, tau = Selector(judge=judge, tau=0.5).active(x0, y, HW, 2)
    assert torch.equal(active, _expected((1, 3)))
    assert tau == 0.5
    # the judges differ: a sign flip is a large cosine distance but the L4 distance of a
    # small shift is tiny; a low tau picks up the small change for both
    active, _ = Selector(judge=judge, tau=1e-6).active(x0, y, HW, 2)
    assert torch.equal(active, _expected((1, 3), (3, 5)))


def test_judges_measure_different_things():
    """L4 grows with the size of a change, the cosine judge only with its direction."""
    y = torch.ones(1, 16, *HW)
    x0 = y.clone()
    x0[:, :, 0:2, 0:2] = 3.0   # same direction, larger: cosine distance 0, L4 distance 16
    l4, _ = Selector(judge="L4", tau=1.0).active(x0, y, HW, 2)
    assert torch.equal(l4, _expected((0, 0)))
    cos = Selector(judge="cosine", tau=1e-3).token_scores(x0, y, 2)
    assert cos.abs().max().item() < 1e-6


def test_user_mask_modes_in_the_selector():
    x0, y = _pair()
    mask = torch.zeros(1, 64, 96)
    mask[0, 48:64, 0:16] = 1  # tokens (3, 0)
    union, _ = Selector(judge="L4", tau=0.5, mask=mask, mode="union").active(x0, y, HW, 2)
    assert torch.equal(union, _expected((1, 3), (3, 0)))
    replace, _ = Selector(judge="L4", tau=0.5, mask=mask, mode="replace").active(x0, y, HW, 2)
    assert torch.equal(replace, _expected((3, 0)))
    inter, _ = Selector(judge="L4", tau=0.5, mask=mask, mode="intersect").active(x0, y, HW, 2)
    assert int(inter.sum()) == 1  # empty intersection: the top token stays active
    assert torch.equal(inter, _expected((1, 3)))


def test_perceptual_judge_needs_a_vae():
    x0, y = _pair()
    with pytest.raises(ValueError, match="^the perceptual judge needs a VAE$"):
        Selector(judge="perceptual").active(x0, y, HW, 2)


def test_perceptual_judge_falls_back_to_l4_once_with_a_note(caplog):
    x0, y = _pair()
    vae = types.SimpleNamespace(first_stage_model=torch.nn.Identity())
    sel = Selector(judge="perceptual", tau=0.5, vae=vae)
    with caplog.at_level(logging.WARNING, logger="comfyui-precise-edit"):
        active, _ = sel.active(x0, y, HW, 2)
        sel.active(x0, y, HW, 2)
    assert torch.equal(active, _expected((1, 3)))
    assert torch.equal(sel.token_scores(x0, y, 2), Selector(judge="L4").token_scores(x0, y, 2))
    assert len(sel.notes) == 1
    assert sel.notes[0].startswith("SpotSelector: no perceptual features for a Identity VAE; using the L4 judge")
    warned = [r.getMessage() for r in caplog.records if "L4 judge" in r.getMessage()]
    assert warned == [sel.notes[0]]


def test_a_model_never_sampled_has_no_fractions_to_preview():
    import tiny_models as tm
    from precise_edit.nodes.families import FLUX
    from precise_edit.nodes.spot_edit.patch import patch_model, state_of

    clone, state = patch_model(tm.tiny_flux(0), FLUX, Selector(judge="L4"), 2, 0, "cos2")
    assert state_of(clone) is state and state.fractions() == []
    assert state_of(tm.tiny_flux(0)) is None
