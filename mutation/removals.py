"""Named mechanism removals that `make mutate` checks on every run (issue 14).

Each entry removes one mechanism by a text replacement in a scratch copy of the pack and runs
the tests of that method; the tests must fail. mutmut's one-token mutants do not always
express "this mechanism is gone", so these four are spelt out.
"""

KV = ["tests/test_mutation_guards_kv.py", "tests/test_kv_edit.py"]
SPOT = ["tests/test_mutation_guards_spot.py", "tests/test_spot_edit.py"]

REMOVALS = [
    dict(name="extend_bias ignores its bias (KV-Edit attn_scale has no effect)",
         file="kernels/kv_attention.py",
         old="    if mask is None and extra_bias == 0.0:",
         new="    extra_bias = 0.0\n    if mask is None and extra_bias == 0.0:",
         tests=KV),
    dict(name="SpotEdit fuse returns the cached keys/values unchanged",
         file="kernels/spot.py",
         old="    return cached if a == 1.0 else a * cached + (1 - a) * reference",
         new="    return cached",
         tests=SPOT),
    dict(name="SpotEdit settled_velocity returns zeros",
         file="kernels/spot.py",
         old="    return (x - ref) / sigma",
         new="    return torch.zeros_like(x)",
         tests=SPOT),
    dict(name="append_cached appends no cached keys/values",
         file="kernels/kv_attention.py",
         old="    return torch.cat((k, k_extra.to(k.dtype)), dim=2), torch.cat((v, v_extra.to(v.dtype)), dim=2)",
         new="    return k, v",
         tests=KV),
]
