"""Run the host ComfyUI headless as a subprocess, for live tests.

The server gets a throw-away base directory whose ``custom_nodes`` holds links to this pack
and to the tests-only helper pack, so a user's own install (``COMFYUI_PATH``) is neither
read nor changed, and listens on 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

PACK_NAME = "comfyui-precise-edit"
HELPERS_NAME = "precise_edit_test_helpers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui: Path, pack: Path, helpers: Path, base: Path, python: str = sys.executable,
                 extra_args: tuple = (), env: dict | None = None):
        self.comfyui, self.pack, self.helpers, self.base = comfyui, pack, helpers, base
        self.extra_args, self.extra_env = list(extra_args), dict(env or {})
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        custom = self.base / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        for name, target in ((PACK_NAME, self.pack), (HELPERS_NAME, self.helpers)):
            link = custom / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        cmd = [self.python, str(self.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--base-directory", str(self.base), "--disable-auto-launch", "--verbose", "INFO", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/object_info/KSampler", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not come up in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def import_failures(self) -> list[str]:
        return [line.strip() for line in self.log().splitlines() if "IMPORT FAILED" in line]

    def get(self, path: str, **kw):
        r = requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)
        r.raise_for_status()
        return r.json()

    def object_info(self) -> dict:
        return self.get("/object_info")

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format prompt and wait for it; returns its history entry.

        Raises ``RuntimeError`` with ComfyUI's own error text when validation or execution fails.
        """
        client_id = uuid.uuid4().hex
        r = requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"prompt rejected ({r.status_code}): {json.dumps(r.json(), indent=1)[:4000]}")
        prompt_id = r.json()["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    if status.get("status_str") != "success":
                        msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                        detail = msgs[0][1] if msgs else status
                        if isinstance(detail, dict):
                            detail = {k: detail.get(k) for k in ("node_id", "node_type", "exception_message")}
                        raise RuntimeError(f"prompt failed: {detail}")
                    return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise RuntimeError(f"prompt {prompt_id} did not finish in {timeout}s")


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
