"""The real CLI in a subprocess, for the tests that kill it (test_interruptions, test_reliability)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
VOLATILE = {"provenance", "wall_time_s", "created", "resumed_chunks"}


def env() -> dict[str, str]:
    """The subprocess's environment: this checkout importable, the same torch thread count as the tests."""
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": str(torch.get_num_threads()), "TOKENIZERS_PARALLELISM": "false"}


def strip_volatile(obj):
    """A JSON value without its provenance and timing (which differ between equal runs)."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def kill_when(argv: list[str], ready: Callable[[], bool], delay: float = 0.0, timeout: float = 120) -> int | None:
    """Start the CLI, SIGKILL it once ``ready()`` holds (plus ``delay`` s); None if killed, else its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "editor", *argv], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.005)
    if delay and proc.poll() is None:
        time.sleep(delay)
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None
