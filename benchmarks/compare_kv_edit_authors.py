"""Compare the pack's KV-Edit nodes with the authors' released code on identical tiny weights.

Their code is never part of this repository: give the path of a checkout of
https://github.com/Xilluill/KV-Edit at commit 77129a2 (any folder holding its ``flux/`` and
``models/`` packages). It is imported from there unmodified; ``imwatermark`` (used only by
their image saving, absent here) is replaced by an empty module when missing, and the
``attn_scale`` bias they build in bf16 (their model runs in bf16; SDPA refuses a bf16 bias with
fp32 queries) is handed to SDPA as float32, which holds the same values (0 and the scale).

Both sides run ComfyUI's FLUX state dict (random tiny weights, fp32, CPU): their ``Flux_kv``
gets ``load_state_dict`` of the same tensors (the keys are identical). Inputs: a 64x96 image
(8x12 latent, 24 tokens), 512 text tokens (their code hard-codes 512), their shifted
schedule given to the nodes as SIGMAS, ``mask_resize = bilinear`` (their mask resize), the
nodes in "authors code" mode, the noise their code draws passed as a NOISE input.

    .venv/bin/python benchmarks/compare_kv_edit_authors.py /tmp/authors/KV-Edit [--steps 8]

Prints one row per setting with the largest absolute difference of the final latent (model
space) and exits non-zero when any exceeds the tolerance (1e-4).
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # their loops print progress bars
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401  (ComfyUI on sys.path, CPU, pack importable as precise_edit)

import torch  # noqa: E402
from einops import rearrange  # noqa: E402

import tiny_models as tm  # noqa: E402
from precise_edit.nodes.kv_edit.nodes import KVEditInversionFree, KVEditSampler, KVInvert  # noqa: E402

TOL = 1e-4
TXT = 512
H, W = 64, 96


class Noise:
    """A ComfyUI NOISE object returning a fixed tensor."""

    def __init__(self, t):
        self.t = t
        self.seed = 0

    def generate_noise(self, latent):
        return self.t.clone()


def authors_modules(path: Path):
    if not (path / "flux" / "model.py").is_file() or not (path / "models" / "kv_edit.py").is_file():
        raise SystemExit(f"{path} does not look like a checkout of Xilluill/KV-Edit (flux/model.py, models/kv_edit.py)")
    try:
        importlib.import_module("imwatermark")
    except ImportError:
        class WatermarkEncoder:  # their flux.util builds one at import; never used here
            def set_watermark(self, *args, **kwargs):
                pass

        stub = types.ModuleType("imwatermark")
        stub.WatermarkEncoder = WatermarkEncoder
        sys.modules["imwatermark"] = stub
    sys.path.insert(0, str(path))
    model = importlib.import_module("flux.model")
    sampling = importlib.import_module("flux.sampling")
    kv = importlib.import_module("models.kv_edit")
    make_scale = kv.only_Flux.create_attention_scale

    def float_scale(self, *a, **kw):  # they build the bias in bf16 (their model runs in bf16); the
        return make_scale(self, *a, **kw).float()  # values (0, attn_scale) are exact in bf16: same bias in fp32

    kv.only_Flux.create_attention_scale = float_scale
    return model, sampling, kv


def their_model(model_mod, comfy_model):
    cfg = tm.flux_config()
    p = model_mod.FluxParams(in_channels=64, vec_in_dim=cfg["vec_in_dim"], context_in_dim=cfg["context_in_dim"],
                             hidden_size=cfg["hidden_size"], mlp_ratio=cfg["mlp_ratio"], num_heads=cfg["num_heads"],
                             depth=cfg["depth"], depth_single_blocks=cfg["depth_single_blocks"],
                             axes_dim=cfg["axes_dim"], theta=cfg["theta"], qkv_bias=cfg["qkv_bias"],
                             guidance_embed=cfg["guidance_embed"])
    m = model_mod.Flux_kv(p).float()
    missing, unexpected = m.load_state_dict(comfy_model.model.diffusion_model.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"state dict keys differ: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return m.eval()


def pipeline(cls, model):
    obj = cls.__new__(cls)
    torch.nn.Module.__init__(obj)
    obj.device, obj.name, obj.model = "cpu", "flux-dev", model
    return obj


class Opts:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="path of a Xilluill/KV-Edit checkout (77129a2)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--full", action="store_true", help="every combination (slow) instead of a spread of them")
    args = ap.parse_args()
    model_mod, sampling, kv = authors_modules(args.checkout.resolve())
    torch.manual_seed(0)
    comfy = tm.tiny_flux(0)
    theirs = their_model(model_mod, comfy)
    fmt = comfy.model.latent_format
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, H // 8, W // 8, generator=gen)  # model space
    src_txt, tgt_txt = (torch.randn(1, TXT, tm.FLUX_CONTEXT, generator=gen) for _ in range(2))
    src_vec, tgt_vec = (torch.randn(1, tm.FLUX_VEC, generator=gen) for _ in range(2))
    g_src, g_tgt = 1.5, 5.5
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    mask = ((((yy - 30) ** 2 / 300 + (xx - 50) ** 2 / 90) < 1)).float()[None]  # [1, H, W]
    mask[0, 5:9, 70:90] = 1
    packed = rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    ids = torch.zeros(H // 16, W // 16, 3)
    ids[..., 1] += torch.arange(H // 16)[:, None]
    ids[..., 2] += torch.arange(W // 16)[None, :]
    ids = ids.reshape(1, -1, 3)

    def inp(txt, vec):
        return {"img": packed.clone(), "img_ids": ids.clone(), "txt": txt.clone(), "txt_ids": torch.zeros(1, TXT, 3),
                "vec": vec.clone()}

    def cond(txt, vec, g):
        return [[txt.clone(), {"pooled_output": vec.clone(), "guidance": g}]]

    sched = sampling.get_schedule(args.steps, packed.shape[1], shift=True)
    sigmas = torch.tensor(sched, dtype=torch.float32)
    user = fmt.process_out(z.clone())
    unpack = lambda x: sampling.unpack(x.float(), H, W)  # noqa: E731
    rows = []

    print(f"authors' code: {args.checkout} ; tiny FLUX hidden {tm.flux_config()['hidden_size']}, fp32, CPU; "
          f"{args.steps} steps, {packed.shape[1]} image + {TXT} text tokens")
    print()
    print("| variant | mask_guided | attn_scale | skip | reinit | max abs diff (final latent) |")
    print("|---|---|---|---|---|---|")
    grid = list(itertools.product((False, True), (0.0, 1.0), (0, 2), (False, True))) if args.full else [
        (False, 1.0, 2, False), (False, 0.0, 0, False), (False, 1.0, 0, True), (True, 1.0, 2, False),
        (True, 0.0, 2, True), (True, 1.0, 0, False)]
    records = {}
    for guided, scale, skip, reinit in grid:
        if guided not in records:
            records[guided] = KVInvert.execute(comfy, {"samples": user.clone()}, mask, cond(src_txt, src_vec, g_src),
                                               args.steps, guided, "fp32", "cpu", mask_resize="bilinear",
                                               sigmas=sigmas.clone()).args[0]
        rec = records[guided]
        if True:
            if True:
                if True:
                    opts = Opts(height=H, width=W, attn_mask=guided, attn_scale=scale, denoise_num_steps=args.steps,
                                skip_step=skip, inversion_guidance=g_src, denoise_guidance=g_tgt, re_init=reinit)
                    torch.manual_seed(100 + skip)
                    noise_packed = torch.randn_like(packed)  # what their re_init draws (randn_like(zt))
                    torch.manual_seed(100 + skip)
                    with torch.inference_mode():
                        ref = pipeline(kv.Flux_kv_edit, theirs)(inp(src_txt, src_vec), inp(tgt_txt, tgt_vec),
                                                                mask[None].clone(), opts)
                    out = KVEditSampler.execute(comfy, rec, cond(tgt_txt, tgt_vec, g_tgt), 0, skip, reinit, scale,
                                                "authors code", noise=Noise(unpack(noise_packed)),
                                                reinit_from="clean latent (authors' code)").args[0]["samples"]
                    d = (fmt.process_in(out.clone()) - ref).abs().max().item()
                    rows.append(d)
                    print(f"| KV-Edit (inversion) | {guided} | {scale} | {skip} | {reinit} | {d:.2e} |")
    for guided, scale, skip in ((False, 1.0, 2), (True, 1.0, 0), (True, 0.0, 2), (False, 0.0, 0)):
        if True:
            if True:
                opts = Opts(height=H, width=W, attn_mask=guided, attn_scale=scale, denoise_num_steps=args.steps,
                            skip_step=skip, inversion_guidance=g_src, denoise_guidance=g_tgt)
                noise = torch.randn(packed.shape, generator=torch.Generator().manual_seed(0))  # as their loop draws
                with torch.inference_mode():
                    ref = pipeline(kv.Flux_kv_edit_inf, theirs)(inp(src_txt, src_vec), inp(tgt_txt, tgt_vec),
                                                                mask[None].clone(), opts)
                out = KVEditInversionFree.execute(comfy, {"samples": user.clone()}, mask, cond(src_txt, src_vec, g_src),
                                                  cond(tgt_txt, tgt_vec, g_tgt), args.steps, skip, 0, scale, "fp32",
                                                  sigmas=sigmas.clone(), noise=Noise(unpack(noise)),
                                                  mask_guided=guided, mask_resize="bilinear").args[0]["samples"]
                d = (fmt.process_in(out.clone()) - ref).abs().max().item()
                rows.append(d)
                print(f"| inversion-free | {guided} | {scale} | {skip} | - | {d:.2e} |")
    worst = max(rows)
    print(f"\nlargest difference {worst:.2e} (tolerance {TOL:.0e}): {'PASS' if worst <= TOL else 'FAIL'}")
    sys.exit(0 if worst <= TOL else 1)


if __name__ == "__main__":
    main()
