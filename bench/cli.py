"""Command line of the runner: ``python scripts/edit_bench.py --help``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .client import ComfyClient, ServerError
from .dataset import load_cases
from .method import ROLES, BindingError, MetricSettings, Method, load_workflow, resolve_bindings
from .runner import RunConfig, run
from .workflow_api import WorkflowError


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="edit_bench", description=(
        "Run ComfyUI workflows over a PIE-Bench-format data set through ComfyUI's HTTP API, measure every edit "
        "with EditMetrics, and write one row per case (CSV, Parquet), summaries and plots."))
    p.add_argument("--data", type=Path, help="folder holding mapping_file.json and annotation_images/")
    p.add_argument("--mapping-file", type=Path, help="PIE-Bench mapping_file.json (default: DATA/mapping_file.json)")
    p.add_argument("--images", type=Path, help="folder the image paths are relative to (default: DATA/annotation_images)")
    p.add_argument("--workflow", action="append", required=True, metavar="[NAME=]PATH",
                   help="a workflow (UI or API format); repeat to compare methods side by side")
    p.add_argument("--bind", action="append", default=[], metavar="[NAME:]ROLE=NODE[.INPUT]",
                   help=f"bind a role ({', '.join(ROLES)}) to a node title or id, for every workflow or NAME's")
    p.add_argument("--server", action="append", default=[], help="ComfyUI address (repeat for several; default "
                                                                   "http://127.0.0.1:8188)")
    p.add_argument("--out", type=Path, required=True, help="output folder (rerunning resumes)")
    p.add_argument("--seed", type=int, help="seed set on the bound seed input")
    p.add_argument("--types", nargs="*", help="only these editing_type_id values")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--mask-convention", default="pie-bench border", choices=["pie-bench border", "as given"])
    p.add_argument("--lpips-net", default="squeeze", choices=["squeeze", "alex", "vgg"])
    p.add_argument("--dino-model", default="dino_vitbase8_pretrain.pth", help="file in models/dino")
    p.add_argument("--clip-vision", default="", help="CLIP vision file in models/clip_vision (enables CLIP scores)")
    p.add_argument("--clip-text", default="", help="CLIP-L text encoder file in models/text_encoders")
    p.add_argument("--no-metrics", action="store_true", help="only run the workflows and time them")
    p.add_argument("--ray", action="store_true", help="run cases as Ray tasks over all --server addresses")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--start-servers", type=int, default=0, metavar="N",
                   help="start N ComfyUI servers (one per GPU: --cuda-device 0..N-1) and stop them at the end")
    p.add_argument("--comfyui", type=Path, help="the ComfyUI folder for --start-servers (default: $COMFYUI_PATH)")
    p.add_argument("--server-args", default="", help="extra arguments for started servers, e.g. --server-args=\"--cpu\"")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_methods(args, object_info: dict) -> list[Method]:
    specs_all, specs_one = {}, {}
    for b in args.bind:
        key, _, node = b.partition("=")
        if not node:
            raise BindingError(f"--bind {b!r}: expected ROLE=NODE")
        name, _, role = key.rpartition(":")
        if role not in ROLES:
            raise BindingError(f"--bind {b!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        (specs_one.setdefault(name, {}) if name else specs_all)[role] = node
    methods, problems = [], []
    for w in args.workflow:
        name, _, path = w.rpartition("=")
        path = Path(path)
        name = name or path.stem
        try:
            prompt = load_workflow(path, object_info)
            specs = {**specs_all, **specs_one.get(name, {})}
            bindings = resolve_bindings(name, prompt, specs, args.seed is not None)
            methods.append(Method(name, prompt, bindings, args.seed or 0))
        except (OSError, ValueError) as e:  # WorkflowError and BindingError are ValueErrors
            problems.append(str(e))
    unknown = set(specs_one) - {m.name for m in methods} - {Path(w.rpartition('=')[2]).stem for w in args.workflow}
    if unknown:
        problems.append(f"--bind names unknown workflows: {', '.join(sorted(unknown))}")
    if problems:
        raise BindingError("\n".join(problems))
    return methods


def main(argv=None) -> int:
    args = parse_args(argv)
    mapping = args.mapping_file or (args.data / "mapping_file.json" if args.data else None)
    images = args.images or (args.data / "annotation_images" if args.data else None)
    if mapping is None or images is None:
        print("edit_bench: give --data, or --mapping-file and --images", file=sys.stderr)
        return 2
    if args.start_servers:
        import os
        import shlex

        from .servers import StartedServers

        comfyui = args.comfyui or (Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None)
        if comfyui is None:
            print("edit_bench: --start-servers needs --comfyui PATH (or COMFYUI_PATH)", file=sys.stderr)
            return 2
        extra = shlex.split(args.server_args)
        started = StartedServers(comfyui, args.start_servers, gpus="--cpu" not in extra, extra_args=extra,
                                 log_dir=args.out / "servers")
        try:
            urls = started.__enter__()
        except (RuntimeError, ValueError) as e:
            print(f"edit_bench: {e}", file=sys.stderr)
            return 2
        try:
            return _main(args, mapping, images, args.server + urls)
        finally:
            started.__exit__()
    return _main(args, mapping, images, args.server or ["http://127.0.0.1:8188"])


def _ui_format(spec: str) -> bool:
    try:
        data = json.loads(Path(spec.rpartition("=")[2]).read_text())
    except (OSError, ValueError):
        return False  # load_workflow reports it
    return isinstance(data, dict) and "nodes" in data and "links" in data


def _main(args, mapping, images, servers) -> int:
    client = ComfyClient(servers[0])
    try:
        # the full node list (every node's schema; grows with each installed node pack) is needed only
        # to convert UI-format workflows; for API-format ones ask about EditMetrics alone
        object_info = (client.object_info() if any(_ui_format(w) for w in args.workflow)
                       else client.node_info("EditMetrics"))
    except ServerError as e:
        print(f"edit_bench: {e}", file=sys.stderr)
        return 2
    try:
        methods = build_methods(args, object_info)
        if not args.no_metrics and "EditMetrics" not in object_info:
            raise BindingError("the server has no EditMetrics node: install comfyui-precise-edit there, or --no-metrics")
        cases = load_cases(mapping, args.types, args.limit)
    except (BindingError, WorkflowError, ValueError) as e:
        print(f"edit_bench: {e}", file=sys.stderr)
        return 2
    metrics = MetricSettings(args.mask_convention, args.lpips_net, args.dino_model, args.clip_vision, args.clip_text,
                             enabled=not args.no_metrics)
    cfg = RunConfig(mapping, images, args.out, methods, servers, metrics, args.ray, args.ray_address,
                    progress=not args.no_progress)
    summary = run(cfg, cases)
    print(json.dumps(summary))
    if summary["failed"]:
        print(f"edit_bench: {summary['failed']} case(s) failed: see {args.out / 'failures.csv'}", file=sys.stderr)
    return 0
