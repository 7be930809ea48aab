"""kernels/guidance.py: schedules, the instruction-strength text scale and the dynamic negative
guidance posterior against a direct implementation of the authors' update."""
from __future__ import annotations

import math

import pytest
import torch

from precise_edit.kernels import guidance as G


def test_constant_linear_cosine_schedules_exact():
    assert G.schedule("constant", 4, 7.5, 1.0) == [7.5] * 4
    assert G.schedule("linear", 5, 8.0, 4.0) == pytest.approx([8.0, 7.0, 6.0, 5.0, 4.0], abs=1e-12)
    cos = G.schedule("cosine", 5, 8.0, 4.0)
    want = [4.0 + 4.0 * (1 + math.cos(math.pi * i / 4)) / 2 for i in range(5)]
    assert cos == pytest.approx(want, abs=1e-12)
    assert cos[0] == 8.0 and cos[-1] == pytest.approx(4.0) and cos[2] == pytest.approx(6.0)
    assert G.schedule("linear", 1, 8.0, 4.0) == [8.0]


def test_list_schedule_takes_one_value_per_step():
    assert G.schedule("list", 3, 0.0, values="7.5, 6 5.5") == [7.5, 6.0, 5.5]
    with pytest.raises(G.GuidanceError, match="3 value.*4 step"):
        G.schedule("list", 4, 0.0, values="7.5, 6, 5.5")
    with pytest.raises(G.GuidanceError, match="not a number"):
        G.schedule("list", 2, 0.0, values="7.5, x")
    with pytest.raises(G.GuidanceError, match="schedule must be"):
        G.schedule("zigzag", 2, 1.0)


def test_scale_from_strength_is_monotone_and_bounded():
    vals = [G.scale_from_strength(s, 4.0, 12.0) for s in (-1, 0, 0.25, 0.5, 1, 2)]
    assert vals == [4.0, 4.0, 6.0, 8.0, 12.0, 12.0]
    with pytest.raises(G.GuidanceError):
        G.scale_from_strength(0.5, 5.0, 4.0)


# --------------------------------------------------------------------------- DNG posterior

def _authors_posterior(alphas, abar, t, p_prev, new_x, x, eps, eps_bad, temp, p_min, p_max, offset):
    """Direct implementation of the update in the authors' paper / repository (Alg. 1), in their
    variance-preserving DDPM coordinates: DDPM means of x_t under both predictions, the DDPM
    posterior variance, p <- clamp(p exp((-T (|x_t - mu_bad|^2 - |x_t - mu|^2) + offset) / (2 s^2)))."""
    a_t, ab_t = alphas[t], abar[t]
    ab_prev = abar[t - 1] if t > 0 else ab_t
    var = (1 - ab_prev) / (1 - ab_t) * (1 - a_t)
    mu = (x - (1 - a_t) / torch.sqrt(1 - ab_t) * eps) / torch.sqrt(a_t)
    mu_bad = (x - (1 - a_t) / torch.sqrt(1 - ab_t) * eps_bad) / torch.sqrt(a_t)
    diff = ((new_x - mu_bad) ** 2).flatten(1).sum(1) - ((new_x - mu) ** 2).flatten(1).sum(1)
    return torch.clamp(p_prev * torch.exp((-temp * diff + offset) / (2 * var)), p_min, p_max)


@pytest.mark.parametrize("temp, offset, prior, p_max", [(1.0, 0.0, 0.2, 0.99), (0.2, 2e-4, 0.01, 0.8),
                                                        (3.0, 0.5, 0.5, 0.95)])
def test_dng_posterior_matches_the_authors_update_on_recorded_predictions(temp, offset, prior, p_max):
    """A DDPM chain with recorded (random) predictions of the reference and the negative model,
    sampled with the authors' guided update. Our posterior, fed the same chain in ComfyUI's sigma
    space (x / sqrt(alpha_bar), denoised = x - sigma eps), must give the same p at every step."""
    torch.manual_seed(3)
    T, B = 30, 3
    betas = torch.linspace(1e-3, 0.2, T, dtype=torch.float64)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    lam, p_min = 2.0, 1e-6
    x = torch.randn(B, 4, 6, 6, dtype=torch.float64)
    settings = G.DNGSettings(scale=lam, prior=prior, temperature=temp, offset=offset, p_min=p_min, p_max=p_max)
    ours = G.DNGState(settings, B)
    p = torch.full((B,), prior, dtype=torch.float64)
    for t in reversed(range(1, T)):
        eps = torch.randn_like(x) * 0.5 + 0.5 * x / torch.sqrt(1 - abar[t])
        eps_bad = eps + 0.3 * torch.randn_like(x)
        sigma = math.sqrt((1 - abar[t]) / abar[t])
        # ours: observe at this step (updates from the previous one), then its scale
        x_ve = x / torch.sqrt(abar[t])
        lam_ours = ours.observe(x_ve, sigma, x_ve - sigma * eps, x_ve - sigma * eps_bad)
        lam_theirs = lam * p / (1 - p)
        assert torch.allclose(lam_ours, lam_theirs, rtol=1e-9, atol=1e-12), t
        guided = eps - lam_theirs[:, None, None, None] * (eps_bad - eps)
        new_x = (x - betas[t] / torch.sqrt(1 - abar[t]) * guided) / torch.sqrt(alphas[t])
        new_x = new_x + torch.sqrt(betas[t]) * torch.randn_like(x)
        p = _authors_posterior(alphas, abar, t, p, new_x, x, eps, eps_bad, temp, p_min, p_max, offset)
        x = new_x
    sigma0 = math.sqrt((1 - abar[0]) / abar[0])
    x_ve = x / torch.sqrt(abar[0])
    lam_ours = ours.observe(x_ve, sigma0, x_ve, x_ve)
    assert torch.allclose(ours.p, p, rtol=1e-9, atol=1e-12)
    assert len(set(round(v, 6) for v in ours.history)) > 3  # the posterior actually moved


def test_dng_posterior_rises_when_the_chain_follows_the_negative():
    s = G.DNGSettings(scale=1.0, prior=0.2, temperature=1.0)
    st = G.DNGState(s, 1)
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.5]
    x = torch.zeros(1, 2, 4, 4)
    d_ref, d_neg = torch.zeros_like(x), torch.ones_like(x)
    for s0, s1 in zip(sigmas, sigmas[1:]):
        st.observe(x, s0, d_ref, d_neg)
        x = G.ddpm_means(x, s0, s1, d_neg)  # follow the negative's mean exactly
    st.observe(x, sigmas[-1], d_ref, d_neg)
    assert float(st.p) > 0.2
    st2 = G.DNGState(s, 1)
    x = torch.zeros(1, 2, 4, 4)
    for s0, s1 in zip(sigmas, sigmas[1:]):
        st2.observe(x, s0, d_ref, d_neg)
        x = G.ddpm_means(x, s0, s1, d_ref)
    st2.observe(x, sigmas[-1], d_ref, d_neg)
    assert float(st2.p) < 0.2


def test_dng_updates_once_per_step_and_checks_settings():
    s = G.DNGSettings(prior=0.3)
    st = G.DNGState(s, 1)
    x = torch.randn(1, 2, 3, 3)
    st.observe(x, 2.0, x, x + 1)
    st.observe(x, 2.0, x, x + 1)  # a second call at the same sigma (second-order sampler): no update
    assert float(st.p) == pytest.approx(0.3)
    with pytest.raises(G.GuidanceError, match="prior"):
        G.DNGState(G.DNGSettings(prior=1.0), 1)
    with pytest.raises(G.GuidanceError, match="p_max"):
        G.DNGState(G.DNGSettings(p_min=0.5, p_max=0.4), 1)
