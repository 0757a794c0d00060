"""e2e fixtures: a whole lab through the `podnet` command, removed in finally."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

PODNET = [sys.executable, "-m", "podnet"]


def podnet(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PODNET, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


class Lab:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return podnet("--lab", self.name, *args, **kw)

    def state(self) -> dict:
        with open(f"/run/podnet/lab/{self.name}/state.json") as f:
            return json.load(f)

    def pods(self) -> list[dict]:
        return json.loads(self("get", "pods", "-A", "-o", "json").stdout)["items"]

    def wait_running(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods()
            running = [p for p in pods if p.get("status", {}).get("phase") == "Running"
                       and p["status"].get("podIP")]
            if len(running) >= count:
                return running
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(running)}/{count} pods Running: "
                                     + json.dumps([p.get("status") for p in pods])[:2000])
            time.sleep(0.2)


@pytest.fixture
def make_lab():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    made: list[str] = []

    def up(name: str, *args: str) -> Lab:
        made.append(name)
        podnet("lab", "up", "--name", name, *args)
        return Lab(name)

    try:
        yield up
    finally:
        for name in made:
            if os.path.exists(f"/run/podnet/lab/{name}/state.json"):
                podnet("lab", "down", "--name", name, check=False)
