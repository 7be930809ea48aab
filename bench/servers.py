"""``--start-servers N``: the runner starts N ComfyUI servers itself (one per GPU), on loopback
ports, with the user's ComfyUI (``--comfyui PATH``, whose custom_nodes hold this pack), and stops
them when the run ends."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartedServers:
    def __init__(self, comfyui: Path, n: int, gpus: bool = True, extra_args=(), log_dir: Path | None = None,
                 python: str = sys.executable, timeout: float = 600.0):
        self.comfyui, self.n, self.gpus, self.extra = Path(comfyui), n, gpus, list(extra_args)
        self.log_dir, self.python, self.timeout = log_dir, python, timeout
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.logs: list = []

    def __enter__(self) -> list[str]:
        main = self.comfyui / "main.py"
        if not main.is_file():
            raise ValueError(f"--comfyui {self.comfyui}: no main.py there")
        for i in range(self.n):
            port = free_port()
            cmd = [self.python, str(main), "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
            if self.gpus:
                cmd += ["--cuda-device", str(i)]
            cmd += self.extra
            log = subprocess.DEVNULL
            if self.log_dir:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                log = open(self.log_dir / f"comfyui_{i}.log", "w")
                self.logs.append(log)
            self.procs.append(subprocess.Popen(cmd, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT))
            self.urls.append(f"http://127.0.0.1:{port}")
        deadline = time.time() + self.timeout
        waiting = set(range(self.n))
        while waiting and time.time() < deadline:
            for i in list(waiting):
                if self.procs[i].poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"ComfyUI server {i} exited with {self.procs[i].returncode} while starting")
                try:
                    if requests.get(self.urls[i] + "/object_info/KSampler", timeout=2).ok:
                        waiting.discard(i)
                except requests.RequestException:
                    pass
            time.sleep(0.3)
        if waiting:
            self.__exit__()
            raise RuntimeError(f"{len(waiting)} ComfyUI server(s) did not start in {self.timeout:.0f} s")
        return list(self.urls)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()
