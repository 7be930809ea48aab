"""Run methods over a data set, locally (one server at a time) or as Ray tasks over several servers.

Output folder (stable: later tools such as a rating page read it)::

    OUT/run.json                       data set, methods (workflow, fingerprint), metric settings
    OUT/cases/<method>/<case>/         one folder per case and method (:func:`dataset.case_dir_name`)
        edited.png                     the edit as the workflow's output node saved it
        record.json                    that case's row (metrics, seconds, server, status, error)
    OUT/results.csv, results.parquet   one row per case and method (columns: report.ROW_COLUMNS + metrics)
    OUT/failures.csv                   the failed rows with their messages
    OUT/summary_by_method.csv          mean of every metric, ok/failed counts, seconds per case
    OUT/summary_by_type.csv            the same per method and editing type
    OUT/plots/quality_vs_time.png      per method: mean seconds per case vs each quality metric
    OUT/plots/by_type_<metric>.png     per editing type, one bar per method

``<method>`` is the workflow's name and a fingerprint of the workflow, its bindings, the seed and the
metric settings: a changed workflow or setting is a new folder (a new run), and rerunning the same
command skips every case whose ``record.json`` says ``ok``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from .client import ServerError
from .dataset import Case, case_folders, case_inputs, mask_png, record_ok, rgba_with_mask
from .method import MetricSettings, Method, execute_case
from .report import write_reports



@dataclass
class RunConfig:
    mapping_file: Path
    images_dir: Path
    out: Path
    methods: list[Method]
    servers: list[str]
    metrics: MetricSettings = field(default_factory=MetricSettings)
    use_ray: bool = False
    ray_address: str | None = None
    progress: bool = True


def method_dir(cfg: RunConfig, m: Method) -> str:
    return f"{m.name}__{m.fingerprint(cfg.metrics)}"


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class Job:
    case: Case
    method: Method
    folder: Path
    image_png: bytes = b""
    mask_png: bytes | None = None
    error: str = ""


def _prepare(job: Job, images_dir: Path) -> Job:
    try:
        png, mask, _hw = case_inputs(job.case, images_dir)
    except ValueError as e:
        job.error = str(e)
        return job
    b = job.method.bindings
    if "mask" in b and job.method.prompt[b["mask"][0]]["class_type"] == "LoadImageMask":
        job.image_png, job.mask_png = png, mask_png(mask)
    else:
        job.image_png = rgba_with_mask(png, mask)
    return job


def _base_record(job: Job, cfg: RunConfig) -> dict:
    return {"case_id": job.case.case_id, "method": job.method.name, "method_dir": job.folder.parent.name,
            "editing_type_id": job.case.editing_type_id, "editing_type": job.case.editing_type}


def _finish(job: Job, result: dict | None, error: str, attempts: int, cfg: RunConfig) -> dict:
    rec = _base_record(job, cfg)
    rec["attempts"] = attempts
    if result is None:
        rec.update(status="failed", error=error, seconds=None, server="")
    else:
        rec.update(result["record"])
        for name, data in result["files"].items():
            (job.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (job.folder / name).write_bytes(data)
        if "edited.png" in result["files"]:
            rec["edited_image"] = str((job.folder / "edited.png").relative_to(cfg.out))
    _write_json(job.folder / "record.json", rec)
    return rec


def _run_local(jobs: list[Job], cfg: RunConfig, bar) -> None:
    for k, job in enumerate(jobs):
        result, errors = None, []
        order = cfg.servers[k % len(cfg.servers):] + cfg.servers[:k % len(cfg.servers)]
        for url in order:  # a failed case is retried on the next server
            try:
                result = execute_case(url, job.method, asdict(job.case), job.image_png, job.mask_png, cfg.metrics)
                break
            except ServerError as e:
                errors.append(str(e))
        _finish(job, result, " / ".join(errors), len(errors) + (result is not None), cfg)
        bar.update(1)


def run(cfg: RunConfig, cases: list[Case]) -> dict:
    """Run every pending case of every method; returns counts and the wall time."""
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    _write_json(cfg.out / "run.json", {
        "mapping_file": str(cfg.mapping_file), "images_dir": str(cfg.images_dir), "servers": cfg.servers,
        "metrics": asdict(cfg.metrics), "ray": cfg.use_ray,
        "methods": {m.name: {"dir": method_dir(cfg, m), "bindings": m.bindings, "seed": m.seed} for m in cfg.methods}})
    jobs, skipped = [], 0
    ids = [c.case_id for c in cases]
    folders = {m.name: case_folders(cfg.out / "cases" / method_dir(cfg, m), ids) for m in cfg.methods}
    for case in cases:  # case-major: methods side by side on the same case
        for m in cfg.methods:
            folder = folders[m.name][case.case_id]
            if record_ok(folder, case.case_id):
                skipped += 1
                continue
            jobs.append(Job(case, m, folder))
    bar = tqdm(total=len(jobs), desc="cases", unit="case", disable=not cfg.progress, smoothing=0.1)
    ready = []
    for job in jobs:
        _prepare(job, cfg.images_dir)
        if job.error:  # bad data set entry: recorded, the run goes on
            _finish(job, None, job.error, 0, cfg)
            bar.update(1)
        else:
            ready.append(job)
    if cfg.use_ray:
        from .ray_mode import run_on_ray

        run_on_ray(ready, cfg, bar, _finish)
    else:
        _run_local(ready, cfg, bar)
    bar.close()
    table = write_reports(cfg.out, [method_dir(cfg, m) for m in cfg.methods])
    wall = time.perf_counter() - t0
    failed = int((table["status"] != "ok").sum()) if len(table) else 0
    summary = {"ran": len(jobs), "skipped": skipped, "failed": failed, "wall_seconds": wall}
    _write_json(cfg.out / "last_run.json", summary)
    return summary
