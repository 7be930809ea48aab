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

``--time`` times the two side by side instead (the performance item of the fidelity issue):
ComfyUI's FLUX at hidden 1024 (8 heads, 2 double + 4 single blocks, fp32, CPU), a 512x512
image (1024 image tokens) with 512 text tokens, 8 steps, skip 2, a 25% mask; their
``inverse`` (which runs the steps after ``skip`` only) against KVInvert with
``record_from_step = skip`` (bf16 and fp32 records, in CPU memory), their ``denoise`` against
KVEditSampler, and the two FLUX implementations alone (every token, as many calls as the inversion);
interleaved, one warm-up round dropped, median and best of ``--runs``.
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
if "--pytorch-attention" in sys.argv:  # ComfyUI's --use-pytorch-cross-attention (its GPU default; the
    # CPU default is sub-quadratic attention), set before ComfyUI picks its attention function
    sys.path.insert(0, str(Path(os.environ.get("COMFYUI_PATH", ROOT / ".host" / "ComfyUI")).resolve()))
    import comfy.options  # noqa: E402

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args as comfy_args  # noqa: E402

    comfy_args.use_pytorch_cross_attention = True
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


def their_model(model_mod, comfy_model, **size):
    cfg = tm.flux_config(**size)
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


def packed_ids(h: int, w: int) -> torch.Tensor:
    """Their image position ids for an ``h x w`` pixel image."""
    ids = torch.zeros(h // 16, w // 16, 3)
    ids[..., 1] += torch.arange(h // 16)[:, None]
    ids[..., 2] += torch.arange(w // 16)[None, :]
    return ids.reshape(1, -1, 3)


def timing(args, model_mod, sampling, kv) -> None:
    import platform
    import statistics
    import time

    side = args.time_side
    size = dict(hidden=1024, heads=8, depth=2, single=4)
    torch.manual_seed(0)
    comfy = tm.tiny_flux(0, **size)
    theirs = their_model(model_mod, comfy, **size)
    fmt = comfy.model.latent_format
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, side // 8, side // 8, generator=gen)
    txt = [torch.randn(1, TXT, tm.FLUX_CONTEXT, generator=gen) for _ in range(2)]
    vec = [torch.randn(1, tm.FLUX_VEC, generator=gen) for _ in range(2)]
    mask = torch.zeros(1, side, side)
    q = side // 2
    mask[0, q // 2: q // 2 + q, q // 2: q // 2 + q] = 1  # 25% of the image, on the token grid
    packed = rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    ids = packed_ids(side, side)
    steps, skip = args.steps, args.skip
    sigmas = torch.tensor(sampling.get_schedule(steps, packed.shape[1], shift=True), dtype=torch.float32)
    opts = Opts(height=side, width=side, attn_mask=False, attn_scale=1.0, denoise_num_steps=steps,
                skip_step=skip, inversion_guidance=1.5, denoise_guidance=5.5, re_init=False)
    user = fmt.process_out(z.clone())
    pipe = pipeline(kv.Flux_kv_edit, theirs)

    def inp(i):
        return {"img": packed.clone(), "img_ids": ids.clone(), "txt": txt[i].clone(),
                "txt_ids": torch.zeros(1, TXT, 3), "vec": vec[i].clone()}

    def cond(i, g):
        return [[txt[i].clone(), {"pooled_output": vec[i].clone(), "guidance": g}]]

    def ours_invert(storage):
        return KVInvert.execute(comfy, {"samples": user.clone()}, mask, cond(0, 1.5), steps, False, storage, "cpu",
                                record_from_step=skip, mask_resize="bilinear", sigmas=sigmas.clone()).args[0]

    base = model_mod.Flux(theirs.params).float().eval()  # their FLUX without KV-Edit's blocks
    base.load_state_dict(comfy.model.diffusion_model.state_dict())
    dm = comfy.model.diffusion_model
    n_calls = steps - skip

    @torch.inference_mode()
    def forwards(which):  # the model alone, every token, as many calls as an inversion makes
        for i in range(n_calls):
            t = torch.full((1,), float(sigmas[i]))
            g = torch.full((1,), 1.5)
            if which == "theirs":
                base(img=packed, img_ids=ids, txt=txt[0], txt_ids=torch.zeros(1, TXT, 3), timesteps=t, y=vec[0],
                     guidance=g)
            else:
                dm(z, t, txt[0], y=vec[0], guidance=g, transformer_options={})

    names = ("their inverse", "KVInvert bf16", "KVInvert fp32", "their denoise", "KVEditSampler (bf16 record)",
             "their FLUX forward alone", "ComfyUI FLUX forward alone")
    times = {n: [] for n in names}
    for r in range(args.runs + 1):  # round 0 warms up and is dropped
        t0 = time.perf_counter()
        with torch.inference_mode():
            z0, zt, info = pipe.inverse(inp(0), mask[None].clone(), opts)
        t1 = time.perf_counter()
        rec = ours_invert("bf16")
        t2 = time.perf_counter()
        ours_invert("fp32")
        t3 = time.perf_counter()
        with torch.inference_mode():
            pipe.denoise(z0, zt, inp(1), mask[None].clone(), opts, info)
        t4 = time.perf_counter()
        KVEditSampler.execute(comfy, rec, cond(1, 5.5), 0, skip, False, 1.0, "paper")
        t5 = time.perf_counter()
        forwards("theirs")
        t6 = time.perf_counter()
        forwards("comfy")
        t7 = time.perf_counter()
        del info, rec
        if r:
            for n, dt in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                times[n].append(dt)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average at the end {os.getloadavg()[0]:.1f}")
    import comfy.ldm.modules.attention as attention

    print(f"ComfyUI attention: {attention.optimized_attention.__name__} (theirs: torch SDPA)")
    print(f"ComfyUI FLUX hidden 1024, 8 heads, 2 double + 4 single blocks, fp32, CPU; {packed.shape[1]} image + "
          f"{TXT} text tokens, {steps} steps, skip {skip}, 25% mask, attn_scale 1; {args.runs} interleaved runs\n")
    print("| loop | median | best | median vs theirs | best vs theirs |\n|---|---:|---:|---:|---:|")
    for n in names:
        ref = times["their inverse" if "nvert" in n or "inverse" in n else
                    "their FLUX forward alone" if "alone" in n else "their denoise"]
        med, best = statistics.median(times[n]), min(times[n])
        print(f"| {n} | {med:.2f} s | {best:.2f} s | {med / statistics.median(ref):.2f}x | {best / min(ref):.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="path of a Xilluill/KV-Edit checkout (77129a2)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--full", action="store_true", help="every combination (slow) instead of a spread of them")
    ap.add_argument("--time", action="store_true", help="time the loops side by side instead of comparing")
    ap.add_argument("--skip", type=int, default=2, help="skip steps of --time")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs of --time")
    ap.add_argument("--time-side", type=int, default=512, help="image side (pixels) of --time")
    ap.add_argument("--pytorch-attention", action="store_true",
                    help="ComfyUI attention = torch SDPA (as on GPUs) instead of its CPU default (sub-quadratic)")
    args = ap.parse_args()
    model_mod, sampling, kv = authors_modules(args.checkout.resolve())
    if args.time:
        return timing(args, model_mod, sampling, kv)
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
    ids = packed_ids(H, W)

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
