"""``--start-servers``: the runner starts one ComfyUI per GPU on loopback ports, waits until each
answers, and stops them all (a stand-in main.py records its command line: no ComfyUI start-up)."""
from __future__ import annotations

import json


import pytest
import requests

from precise_edit.bench import cli
from precise_edit.bench.servers import StartedServers

FAKE_MAIN = r'''
import http.server, json, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
open(f"argv_{port}.json", "w").write(json.dumps(args))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"KSampler": {}} if self.path.startswith("/object_info") else {}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def test_started_servers_one_per_gpu_and_stopped(tmp_path):
    (tmp_path / "main.py").write_text(FAKE_MAIN)
    started = StartedServers(tmp_path, 2, extra_args=["--lowvram"], log_dir=tmp_path / "logs", timeout=60)
    with started as urls:
        assert len(set(urls)) == 2
        for url in urls:
            assert requests.get(url + "/object_info/KSampler", timeout=5).ok
        argvs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("argv_*.json"))]
        devices = sorted(a[a.index("--cuda-device") + 1] for a in argvs)
        assert devices == ["0", "1"] and all("--lowvram" in a and "127.0.0.1" in a for a in argvs)
    assert all(p.poll() is not None for p in started.procs)


def test_a_server_that_dies_is_reported(tmp_path, capsys):
    (tmp_path / "main.py").write_text("import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match="exited with 3"):
        with StartedServers(tmp_path, 1, timeout=30):
            pass
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mapping_file.json").write_text("{}")
    rc = cli.main(["--data", str(tmp_path / "data"), "--workflow", "x.json", "--out", str(tmp_path / "o"),
                   "--start-servers", "1", "--comfyui", str(tmp_path), "--server-args=--cpu"])
    assert rc == 2 and "exited with 3" in capsys.readouterr().err

