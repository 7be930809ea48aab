"""Compare kernels/guidance.py's DNG posterior with the authors' ``compute_posterior_DNG`` on the same
recorded DDPM chain. Their code never enters this repository: pass the path of a checkout of
FelixKoulischer/Dynamic-Negative-Guidance (``utils/Generate_Batch_pretrained.py`` is imported from
there). Run from the repository root:

    .venv/bin/python scripts/compare_dng_authors.py /tmp/authors/Dynamic-Negative-Guidance
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))


def _ours():
    spec = importlib.util.spec_from_file_location("guidance", ROOT / "kernels" / "guidance.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["guidance"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(authors: str) -> int:
    path = Path(authors) / "utils" / "Generate_Batch_pretrained.py"
    spec = importlib.util.spec_from_file_location("dng_authors", path)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    G = _ours()
    torch.manual_seed(0)
    T, B = 50, 4
    betas = torch.linspace(1e-4, 0.05, T, dtype=torch.float64)
    diffusion = SimpleNamespace(alphas=1 - betas, alphas_cumprod=torch.cumprod(1 - betas, 0))
    abar = diffusion.alphas_cumprod
    prior, temp, offset, p_max, lam = 0.2, 0.5, 2e-4, 0.95, 3.0
    state = G.DNGState(G.DNGSettings(scale=lam, prior=prior, temperature=temp, offset=offset, p_max=p_max), B)
    p = torch.full((B,), prior, dtype=torch.float64)
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    worst = 0.0
    for t in reversed(range(1, T)):
        eps = 0.5 * torch.randn_like(x) + 0.5 * x / torch.sqrt(1 - abar[t])
        eps_bad = eps + 0.2 * torch.randn_like(x)
        sigma = math.sqrt((1 - abar[t]) / abar[t])
        xv = x / torch.sqrt(abar[t])
        ours = state.observe(xv, sigma, xv - sigma * eps, xv - sigma * eps_bad) / lam
        worst = max(worst, float((ours * (1 - p) / p - 1).abs().max()) if t < T - 1 else 0.0)
        guided = eps - (lam * p / (1 - p))[:, None, None, None] * (eps_bad - eps)
        new_x = (x - betas[t] / torch.sqrt(1 - abar[t]) * guided) / torch.sqrt(1 - betas[t])
        new_x = new_x + torch.sqrt(betas[t]) * torch.randn_like(x)
        p = theirs.compute_posterior_DNG(diffusion, t, p, new_x, x, eps, eps_bad, Temp=temp, p_min=1e-6,
                                         p_max=p_max, offset=offset)
        x = new_x
    print(f"{T - 1} steps, batch {B}: largest relative difference of p/(1-p) (ours vs the authors'): {worst:.3e}")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
