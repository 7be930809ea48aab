"""Synthetic editing benchmark: the small trained models judged on the synthetic set.

Prints a table; not a test. First the plain models' own success rates (text-to-image objects and
scenes, Kontext-style edits per kind), then KV-Edit against regenerating with the target caption
(colour and shape changes) with background preservation, then SpotEdit on the Kontext-style model
(perceptual judge, no mask), alone and with ComfyUI's EasyCache on top: speed-up, settled-token
precision/recall against the true unchanged mask, and success against the unpatched model; then
PIXELS exemplar insertion and move on the FLUX t2i model (with the exemplar vs the same change map
without one); then the SD1.5-class UNets (text-to-image
and InstructPix2Pix-style) and issue 12's spatial measure (plain vs Spatial Instruction). Run from the repository root:

    .venv/bin/python benchmarks/bench_synthetic.py [--n 40] [--steps 20] [--pie-bench DIR]

``--pie-bench DIR`` also writes the edit pairs in the PIE-Bench layout there. The IP2P-style UNet is sampled
through the pack's Instruct Guider with InstructPix2Pix's two scales (``--unet-cfg`` text, ``--image-cfg``
image; 1 = text guidance alone); ``--ip2p-guidance`` adds rows for text guidance alone and the guider's
schedules and instruction-dependent text scale.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401  (ComfyUI on sys.path, CPU, pack importable as precise_edit)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from precise_edit.synthetic import evaluate as ev  # noqa: E402
from precise_edit.synthetic import evaluate_unet as eu  # noqa: E402
from precise_edit.synthetic import judge, models, piebench, scenes  # noqa: E402


def rate(v):
    return f"{100 * np.mean(v):5.1f} %" if len(v) else "  -  "


def plain(args, flux, kontext, vae, kvae):
    print(f"\n## Plain models (judge verdicts; cfg {args.cfg:g}, empty negative)\n")
    print("| model | what | n | success |\n|---|---|---|---|")
    sc = scenes.scenes(1000, args.n)
    imgs = [ev.generate(flux, vae, s.caption(), seed=i, steps=args.steps, cfg=args.cfg) for i, s in enumerate(sc)]
    obj = [judge.object_ok(img, o) for img, s in zip(imgs, sc) for o in s.objects]
    print(f"| FLUX t2i | objects right (colour, shape, cell) | {len(obj)} | {rate(obj)} |")
    print(f"| FLUX t2i | whole scene right | {len(sc)} | {rate([judge.scene_ok(i, s) for i, s in zip(imgs, sc)])} |")
    rec = ev.to_image(vae, ev.to_latent(vae, np.stack([ev.render(s) for s in sc])))
    vobj = [judge.object_ok(img, o) for img, s in zip(rec, sc) for o in s.objects]
    print(f"| VAE round trip | objects right (ceiling of every model) | {len(vobj)} | {rate(vobj)} |")
    pairs = scenes.edits(1001, args.n)
    edited = [ev.edit_kontext(kontext, kvae, p, seed=i, steps=args.steps, cfg=args.cfg) for i, p in enumerate(pairs)]
    res = [(p.kind, judge.edit_ok(img, p)) for img, p in zip(edited, pairs)]
    for k in scenes.EDIT_KINDS:
        v = [ok for kind, ok in res if kind == k]
        print(f"| Kontext-style | edit: {k} | {len(v)} | {rate(v)} |")
    print(f"| Kontext-style | edit: all | {len(res)} | {rate([ok for _, ok in res])} |")
    whole = [judge.scene_ok(img, p.target) for img, p in zip(edited, pairs)]
    print(f"| Kontext-style | whole target scene right (edit done, nothing else changed or added) | {len(res)} | "
          f"{rate(whole)} |")


def kv(args, flux, vae):
    print(f"\n## KV-Edit vs regenerating with the target caption (colour and shape changes; cfg {args.cfg:g})\n")
    pairs = scenes.edits(1002, args.n, kinds=("colour", "shape"))
    regen = [ev.regenerate(flux, vae, p, seed=i, steps=args.steps, cfg=args.cfg) for i, p in enumerate(pairs)]
    regen_ok = [judge.edit_ok(img, p) for img, p in zip(regen, pairs)]
    regen_whole = [judge.scene_ok(img, p.target) for img, p in zip(regen, pairs)]
    regen_placed = [judge.find(img, p.result.cell).colour == p.result.colour for img, p in zip(regen, pairs)]
    print("| method | n | edit success | whole target scene right | object of the target colour in the cell | "
          "background |\n|---|---|---|---|---|---|")
    for scale in (1.0, 0.0):  # KVEditSampler's default, and off
        kv_ok, whole, placed, exact, psnr = [], [], [], [], []
        for i, p in enumerate(pairs):
            out = ev.kv_edit(flux, vae, p, seed=i, steps=args.steps, skip=args.skip, attn_scale=scale, cfg=args.cfg)
            kv_ok.append(judge.edit_ok(out["image"], p))
            whole.append(judge.scene_ok(out["image"], p.target))
            placed.append(judge.find(out["image"], p.result.cell).colour == p.result.colour)
            exact.append(out["latent_exact"] and judge.equal_outside(out["pasted"], ev.render(p.source), ev.mask(p)))
            psnr.append(judge.psnr_outside(out["image"], ev.render(p.source), ev.mask(p)))
        print(f"| KV-Edit (skip {args.skip}, attn_scale {scale:g}) | {len(pairs)} | {rate(kv_ok)} | {rate(whole)} | {rate(placed)} | "
              f"latent and pasted pixels bit-exact: {rate(exact)}; decoded PSNR outside mask {np.median(psnr):.1f} dB |",
              flush=True)
    print(f"| regenerate (target caption) | {len(pairs)} | {rate(regen_ok)} | {rate(regen_whole)} | {rate(regen_placed)} | new image |")


def spot(args, kontext, vae):
    print(f"\n## SpotEdit on the Kontext-style model (perceptual judge, tau {args.tau}, no mask, cfg {args.cfg:g}; + ComfyUI's "
          f"EasyCache, reuse threshold {args.easycache}, end_percent {args.easycache_end})\n")
    print("| variant | steps | n | plain: edit done | edit done | plain: whole target scene right | whole target scene "
          "right | tokens computed | settled precision | settled recall "
          "| model calls / steps | speed-up vs plain (median of per-pair ratios, interleaved) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    pairs = scenes.edits(1003, args.n_spot)
    ec = {"easycache_threshold": args.easycache, "easycache_end": args.easycache_end}
    variants = (("SpotEdit", {}), ("SpotEdit, authors code", {"mode": "authors code"}),
                ("EasyCache alone", {"patched": False, **ec}),
                ("SpotEdit + EasyCache", ec),
                ("SpotEdit, authors code + EasyCache", {"mode": "authors code", **ec}))
    if args.no_spot_alone:
        variants = variants[2:]
    for steps in (28, 50):
        plain_ok, plain_whole = [], []
        ok, whole, comp, prec, rec, ratio, calls = ({v: [] for v, _ in variants} for _ in range(7))
        for i, p in enumerate(pairs):
            a = ev.spot_edit(kontext, vae, p, seed=i, steps=steps, patched=False, cfg=args.cfg)
            plain_ok.append(judge.edit_ok(a["image"], p))
            plain_whole.append(judge.scene_ok(a["image"], p.target))
            for name, kw in variants:
                b = ev.spot_edit(kontext, vae, p, seed=i, steps=steps, tau=args.tau, cfg=args.cfg, **kw)
                ok[name].append(judge.edit_ok(b["image"], p))
                whole[name].append(judge.scene_ok(b["image"], p.target))
                comp[name].append(b["computed"])
                calls[name].append(b["model_calls"] / steps)
                ratio[name].append(a["seconds"] / b["seconds"])
                scores = ev.settled_scores(b, p)
                if scores is not None:
                    prec[name].append(scores[0])
                    rec[name].append(scores[1])
        for name, _ in variants:
            pr = f"{np.mean(prec[name]):.3f}" if prec[name] else "-"
            rc = f"{np.mean(rec[name]):.3f}" if rec[name] else "-"
            print(f"| {name} | {steps} | {len(pairs)} | {rate(plain_ok)} | {rate(ok[name])} | "
                  f"{rate(plain_whole)} | {rate(whole[name])} | "
                  f"{100 * np.mean(comp[name]):.0f} % | {pr} | {rc} | {np.mean(calls[name]):.2f} | "
                  f"{np.median(ratio[name]):.2f}x |", flush=True)


def pixels(args, flux, vae):
    print("\n## PIXELS exemplar latent surgery on the FLUX t2i model (change map = the touched grid cells; "
          f"target caption, denoise {args.pixels_denoise})\n")
    print("| edit | exemplar | n | success (edit done, others kept) | object's colour in its new cell | "
          "latent outside the change map bit-exact | PSNR outside the change map |\n|---|---|---|---|---|---|---|")
    for kind, seed in (("add", 1004), ("move", 1005)):
        pairs = scenes.edits(seed, args.n, kinds=(kind,))
        for ex in (True, False):
            ok, placed, exact, psnr = [], [], [], []
            for i, p in enumerate(pairs):
                r = ev.pixels_edit(flux, vae, p, seed=i, steps=args.steps, denoise=args.pixels_denoise, exemplar=ex,
                                   cfg=args.cfg)
                ok.append(judge.edit_ok(r["image"], p) and judge.others_kept(r["image"], p))
                placed.append(judge.find(r["image"], p.result.cell).colour == p.result.colour)
                exact.append(r["latent_exact"])
                psnr.append(judge.psnr_outside(r["image"], ev.render(p.source), r["changed"]))
            label = "the object (add: pictured alone; move: cut from the source)" if ex else "none (regenerate the cells)"
            print(f"| {kind} | {label} | {len(pairs)} | {rate(ok)} | {rate(placed)} | {rate(exact)} | "
                  f"{np.median(psnr):.1f} dB |",
                  flush=True)


def ip2p_guidance(args):
    """(label, edit_ip2p options) of the IP2P rows: the image scale asked, and with --ip2p-guidance also text
    guidance alone and Instruct Guider's schedules and instruction-dependent text scale (issue 12's guidance,
    judged against ground truth)."""
    rows = [(f"image scale {args.image_cfg:g}", {"image_cfg": args.image_cfg})]
    if args.ip2p_guidance:
        t = args.unet_cfg
        rows = [("text guidance alone (image scale 1)", {"image_cfg": 1.0})] + rows + [
            (f"text scale linear {t:g} -> {t / 2:g}, image {args.image_cfg:g}",
             {"image_cfg": args.image_cfg, "text_schedule": "linear", "text_scale_end": t / 2}),
            (f"image scale linear {args.image_cfg:g} -> 1", {"image_cfg": args.image_cfg, "image_schedule": "linear",
                                                             "image_scale_end": 1.0}),
            (f"text scale from the instruction (4-12), image {args.image_cfg:g}",
             {"image_cfg": args.image_cfg, "text_scale_mode": "from instruction"}),
        ]
    return rows


def unets(args, vae4, sd, ip2p):
    scene_seed, pair_seed = (3000, 2001) if args.held_out else (1000, 1001)
    print(f"\n## SD1.5-class UNets (4-channel VAE, {eu.SIZE}-pixel images; euler/simple, cfg {args.unet_cfg:g} on the "
          f"text, IP2P through Instruct Guider; scenes({scene_seed}, n), edits({pair_seed}, n))\n")
    print("| model | what | n | success |\n|---|---|---|---|")
    sc = scenes.scenes(scene_seed, args.n)
    if args.training_scenes:   # the first n of the text-to-image UNet's own training scenes
        from precise_edit.synthetic.train_unet import training_scenes

        sc = training_scenes(args.n)
        print("(VAE and text-to-image rows on the first n of the text-to-image UNet's training scenes)\n")
    rec = ev.to_image(vae4, ev.to_latent(vae4, np.stack([scenes.render(s, eu.SIZE)[0] for s in sc])))
    robjs = [(r, o) for r, s in zip(rec, sc) for o in s.objects]
    print(f"| VAE4 round trip | objects right | {len(robjs)} | {rate([judge.object_ok(r, o) for r, o in robjs])} |")
    print(f"| VAE4 round trip | object colour right in its cell | {len(robjs)} | "
          f"{rate([judge.find(r, o.cell).colour == o.colour for r, o in robjs])} |")
    if ip2p is not None:
        for label, opts in ip2p_guidance(args):
            r = eu.ip2p_rates(ip2p, vae4, n=args.n, seed=pair_seed, steps=args.steps, cfg=args.unet_cfg, **opts)
            kinds = " / ".join(f"{100 * r[k]:5.1f} %" if k in r else "  -  " for k in scenes.EDIT_KINDS)
            print(f"| IP2P-style, {label} | edits done: {' / '.join(scenes.EDIT_KINDS)} | {args.n} | {kinds} |")
            print(f"| IP2P-style, {label} | edits done, all | {args.n} | {100 * r['all']:5.1f} % |", flush=True)
    if sd is None:
        return
    imgs = [eu.generate_sd(sd, vae4, s.caption(), seed=i, steps=args.steps, cfg=args.unet_cfg) for i, s in enumerate(sc)]
    objs = [(img, o) for img, s in zip(imgs, sc) for o in s.objects]
    print(f"| SD t2i | objects right (colour, shape, cell) | {len(objs)} | {rate([judge.object_ok(i, o) for i, o in objs])} |")
    print(f"| SD t2i | object colour right in its cell | {len(objs)} | "
          f"{rate([judge.find(i, o.cell).colour == o.colour for i, o in objs])} |")
    print(f"| SD t2i | whole scene right | {len(sc)} | {rate([judge.scene_ok(i, s) for i, s in zip(imgs, sc)])} |")


def spatial(args, vae4, ip2p):
    print("\n## Issue 12: spatial instructions, plain IP2P-style vs Spatial Instruction (region as noise mask; "
          f"cfg {args.unet_cfg:g}, image scale {args.image_cfg:g})\n")
    print("placed = the asked colour fills the asked cell (and a moved object's old cell is empty); "
          "done = the full judge (colour and shape in the cell, other objects kept)\n")
    print("| kind | variant | n | placed | done | refused by Spatial Instruction |\n|---|---|---|---|---|---|")
    for kind, rows in eu.spatial_rates(ip2p, vae4, n=args.n, steps=args.steps, cfg=args.unet_cfg,
                                       image_cfg=args.image_cfg):
        for variant, (placed, done, refused) in rows.items():
            print(f"| {kind} | {variant} | {args.n} | {100 * placed:5.1f} % | {100 * done:5.1f} % | {refused} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--pie-bench", type=Path, default=None)
    ap.add_argument("--n-spot", type=int, default=10)
    ap.add_argument("--tau", type=float, default=ev.SPOT_TAU)
    ap.add_argument("--cfg", type=float, default=ev.CFG, help="classifier-free guidance of the FLUX-side models")
    ap.add_argument("--unet-cfg", type=float, default=eu.CFG, help="classifier-free guidance of the SD1.5-class UNets")
    ap.add_argument("--image-cfg", type=float, default=eu.IMAGE_CFG,
                    help="the IP2P-style UNet's image guidance scale (1: text guidance alone)")
    ap.add_argument("--ip2p-guidance", action="store_true",
                    help="IP2P: also rows for text guidance alone and Instruct Guider's schedules / text scale "
                         "from the instruction")
    ap.add_argument("--held-out", action="store_true",
                    help="UNets: scenes(3000, n) and edits(2001, n), seeds no trainer or earlier table used")
    ap.add_argument("--training-scenes", action="store_true",
                    help="UNets: the text-to-image rows on the first n of sd's own training scenes (does it fit them?)")
    ap.add_argument("--easycache", type=float, default=0.2, help="EasyCache reuse threshold")
    ap.add_argument("--easycache-end", type=float, default=ev.EASYCACHE_END,
                    help="EasyCache's end_percent: no step is reused after this share of the sampling (node default 0.95)")
    ap.add_argument("--no-spot-alone", action="store_true",
                    help="spot: only the EasyCache rows (the SpotEdit-alone rows do not depend on the EasyCache options)")
    ap.add_argument("--pixels-denoise", type=float, default=0.7)
    ap.add_argument("--only", choices=["plain", "kv", "spot", "pixels", "unet", "sd", "ip2p", "spatial"], default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), shared and noisy; "
          f"n={args.n}, {args.steps} steps, euler/simple, cfg {args.cfg:g} (FLUX side), {args.unet_cfg:g} (UNets)")
    t0 = time.time()
    if args.only in (None, "plain", "kv", "spot", "pixels"):
        vae, flux, kontext = models.vae(models.VAE_OF["flux"]), models.flux("flux"), models.flux("kontext")
        kvae = models.vae(models.VAE_OF["kontext"])
    if args.only in (None, "plain"):
        plain(args, flux, kontext, vae, kvae)
    if args.only in (None, "kv"):
        kv(args, flux, vae)
    if args.only in (None, "spot"):
        spot(args, kontext, kvae)
    if args.only in (None, "pixels"):
        pixels(args, flux, vae)
    if args.only in (None, "unet", "sd", "ip2p"):
        unets(args, models.vae("vae4"), None if args.only == "ip2p" else models.unet("sd"),
              None if args.only == "sd" else models.unet("ip2p"))
    if args.only in (None, "spatial"):
        spatial(args, models.vae("vae4"), models.unet("ip2p"))
    if args.pie_bench:
        print(f"\nPIE-Bench files: {piebench.write(scenes.edits(1001, args.n), args.pie_bench, size=ev.KONTEXT_SIZE)}")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
