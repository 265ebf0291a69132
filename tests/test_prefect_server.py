"""Flows against a real Prefect server, and the deployment file's entrypoints and parameters."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from .conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "server-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("Prefect server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


RUN_FLOW = """
import sys
from pathlib import Path
from flows.stages import ingest_flow
from hiercaps_gen.config import RunConfig
config = RunConfig().with_overrides({"ingest.input": "data/coco_val2014_sample/captions.json", "ingest.limit": 25})
print(ingest_flow(config, Path(sys.argv[1]))["totals"]["accepted"])
"""


def test_flow_runs_against_a_real_server(prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "client-home")}
    done = subprocess.run([sys.executable, "-c", RUN_FLOW, str(tmp_path / "run")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "25"
    runs = httpx.post(prefect_server + "/flow_runs/filter", json={}, timeout=10).json()
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    flows = httpx.post(prefect_server + "/flows/filter", json={}, timeout=10).json()
    assert {f["name"] for f in flows} == {"ingest"}


def test_deployments_point_at_real_flows_with_valid_parameters():
    import importlib

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"gpu", "cpu"}
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), name)
        flow.validate_parameters(deployment["parameters"])  # raises on unknown or missing parameters


def test_deployments_share_one_absolute_run_directory(tmp_path, monkeypatch):
    """`prefect deploy` resolves $HIERCAPS_SHARED: every stage's worker reads and writes one run dir."""
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("HIERCAPS_SHARED", str(tmp_path))
    spec = apply_values(yaml.safe_load((REPO / "prefect.yaml").read_text()), dict(os.environ), remove_notset=False)
    params = [d["parameters"] for d in spec["deployments"]]
    assert {p["run_dir"] for p in params} == {f"{tmp_path}/runs/coco-gpu"}
    assert {p["out"] for p in params if "out" in p} == {f"{tmp_path}/releases"}
