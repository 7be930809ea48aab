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


# -- the authors' decision ("authors code" mode): model space, their dilation, user masks --------

def _run(family):
    return types.SimpleNamespace(family=family, vae_loaded=False, model_patcher=None, ref_feats=None, judge="")


def _model_and_user_pair():
    """Model-space estimate: token (1, 3) sign-flipped, token (2, 1) unrelated noise; the
    user-space pair differs only at token (0, 0), so a judge in the wrong space picks that one."""
    y_m = torch.randn(1, 16, *HW, generator=torch.Generator().manual_seed(0))
    x_m = y_m.clone()
    x_m[:, :, 2:4, 6:8] = -x_m[:, :, 2:4, 6:8]
    x_m[:, :, 4:6, 2:4] = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(1))
    y_u = torch.zeros(1, 16, *HW)
    x_u = y_u.clone()
    x_u[:, :, 0:2, 0:2] = 5.0
    return x_m, y_m, x_u, y_u


@pytest.mark.parametrize("judge,tau", [("L4", 1.0), ("cosine", 0.5)])
def test_authors_judges_work_in_model_space(judge, tau):
    """Their L4 reuses a token whose score is below tau; their cosine tau is a similarity
    (reuse above it): the flipped (-1) and the unrelated (~0) token are computed, both in
    model space."""
    from precise_edit.nodes.families import FLUX

    x_m, y_m, x_u, y_u = _model_and_user_pair()
    active = Selector(judge=judge, tau=tau).authors_active(x_m, y_m, x_u, y_u, HW, 2, _run(FLUX))
    assert torch.equal(active, _expected((1, 3), (2, 1)))
    if judge == "cosine":  # a similarity above every token's: nothing is reused
        active = Selector(judge=judge, tau=1.5).authors_active(x_m, y_m, x_u, y_u, HW, 2, _run(FLUX))
        assert bool(active.all())


def test_authors_perceptual_judge_on_flux_uses_the_user_space_path():
    """FLUX: their perceptual judge runs on the decoded (user-space) pair; a VAE with no
    feature path falls back to L4 and the run reports it."""
    from precise_edit.nodes.families import FLUX

    x_m, y_m, x_u, y_u = _model_and_user_pair()
    run = _run(FLUX)
    vae = types.SimpleNamespace(first_stage_model=torch.nn.Identity())
    active = Selector(judge="perceptual", tau=1.0, vae=vae).authors_active(x_m, y_m, x_u, y_u, HW, 2, run)
    assert torch.equal(active, _expected((0, 0)))
    assert run.judge == "L4 (perceptual unavailable: no perceptual features for a Identity VAE)"


def test_authors_dilation_grows_the_reused_set_on_flux_and_the_computed_set_on_qwen():
    from precise_edit.nodes.families import FLUX, QWEN_IMAGE

    y = torch.randn(1, 16, *HW, generator=torch.Generator().manual_seed(0))
    x = y.clone()
    x[:, :, 0:6, 0:6] = -x[:, :, 0:6, 0:6]  # tokens rows 0-2, columns 0-2 changed
    block = torch.zeros(4, 6, dtype=torch.bool)
    block[:3, :3] = True
    sel = Selector(judge="L4", tau=1.0, dilation=0)
    assert torch.equal(sel.authors_active(x, y, x, y, HW, 2, _run(FLUX)), block)
    sel.dilation = 1
    flux = sel.authors_active(x, y, x, y, HW, 2, _run(FLUX))
    want = torch.zeros(4, 6, dtype=torch.bool)
    want[:2, :2] = True  # tokens next to a reused one are reused too
    assert torch.equal(flux, want)
    qwen = sel.authors_active(x, y, x, y, HW, 2, _run(QWEN_IMAGE))
    want = torch.zeros(4, 6, dtype=torch.bool)
    want[:4, :4] = True  # the computed set grows by one token
    assert torch.equal(qwen, want)


def test_authors_user_mask_modes():
    from precise_edit.nodes.families import FLUX

    x_m, y_m, x_u, y_u = _model_and_user_pair()
    mask = torch.zeros(1, 64, 96)
    mask[0, 16:32, 48:64] = 1  # token (1, 3)
    mask[0, 48:64, 80:96] = 1  # token (3, 5)
    got = {mode: Selector(judge="L4", tau=1.0, mask=mask, mode=mode).authors_active(x_m, y_m, x_u, y_u, HW, 2,
                                                                                   _run(FLUX))
           for mode in ("union", "intersect", "replace")}
    assert torch.equal(got["union"], _expected((1, 3), (2, 1), (3, 5)))
    assert torch.equal(got["intersect"], _expected((1, 3)))
    assert torch.equal(got["replace"], _expected((1, 3), (3, 5)))


def test_authors_qwen_perceptual_judge_loads_once_and_encodes_the_reference_once(monkeypatch):
    """Qwen-Image: their 16-frame feature path in model space (the user-space pair is equal,
    so any other path computes nothing); the VAE is loaded once, with the diffusion model,
    and the reference's features are computed once per run."""
    import tiny_models as tm
    from precise_edit.nodes.families import QWEN_IMAGE
    from precise_edit.nodes.spot_edit import patch as spot_patch

    vae = tm.tiny_wan_vae()
    w = next(vae.first_stage_model.parameters())
    vae.device, vae.vae_dtype = w.device, w.dtype  # load_vae is stubbed: the VAE stays as built
    mean, std = torch.linspace(-0.5, 0.5, 16), torch.linspace(0.5, 2.0, 16)
    y_m = torch.randn(1, 16, *HW, generator=torch.Generator().manual_seed(0))
    x_m = y_m.clone()
    x_m[:, :, 0:2, 0:2] += 3.0  # token (0, 0)
    same = torch.zeros(1, 16, *HW)
    loads, passes = [], []
    real = spot_patch.authors_qwen_features
    monkeypatch.setattr(spot_patch, "load_vae", lambda *a: loads.append(a))

    def feats(v, latent, m, s):
        assert v is vae and torch.equal(m, mean) and torch.equal(s, std)
        passes.append("reference" if torch.equal(latent, y_m) else "estimate")
        return real(v, latent, m, s)

    monkeypatch.setattr(spot_patch, "authors_qwen_features", feats)
    run = _run(QWEN_IMAGE)
    run.model_patcher = object()
    sel = Selector(judge="perceptual", tau=1e-3, vae=vae)
    for _ in range(2):  # the change and its neighbours (the decoder's receptive field) are computed
        active = sel.authors_active(x_m, y_m, same, same, HW, 2, run, (mean, std))
        assert torch.equal(active, _expected((0, 0), (0, 1), (1, 0), (1, 1)))
    assert loads == [(vae, run.model_patcher)]
    assert passes == ["reference", "estimate", "estimate"]
    # the same call with the model-space pair equal: nothing changed, nothing computed
    run2 = _run(QWEN_IMAGE)
    assert not bool(sel.authors_active(y_m, y_m, same, same, HW, 2, run2, (mean, std)).any())


def test_perceptual_judge_loads_the_vae_with_the_diffusion_model(monkeypatch):
    """The pack's perceptual judge during a run: one load of the VAE, together with the
    model being sampled (so loading the VAE does not push the model out), and one pass over
    the reference."""
    import tiny_models as tm
    from precise_edit.nodes.families import FLUX
    from precise_edit.nodes.spot_edit import patch as spot_patch

    vae = tm.tiny_taesd_vae(16)
    w = next(vae.first_stage_model.parameters())
    vae.device, vae.vae_dtype = w.device, w.dtype  # load_vae is stubbed: the VAE stays as built
    loads = []
    monkeypatch.setattr(spot_patch, "load_vae", lambda *a: loads.append(a))
    x0, y = _pair()
    run = _run(FLUX)
    run.model_patcher = object()
    sel = Selector(judge="perceptual", tau=1e-9, vae=vae)
    sel.active(x0, y, HW, 2, run)
    sel.active(x0, y, HW, 2, run)
    assert loads == [(vae, run.model_patcher)]
    assert not sel.notes
    run2 = _run(FLUX)
    sel.active(x0, y, HW, 2, run2)  # no model patcher known: the VAE alone
    assert loads[1:] == [(vae,)]


def test_judge_and_mode_descriptions_shown_on_the_nodes():
    """The text SpotSelector and SpotEditPreview show for each judge and mode, whole."""
    import tiny_models as tm
    from precise_edit.nodes.families import FLUX, QWEN_IMAGE
    from precise_edit.nodes.spot_edit.patch import SpotState

    assert Selector(judge="L4").describe() == "L4 (mean |difference|^4 over latent channels)"
    assert Selector(judge="cosine").describe() == "cosine (1 - token cosine similarity)"
    authors = ("authors code: their full steps (0-3, 13, 22, 31 of 50, scaled to the step count), their cache "
               "(a = cos^2(pi/2 * sigma/1000), latest keys of every token), settled tokens keep the previous "
               "step's velocity")
    assert SpotState(FLUX, 2, Selector(), 4, 9, "cos2", "authors code").describe() == authors
    assert SpotState(QWEN_IMAGE, 2, Selector(), 4, 9, "cos2", "authors code").describe() == \
        authors + "; Qwen-Image: selection kept until the next full step"
    assert SpotState(QWEN_IMAGE, 2, Selector(), 4, 9, "static").describe() == \
        "paper: warm-up 4, a full step every 9 steps, static fusion, settled tokens land on the source"
