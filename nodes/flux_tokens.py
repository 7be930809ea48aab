"""Run ComfyUI's own FLUX or Qwen-Image on a subset of image tokens, with recorded keys/values.

Installed into a sampling run's ``model_options`` (never into the user's model), through
ComfyUI's own hooks only:

* FLUX: a ``post_input`` patch drops image tokens that are not computed, before rotary
  embeddings (reference tokens of FLUX.1 Kontext are kept unless the plan says otherwise);
  Qwen-Image (which has no ``post_input`` hook): a ``dit`` replace of every block drops the
  rows and the matching rotary embeddings;
* ``transformer_options["optimized_attention_override"]`` sees q/k/v after RoPE in every
  double and single block: it records background keys/values, appends cached ones (with an
  optional logit bias), or applies KV-Edit's mask-guided pattern; an override that was
  already there is chained, not replaced;
* a ``dit`` replace of the last block (FLUX: last single block) puts the dropped rows back
  (as zeros) before the final layer, so the model's output has its usual shape.

What one evaluation does is described by a :class:`TokenPlan` that the caller sets on the
:class:`TokenController` before each model call; with no plan the patches do nothing.
On the computed tokens the result equals the full forward to float precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..kernels.kv_attention import append_cached, extend_bias, extra_length, mask_guided_bias

Block = tuple[str, int]


@dataclass
class TokenPlan:
    n_img: int                                   # image tokens of the latent (before reference tokens)
    keep: torch.Tensor | None = None             # image-token indices computed; None = all
    keep_ref: bool = True                        # keep the reference tokens (after the image tokens)
    record_idx: torch.Tensor | None = None       # indices into [image | reference] whose k/v are recorded
    record_all: bool = False                     # record every image and reference token
    record: Callable[[Block, torch.Tensor, torch.Tensor], None] | None = None
    # cached keys/values for a block: tensors, or sequences of parts (joined with the computed ones in one cat)
    cached: Callable[[Block, torch.device, torch.dtype], tuple | None] | None = None
    cached_bias: float = 0.0                     # added to the logits of every cached key
    guided_fg: torch.Tensor | None = None        # bool over image tokens: mask-guided attention


class TokenController:
    """Owns the patches; ``plan`` decides what the next model evaluation does.

    ``arch`` is ``"flux"`` (``n_last``: number of single blocks) or ``"qwen_image"``
    (``n_last``: number of transformer blocks)."""

    def __init__(self, n_last: int, arch: str = "flux"):
        if n_last < 1:
            raise ValueError("this model has no transformer blocks to patch")
        if arch not in ("flux", "qwen_image"):
            raise ValueError(f"unsupported architecture {arch}")
        self.arch = arch
        self.n_blocks = n_last
        self.last_single = n_last - 1
        self.plan: TokenPlan | None = None
        self.calls = 0
        self._txt_len = 0
        self._n_seq = 0
        self._keep_seq: torch.Tensor | None = None
        # positions of the last evaluation's [image | reference] tokens, before any were dropped:
        # FLUX: their ids; Qwen-Image: their rotary embeddings (2x2 matrices)
        self.last_img_ids: torch.Tensor | None = None
        self.last_img_pe: torch.Tensor | None = None

    # -- installation ----------------------------------------------------------------------
    def install(self, model_options: dict) -> dict:
        """Add the patches to ``model_options`` (a sampling run's private copy) and return it."""
        to = model_options.setdefault("transformer_options", {})
        previous = to.get("optimized_attention_override")
        to["optimized_attention_override"] = self._make_override(previous)
        replace = to.setdefault("patches_replace", {}).setdefault("dit", {})
        if self.arch == "flux":
            to.setdefault("patches", {})
            to["patches"]["post_input"] = to["patches"].get("post_input", []) + [self._post_input]
            key = ("single_block", self.last_single)
            replace[key] = self._make_last_block(replace.get(key))
        else:
            for i in range(self.n_blocks):
                key = ("double_block", i)
                replace[key] = self._make_qwen_block(i, replace.get(key))
        return model_options

    def _keep_indices(self, plan: TokenPlan, device) -> torch.Tensor:
        parts = [plan.keep.to(device)]
        if plan.keep_ref:
            parts.append(torch.arange(plan.n_img, self._n_seq, device=device))
        return torch.cat(parts)

    # -- patches ---------------------------------------------------------------------------
    def _post_input(self, args: dict) -> dict:
        plan = self.plan
        img, img_ids = args["img"], args["img_ids"]
        self._txt_len = args["txt"].shape[1]
        self._n_seq = img.shape[1]
        self._keep_seq = None
        self.calls += 1
        self.last_img_ids = img_ids
        if plan is None or plan.keep is None:
            return args
        if self._n_seq < plan.n_img:
            raise ValueError(f"the model sees {self._n_seq} image tokens, the plan expects {plan.n_img}")
        keep = self._keep_indices(plan, img.device)
        self._keep_seq = keep
        out = dict(args)
        out["img"] = img[:, keep]
        out["img_ids"] = img_ids[:, keep] if img_ids is not None else None
        return out

    def _make_override(self, previous):
        def override(func, q, k, v, heads, *args, **kwargs):
            if args:  # Qwen-Image passes the mask positionally
                kwargs["mask"], args = args[0], args[1:]
            plan = self.plan
            if plan is not None:
                to = kwargs.get("transformer_options") or {}
                block = (to.get("block_type", "double"), int(to.get("block_index", 0)))
                mask = kwargs.pop("mask", None)
                if plan.record is not None:
                    if plan.record_all:
                        plan.record(block, k[:, :, self._txt_len:], v[:, :, self._txt_len:])
                    else:
                        idx = plan.record_idx.to(k.device) + self._txt_len
                        plan.record(block, k[:, :, idx], v[:, :, idx])
                if plan.guided_fg is not None:
                    guided = mask_guided_bias(self._txt_len, plan.guided_fg, self._n_seq - plan.n_img,
                                              q.dtype, q.device)
                    mask = guided if mask is None else mask + guided
                if plan.cached is not None:
                    extra = plan.cached(block, k.device, k.dtype)
                    n_extra = extra_length(extra[0]) if extra is not None else 0
                    if n_extra > 0:
                        lk = k.shape[2]
                        k, v = append_cached(k, v, extra[0], extra[1])
                        mask = extend_bias(mask, q.shape[2], lk, n_extra, plan.cached_bias, q.dtype, q.device)
                kwargs["mask"] = mask
            if previous is not None:
                return previous(func, q, k, v, heads, *args, **kwargs)
            return func(q, k, v, heads, *args, **kwargs)

        return override

    def _make_last_block(self, previous):
        def last_block(args: dict, extra: dict) -> dict:
            out = previous(args, extra) if previous is not None else extra["original_block"](args)
            keep = self._keep_seq
            if keep is None:
                return out
            img = out["img"]  # FLUX single blocks carry [text | image]
            full = img.new_zeros(img.shape[0], self._txt_len + self._n_seq, img.shape[2])
            full[:, :self._txt_len] = img[:, :self._txt_len]
            full[:, self._txt_len + keep] = img[:, self._txt_len:]
            out = dict(out)
            out["img"] = full
            return out

        return last_block

    def _make_qwen_block(self, index: int, previous):
        def block(args: dict, extra: dict) -> dict:
            args = dict(args)
            if index == 0:
                self._txt_len = args["txt"].shape[1]
                self._n_seq = args["img"].shape[1]
                self._keep_seq = None
                self.calls += 1
                self.last_img_pe = args["pe"][:, :, self._txt_len:] if args.get("pe") is not None else None
                plan = self.plan
                if plan is not None and plan.keep is not None:
                    keep = self._keep_indices(plan, args["img"].device)
                    self._keep_seq = keep
                    args["img"] = args["img"][:, keep]
                    self._pe_keep = torch.cat((torch.arange(self._txt_len, device=keep.device),
                                               self._txt_len + keep))
            keep = self._keep_seq
            if keep is not None:
                args["pe"] = args["pe"][:, :, self._pe_keep]
            out = previous(args, extra) if previous is not None else extra["original_block"](args)
            if keep is not None and index == self.n_blocks - 1:
                img = out["img"]  # Qwen-Image's image stream alone
                full = img.new_zeros(img.shape[0], self._n_seq, img.shape[2])
                full[:, keep] = img
                out = dict(out)
                out["img"] = full
            return out

        return block



class VelocityProbe:
    """``DIFFUSION_MODEL`` wrapper that keeps the raw model output (the velocity of a
    rectified-flow model), which ComfyUI's denoised value cannot give back at sigma 0."""

    KEY = "precise_edit_velocity_probe"

    def __init__(self):
        self.outputs: list[torch.Tensor] = []

    def install(self, model_options: dict) -> dict:
        import comfy.patcher_extension as pe

        pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, self.KEY, self._wrap, model_options,
                                is_model_options=True)
        return model_options

    def _wrap(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        self.outputs.append(out)
        return out

    def take(self) -> torch.Tensor:
        if len(self.outputs) != 1:
            n = len(self.outputs)
            self.outputs.clear()
            raise RuntimeError(f"expected one model evaluation, saw {n} (conditioning with several "
                               f"areas or batches is not supported here)")
        return self.outputs.pop().float()
