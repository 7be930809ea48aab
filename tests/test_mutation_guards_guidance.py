"""kernels/guidance.py: settings and edge cases the mutation run found unguarded (issue 14): the
values a schedule accepts, the messages on bad settings, and the DNG posterior at its limits."""
from __future__ import annotations

import pytest
import torch

from precise_edit.kernels import guidance as G


def test_list_schedules_from_text_or_numbers():
    assert G.schedule("list", 3, 0.0, values="7.5;6\n5.5") == [7.5, 6.0, 5.5]
    assert G.schedule("list", 2, 0.0, values=[4, 3.5]) == [4.0, 3.5]
    assert G.parse_values(None) == []
    with pytest.raises(G.GuidanceError) as e:
        G.schedule("list", 2, 0.0, values=None)
    assert str(e.value) == ("the values list has 0 value(s) but the sampler runs 2 step(s); give exactly one value "
                            "per step")


def test_messages_on_bad_settings():
    with pytest.raises(G.GuidanceError) as e:
        G.schedule("linear", 0, 1.0)
    assert str(e.value) == "steps must be >= 1, got 0"
    with pytest.raises(G.GuidanceError) as e:
        G.schedule("zigzag", 2, 1.0)
    assert str(e.value) == "schedule must be one of constant, linear, cosine, list, got 'zigzag'"
    with pytest.raises(G.GuidanceError) as e:
        G.scale_from_strength(0.5, 5.0, 4.0)
    assert str(e.value) == "the upper bound (4.0) is below the lower bound (5.0)"
    assert G.scale_from_strength(0.7, 5.0, 5.0) == 5.0  # equal bounds: a fixed scale


@pytest.mark.parametrize("kw, ok", [
    (dict(prior=0.0), False), (dict(prior=1e-9), True), (dict(prior=0.999), True),
    (dict(p_min=0.0), True), (dict(p_min=0.5, p_max=0.5), False), (dict(p_max=1.0), False),
    (dict(p_max=0.999999), True), (dict(p_min=-0.1), False),
])
def test_posterior_settings_limits(kw, ok):
    s = G.DNGSettings(**kw)
    if ok:
        G.DNGState(s, 2)
    else:
        with pytest.raises(G.GuidanceError):
            G.DNGState(s, 2)


def test_posterior_at_the_last_step_and_when_it_breaks_down():
    s = G.DNGSettings(p_min=0.0)
    x, mu_ref, mu_neg = torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1, 4)
    p = torch.tensor([0.3])
    assert G.posterior_update(p, x, mu_ref, mu_neg, 0.0, s) is p  # sigma' = 0: no update
    st = G.DNGState(G.DNGSettings(prior=0.3), 1)
    st.observe(torch.zeros(1, 4), 1.0, torch.zeros(1, 4), torch.ones(1, 4))
    st.observe(torch.ones(1, 4), 0.0, torch.zeros(1, 4), torch.ones(1, 4))  # the last step, sigma 0
    assert float(st.p) == pytest.approx(0.3) and st.history == pytest.approx([0.3, 0.3])
    # p = 0 times an overflowing factor is NaN: named, never passed on
    with pytest.raises(G.GuidanceError) as e:
        G.posterior_update(torch.zeros(1), x, mu_neg, mu_ref, 1e-6, s)
    assert str(e.value) == "the negative-guidance posterior became NaN; lower p_max"
    # the posterior keeps the caller's dtype
    out = G.posterior_update(torch.tensor([0.3]), x, mu_ref, mu_neg, 1.0, s)
    assert out.dtype == torch.float32 and 0.0 < float(out) < 0.3
