"""The per-block work SpotEdit adds to a selective step, counted in tensor operations.

On a GPU a selective step was launch/memory-bound: every block gathered, rotated, blended and
concatenated the cached keys/values with ~27 operations (H100, 4096 image tokens: ~2 ms per
block beyond its tokens). Per block it now takes one gather each for keys and values (a settled
token's cached and reference entries together), the key blend in float32 with the rotation
pre-scaled once per step (three operations), one ``lerp`` for values and one concatenation
each. The count is the same on every device, so it is checked here on the CPU: the extra
operations per block of a selective step, from the slope between two block counts (per-step
bookkeeping cancels), against the unpatched model."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import comfy.model_management
import comfy.sample
import tiny_models as tm
from precise_edit.nodes.spot_edit import patch as spot_patch
from precise_edit.nodes.spot_edit.nodes import SpotFusionSampler, SpotSelector

VIEWS = {"view", "select", "slice", "unsqueeze", "squeeze", "expand", "alias", "detach", "permute", "transpose",
         "t", "_unsafe_view", "as_strided", "split", "unbind", "split_with_sizes", "_reshape_alias",
         "_local_scalar_dense"}
STEPS = 10


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _ops(model, y, cond):
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), _Count() as c:
        comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", cond, cond, torch.zeros(y.shape),
                            denoise=1.0, seed=0, disable_pbar=True)
    return sum(n for op, n in c.ops.items() if op not in VIEWS), c.ops


def _extra_per_selective_step(family, blocks, authors=False):
    if family == "flux":
        model, shape = tm.tiny_flux(0, depth=1, single=blocks - 1), (1, 16, 8, 12)
    else:
        model, shape = tm.tiny_qwen_image(0, layers=blocks), (1, 16, 1, 8, 12)
    y = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    cond = tm.stub_conditioning(family, "edit", reference_latents=[y])
    mask = torch.zeros(1, 64, 96)
    mask[0, :32, :48] = 1
    sel = SpotSelector.execute("L4", 0.2, 0, "replace", mask=mask).args[0]
    spot = SpotFusionSampler.execute(model, sel, 1, 0, "cos2", "authors code" if authors else "paper").args[0]
    _ops(spot, y, cond)  # first call: one-off set-up
    plain, _ = _ops(model, y, cond)
    patched, ops = _ops(spot, y, cond)
    n_sel = sum(1 for _, full, _ in spot_patch.state_of(spot).fractions() if not full)
    assert n_sel >= 3
    return (patched - plain) / n_sel, ops


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
@pytest.mark.parametrize("authors", [False, True])
def test_a_selective_step_adds_few_operations_per_block(family, authors):
    few, _ = _extra_per_selective_step(family, 2, authors)
    many, ops = _extra_per_selective_step(family, 6, authors)
    per_block = (many - few) / 4
    # paper mode: 2 gathers + 3 (key blend) + 1 cast + 1 lerp + 2 concatenations (+ the model's own
    # handling of fewer tokens); authors code also writes the active tokens' keys/values (2)
    limit = 13 if authors else 11
    assert per_block <= limit, (per_block, ops.most_common(12))
    assert per_block > 3  # the fusion runs per block (a count that cannot be ~0 unless nothing is fused)


def _syncs(model, y, cond):
    import warnings

    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", cond, cond, torch.zeros(y.shape),
                                denoise=1.0, seed=0, disable_pbar=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.skipif(comfy.model_management.get_torch_device().type != "cuda",
                    reason="needs ComfyUI's compute device on a CUDA GPU (PRECISE_EDIT_TEST_DEVICE=cuda)")
@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_a_selective_step_waits_for_the_gpu_at_most_twice(family):
    """The step's bookkeeping runs on the host: the sigma (one read) and the selection's scores
    (one copy) are the only waits a selective step adds to ComfyUI's own."""
    if family == "flux":
        model, shape = tm.tiny_flux(0), (1, 16, 8, 12)
    else:
        model, shape = tm.tiny_qwen_image(0), (1, 16, 1, 8, 12)
    y = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    cond = tm.stub_conditioning(family, "edit", reference_latents=[y])
    mask = torch.zeros(1, 64, 96)
    mask[0, :32, :48] = 1
    sel = SpotSelector.execute("L4", -1.0, 0, "intersect", mask=mask).args[0]  # the judge runs every step
    spot = SpotFusionSampler.execute(model, sel, 1, 0, "cos2").args[0]
    _syncs(spot, y, cond)
    plain = _syncs(model, y, cond)
    patched = _syncs(spot, y, cond)
    n_sel = sum(1 for _, full, _ in spot_patch.state_of(spot).fractions() if not full)
    assert n_sel >= 3
    # every step reads its sigma; a selective step also copies the scores; the run reads its sigmas once
    assert patched - plain <= STEPS + n_sel + 1, (patched, plain, n_sel)
