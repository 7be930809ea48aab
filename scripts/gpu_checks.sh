#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): the method tests with ComfyUI's compute device
# on the GPU (PRECISE_EDIT_TEST_DEVICE=cuda keeps the test set-up from forcing the CPU), the
# side-stream prefetch test, and the record placement benchmark. Run from the repository root
# in the development environment (COMFYUI_PATH names the host ComfyUI):
#     COMFYUI_PATH=.host/ComfyUI bash scripts/gpu_checks.sh [python]
set -euo pipefail
PY=${1:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_checks: no CUDA GPU here')"
"$PY" -m pytest -p no:cacheprovider tests/test_kv_disk.py tests/test_kv_kernels.py -rs
PRECISE_EDIT_TEST_DEVICE=cuda "$PY" -m pytest -p no:cacheprovider \
    tests/test_spot_edit.py tests/test_kv_edit.py tests/test_kv_edit_trajectory.py tests/test_kv_disk_nodes.py \
    tests/test_kv_fidelity.py tests/test_kv_bad_input.py tests/test_surgery_nodes.py \
    tests/test_surgery_exemplar_latents.py tests/test_surgery_final_paste.py tests/test_instruct_guider.py \
    tests/test_instruct_nodes.py tests/test_mutation_guards_kv.py tests/test_mutation_guards_spot.py \
    tests/test_mutation_guards_spot_selector.py tests/test_synthetic_models.py tests/test_spot_launches.py
"$PY" benchmarks/bench_kv_cuda.py "${@:2}"
