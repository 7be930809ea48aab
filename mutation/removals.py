"""Named mechanism removals that `make mutate` checks on every run (issue 14).

Each entry removes one mechanism by a text replacement in a scratch copy of the pack and runs
the tests of that method; the tests must fail. mutmut's one-token mutants do not always
express "this mechanism is gone", so these are spelt out.
"""

KV = ["tests/test_mutation_guards_kv.py", "tests/test_kv_edit.py"]
SPOT = ["tests/test_mutation_guards_spot.py", "tests/test_spot_edit.py"]

REMOVALS = [
    dict(name="extend_bias ignores its bias (KV-Edit attn_scale has no effect)",
         file="kernels/kv_attention.py",
         old="    if mask is None and extra_bias == 0.0:",
         new="    extra_bias = 0.0\n    if mask is None and extra_bias == 0.0:",
         tests=KV),
    dict(name="SpotEdit fuse returns the cached values unchanged",
         file="kernels/spot.py",
         old="    return cached if a == 1.0 else torch.lerp(reference, cached, a)",
         new="    return cached",
         tests=SPOT),
    dict(name="SpotEdit fuse_key_scaled returns the cached keys unchanged",
         file="kernels/spot.py",
         old="    return out.view(cached_k.shape).add_(cached_k, alpha=a).to(cached_k.dtype)",
         new="    return cached_k",
         tests=SPOT),
    dict(name="SpotEdit settled_velocity returns zeros",
         file="kernels/spot.py",
         old="    return (x - ref) / sigma",
         new="    return torch.zeros_like(x)",
         tests=SPOT),
    dict(name="SpotEdit judges the negative prompt's estimate (the batch's first chunk)",
         file="nodes/spot_edit/patch.py",
         old="        i = parts.index(0) if 0 in parts else 0   # 0: ComfyUI's COND",
         new="        i = 0",
         tests=SPOT),
    dict(name="SpotEdit judges only the first image of a latent batch",
         file="nodes/spot_edit/patch.py",
         old="        return x0[i * chunk:(i + 1) * chunk]",
         new="        return x0[i * chunk:i * chunk + 1]",
         tests=SPOT),
    dict(name="append_cached appends no cached keys/values",
         file="kernels/kv_attention.py",
         old="    return torch.cat((k, *parts(k_extra, k)), dim=2), torch.cat((v, *parts(v_extra, v)), dim=2)",
         new="    return k, v",
         tests=KV),
]
