"""KV-Edit's denoising loop follows the inversion trajectory (issue 14: survivors of mutation
testing of ``nodes/kv_edit/engine.py``). Every model call of an edit is observed through a
``DIFFUSION_MODEL`` wrapper: the background it sees is the recorded trajectory, one interval
later in the authors' code than in the paper form; the SAMPLER reports every step to
ComfyUI's callback (previews, progress)."""
import pytest
import torch

import comfy.patcher_extension as pe
import comfy.samplers
import tiny_models as tm
from precise_edit.nodes.kv_edit import engine as ke
from precise_edit.nodes.kv_edit.nodes import KVEditSampler, KVInvert

H, W = 64, 96


@pytest.fixture(scope="module")
def record(flux):
    lat = {"samples": torch.randn(1, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(1))}
    m = torch.zeros(1, H, W)
    m[0, 16:48, 32:64] = 1
    return KVInvert.execute(flux, lat, m, tm.stub_conditioning("flux", "a cat", guidance=1.5), 5, mask_guided=False,
                            storage="fp32", cache_device="cpu").args[0]


def _inputs(flux, rec, mode, skip):
    seen = []
    probe = flux.clone()

    def wrap(executor, *args, **kwargs):
        seen.append(args[0].detach().cpu().clone())  # compared with the CPU record (also when run on a GPU)
        return executor(*args, **kwargs)

    probe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", wrap)
    KVEditSampler.execute(probe, rec, tm.stub_conditioning("flux", "a dog", guidance=5.5), seed=3,
                          skip_steps=skip, reinit=False, attn_scale=0.0, mode=mode)
    return seen


@pytest.mark.parametrize("mode,offset", [("paper", 0), ("authors code", 1)])
def test_each_model_call_sees_the_recorded_background(flux, record, mode, offset):
    """Paper: step i starts from z_i (skip: z_skip) and pastes z_{i+1} after the step, so the
    model sees the background of z_i; the authors' code pastes z_{i+1} before the call."""
    skip = 1
    seen = _inputs(flux, record, mode, skip)
    n = record.steps
    assert len(seen) == n - skip
    bg = ~record.latent_mask[:, None].expand_as(seen[0]).bool()
    for j, x in enumerate(seen):
        want = record.trajectory[skip + j + offset]
        assert torch.allclose(x[bg], want[bg], atol=1e-6), f"{mode}: call {j}"
        if offset == 0:  # the authors' background is one interval off from the paper's
            other = record.trajectory[skip + j + 1]
            assert not torch.allclose(x[bg], other[bg], atol=1e-3)
    fg = ~bg
    # with no reinitialisation the first call's foreground is the trajectory too
    assert torch.allclose(seen[0][fg], record.trajectory[skip + offset][fg], atol=1e-6)


def test_sampler_reports_every_step_to_comfyui(flux, record):
    """KVEditCustomSampler's SAMPLER under SamplerCustomAdvanced: the callback gets step
    j of n - skip with the current latent (what the preview and the progress bar show)."""
    skip = 2
    calls = []
    guider = comfy.samplers.CFGGuider(flux)
    guider.inner_set_conds({"positive": tm.stub_conditioning("flux", "a dog", guidance=5.5)})
    guider.set_cfg(1.0)
    loop = ke.denoise_loop(record, skip)
    out = guider.sample(torch.zeros_like(record.source_latent), record.source_latent.clone(), ke.LoopSampler(loop),
                        record.sigmas[skip:].clone(), seed=0, disable_pbar=True,
                        callback=lambda j, x0, x, total: calls.append((j, x.clone(), total)))
    n = record.steps
    assert [(j, t) for j, _, t in calls] == [(j, n - skip) for j in range(n - skip)]
    last = flux.model.process_latent_out(calls[-1][1])
    assert torch.allclose(last, out, atol=1e-5)


def _corner_record(flux):
    """A record whose edit region is the bottom-right corner: the last image token is not stored."""
    lat = {"samples": torch.randn(1, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(1))}
    m = torch.zeros(1, H, W)
    m[0, 32:, 64:] = 1
    return KVInvert.execute(flux, lat, m, tm.stub_conditioning("flux", "a cat", guidance=1.5), 3, mask_guided=False,
                            storage="fp32", cache_device="cpu").args[0]


@pytest.mark.parametrize("case", ["last token", "middle token"])
def test_edit_mask_keeping_unrecorded_tokens_is_refused_with_the_fix(flux, record, case):
    """A mask whose background holds tokens of the record's edit region (never recorded) is
    refused with a message, not an index error: the record of the bottom-right corner edited
    elsewhere (the very last token is missing), or the middle record edited on a smaller box."""
    from precise_edit.nodes.common import NodeInputError

    rec = _corner_record(flux) if case == "last token" else record
    m = torch.zeros(1, H, W)
    if case == "last token":
        m[0, 0:32, 0:32] = 1
    else:
        m[0, 16:32, 32:48] = 1
    with pytest.raises(NodeInputError) as e:
        KVEditSampler.execute(flux, rec, tm.stub_conditioning("flux", "a dog", guidance=5.5), seed=3, skip_steps=1,
                              reinit=False, attn_scale=0.0, mode="paper", mask=m)
    assert "mask (its background holds tokens the record did not store: paint a mask that covers the " \
           "record's region, or invert with record_tokens = every image token)" in str(e.value)


def test_edit_computes_only_the_foreground_tokens(flux, record):
    """KV-Edit's saving: during an edit the model's queries are the text and foreground tokens
    only, and the keys add the recorded background (observed by an attention override, which
    the pack chains rather than replaces)."""
    shapes = []

    def spy(func, q, k, v, heads, *args, **kwargs):
        shapes.append((q.shape[2], k.shape[2]))
        return func(q, k, v, heads, *args, **kwargs)

    probe = flux.clone()
    probe.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    cond = tm.stub_conditioning("flux", "a dog", guidance=5.5)
    KVEditSampler.execute(probe, record, cond, seed=3, skip_steps=1, reinit=False, attn_scale=0.0, mode="paper")
    n_bg = int((~record.token_mask.bool()).sum())
    n_fg = int(record.token_mask.bool().sum())
    assert n_bg > 0 and n_fg > 0 and shapes
    full = cond[0][0].shape[1] + record.token_mask.numel()   # text + every image token
    for q, k in shapes:
        assert q == full - n_bg and k == full, (q, k, full, n_bg)
