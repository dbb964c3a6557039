"""Shared fixtures. Tests never reach the Hub: offline mode is forced before transformers is imported."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _own_results_cache(monkeypatch, tmp_path):
    """Each test gets an empty eval results cache (editor.evaluate.lm_eval_run.results_cache_folder), so that no
    test's numbers come from another test's run; the tests of the cache itself share one folder on purpose."""
    monkeypatch.setenv("HNEURONS_RESULTS_CACHE", str(tmp_path / "results-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small forward
    passes run faster on one thread, and much faster on a machine shared with other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from editor.model.loading import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture
def tiny_tok():
    from tinymodels import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A test double of the Hub's HTTP API on 127.0.0.1 with the real client pointed at it (tests/hubserver.py)."""
    from hubserver import serve_for_test

    with serve_for_test(monkeypatch, tmp_path / "hf-home") as server:
        yield server
