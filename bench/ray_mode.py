"""``--ray``: cases run as Ray tasks over several ComfyUI servers.

One Ray actor per server (``max_concurrency=1``: a server works on one prompt at a time) and
``ray.util.ActorPool`` hands each case to the next idle server. A case that fails on one server is
submitted again to another one (each server at most once); Ray's own ``max_restarts`` /
``max_task_retries`` cover a lost worker process. The driver writes every result into the same
resumable output folder as a local run.
"""
from __future__ import annotations

from dataclasses import asdict

import ray
from ray.util import ActorPool

from .client import ServerError
from .method import execute_case


@ray.remote(num_cpus=0, max_restarts=2, max_task_retries=2)
class ServerWorker:
    def __init__(self, url: str):
        self.url = url

    def run(self, key: int, method, case: dict, image_png: bytes, mask_png, metrics) -> tuple:
        try:
            return key, self.url, execute_case(self.url, method, case, image_png, mask_png, metrics), ""
        except ServerError as e:
            return key, self.url, None, str(e)


def run_on_ray(jobs, cfg, bar, finish) -> None:
    """Run ``jobs`` (the runner's prepared cases) over ``cfg.servers``; ``finish(job, result, error,
    attempts, cfg)`` writes each result as a local run would."""
    import sys

    # the pack is not importable by name in Ray's worker processes: ship this package by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__package__])
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, num_cpus=None if cfg.ray_address else max(2, len(cfg.servers)),
                 include_dashboard=False, log_to_driver=False)
    actors = [ServerWorker.remote(url) for url in cfg.servers]
    tried = {k: [] for k in range(len(jobs))}
    errors = {k: [] for k in range(len(jobs))}

    def submit(actor, k):
        j = jobs[k]
        return actor.run.remote(k, j.method, asdict(j.case), j.image_png, j.mask_png, cfg.metrics)

    pool = ActorPool(actors)
    pending_retries = []
    for k in range(len(jobs)):
        pool.submit(submit, k)
    while pool.has_next() or pending_retries:
        if pending_retries:
            k, actor = pending_retries.pop()
            ref = submit(actor, k)
            result = ray.get(ref)
        else:
            result = pool.get_next_unordered()
        k, url, out, err = result
        tried[k].append(url)
        if out is None:
            errors[k].append(err)
            others = [a for a, u in zip(actors, cfg.servers) if u not in tried[k]]
            if others:  # retry on another server
                pending_retries.append((k, others[0]))
                continue
        finish(jobs[k], out, " / ".join(errors[k]), len(tried[k]), cfg)
        bar.update(1)
