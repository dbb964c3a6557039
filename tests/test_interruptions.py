"""Interruptions: the real CLI in a subprocess is killed with SIGKILL at points chosen by seeded random
draws, then the same command is run again; it must finish, and what it leaves is what an uninterrupted
run leaves (byte for byte; JSON manifests equal except their provenance and timing).

After every kill: no final-named file is half-written (each one present equals the uninterrupted run's).
After every re-run: no ``.hneurons-tmp-*`` temporary is left (the re-run cleaned or reused it).

Kill points: collect after a random number of finished chunks; locate and edit after a random progress
marker (a file that appears during the run) plus a random delay; push while the Hub test double holds a
randomly chosen request of the upload (which then either lands after the kill or is dropped), or right
after the commit landed but before the client saw the reply.

The uninterrupted reference runs and the re-runs are in-process (`editor.cli.main`); the killed runs are
subprocesses with the same torch thread count, so all of them compute the same numbers.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from cli_processes import kill_when
from cli_processes import strip_volatile as _strip
from tinymodels import tiny_model, tiny_tokenizer, write_capital_questions

from editor.cli import main

SEEDS = [0, 1, 2]


# ============================================================================================== helpers
def kill_after_random_chunks(argv: list[str], collect_dir: Path, rng: random.Random, fewest: int) -> None:
    """SIGKILL the CLI once a random number (``fewest`` to 11) of collect's 24 chunks are finished, so that
    at least half of the run is still to go (plus a random delay of up to 20 ms)."""
    wanted = rng.randrange(fewest, 12)
    chunks = collect_dir / "chunks"
    kill_when(argv, lambda: chunks.is_dir() and len(list(chunks.glob("chunk-*.jsonl"))) >= wanted,
              delay=rng.uniform(0, 0.02))


def same_file(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    return a.read_bytes() == b.read_bytes()


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_same_tree(got: Path, reference: Path) -> None:
    assert files(got) == files(reference)
    different = [name for name in files(reference) if not same_file(got / name, reference / name)]
    assert different == []


def assert_no_half_written(folder: Path, reference: Path, names: list[str]) -> None:
    """Every final-named file that exists after a kill is complete: equal to the uninterrupted run's."""
    for name in names:
        if (folder / name).exists():
            assert same_file(folder / name, reference / name), f"{name} is half-written after the kill"


def temporaries(*folders: Path) -> list[str]:
    return [str(p) for f in folders if f.exists() for p in f.rglob(".hneurons-tmp-*")]


def in_process(argv: list[str]) -> None:
    assert main(argv) == 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A small llama (4 layers x 256 neurons: big enough that writing and verifying take a moment)."""
    folder = tmp_path_factory.mktemp("ckpt") / "small"
    tiny_model("llama", hidden_size=64, intermediate_size=256, num_hidden_layers=4).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


# ============================================================================================== collect
def test_collect_killed_after_random_chunks_resumes_to_the_same_responses(ckpt, tmp_path):
    data = tmp_path / "qs.jsonl"
    write_capital_questions(data, 48)
    out = tmp_path / "collect"
    argv = ["collect", "--model", str(ckpt), "--data", str(data), "--split", "train", "--samples", "4",
            "--max-new-tokens", "8", "--batch-size", "2", "--out", str(out), "--no-progress", "--device", "cpu"]
    in_process(argv)
    reference = out.rename(tmp_path / "reference")
    interrupted = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        kill_after_random_chunks(argv, out, rng, fewest=0)
        assert_no_half_written(out, reference, ["responses.jsonl", "collect.json"])
        interrupted += not (out / "collect.json").exists()
        in_process(argv)
        assert (out / "responses.jsonl").read_bytes() == (reference / "responses.jsonl").read_bytes()
        assert_same_tree(out, reference)
        assert temporaries(out) == []
        shutil.rmtree(out)
    assert interrupted >= 2, "most kills must land before the end of the run"


# ============================================================================================== locate
def _responses(folder: Path, identity: dict) -> None:
    g = np.random.default_rng(0)
    records = []
    for split, n in (("train", 24), ("validation", 10), ("test", 10)):
        for i in range(n):
            prompt, answer = g.integers(10, 290, size=6).tolist(), g.integers(10, 290, size=3).tolist()
            if i % 2:
                answer[:2] = [7, 7]
            records.append({"id": f"{split}{i}", "split": split, "relation": "ab"[i // 2 % 2], "fabricated": False,
                            "selected": True, "hallucinated": i % 2, "consistency": "wrong" if i % 2 else "correct",
                            "representative": {"input_ids": prompt + answer, "prompt_len": 6, "response_start": 6,
                                               "response_end": 9, "answer_start": 6, "answer_end": 9}})
    folder.mkdir(parents=True)
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "collect.json").write_text(json.dumps({"format": "hneurons.collect/1", "model": identity, "data": {},
                                                     "sampling": {}, "prompt": {}, "questions_sha256": "x"}))


LOCATE_MARKERS = ["features/features.json", "features/shard-00000.safetensors", "probe.safetensors",
                  "predictions.jsonl", "neurons.json", "h_neurons_per_layer.png"]


def test_locate_killed_at_random_points_resumes_to_identical_artifacts(ckpt, tmp_path):
    from editor.model.loading import load_model

    _responses(tmp_path / "responses", load_model(str(ckpt), device="cpu").identity())
    out = tmp_path / "locate"
    argv = ["locate", "--model", str(ckpt), "--responses", str(tmp_path / "responses"), "--out", str(out),
            "--C-path", "6", "--random-draws", "2", "--device", "cpu", "--no-progress"]
    in_process(argv)
    reference = out.rename(tmp_path / "reference")
    finals = [n for n in files(reference) if not n.startswith("features/")] + ["features/shard-00000.safetensors"]
    assert set(LOCATE_MARKERS) <= set(files(reference))
    interrupted = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        marker = rng.choice(LOCATE_MARKERS)
        kill_when(argv, lambda: (out / marker).exists(), delay=rng.uniform(0, 0.2))
        assert_no_half_written(out, reference, finals)
        interrupted += not (out / "locate.json").exists()
        in_process(argv)
        assert_same_tree(out, reference)  # neurons.json, probe.safetensors, features/, report, plots
        assert temporaries(out) == []
        shutil.rmtree(out)
    assert interrupted >= 2, "most kills must land before the end of the run"


# ================================================================================================ edit
def test_edit_killed_at_random_points_leaves_no_half_folder_and_reruns_identically(ckpt, tmp_path):
    neurons = tmp_path / "neurons.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": 0, "index": 3}, {"layer": 2, "index": 100},
                                               {"layer": 3, "index": 255}]}))
    out = tmp_path / "edit"
    argv = ["edit", "--model", str(ckpt), "--neurons", str(neurons), "--out", str(out), "--device", "cpu"]
    in_process(argv)
    reference = out.rename(tmp_path / "reference")

    def in_temporary(name: str) -> Callable[[], bool]:
        return lambda: any((t / name).exists() for t in tmp_path.glob(".hneurons-tmp-edit-*"))

    markers = [lambda: bool(list(tmp_path.glob(".hneurons-tmp-edit-*"))), in_temporary("model.safetensors"),
               in_temporary("neurons.json"), lambda: False]  # the last: only the random delay
    left_behind = 0
    for seed in SEEDS + [3]:
        rng = random.Random(seed)
        index = rng.randrange(len(markers))
        finished = kill_when(argv, markers[index], delay=rng.uniform(0, 0.05) if index < 3 else rng.uniform(2, 6))
        if out.exists():  # the rename is the last step: a final folder is always complete
            assert finished == 0 or finished is None
            assert_same_tree(out, reference)
            shutil.rmtree(out)
        left_behind += bool(temporaries(tmp_path))
        in_process(argv)
        assert_same_tree(out, reference)
        assert temporaries(tmp_path) == [], "the re-run removes the killed run's temporary folder"
        shutil.rmtree(out)
    assert left_behind >= 2, "most kills must land while the temporary folder exists"


# ================================================================================================ push
class StallingHub:
    """Holds one request of the Hub double (by arrival number, or the commit right after it landed) until
    released, so that the client can be killed exactly there; then the held request is processed
    ("land") or dropped ("drop")."""

    def __init__(self, hub, monkeypatch):
        import hubserver

        self.hub, self.count, self.lock = hub, 0, threading.Lock()
        self.at: int | None = None
        self.after_commit = False
        self.mode = "land"
        self.stalled, self.release, self.done = threading.Event(), threading.Event(), threading.Event()
        self.local = threading.local()
        original_dispatch, original_commit = hubserver._Handler._dispatch, hub._commit
        staller = self

        def dispatch(handler, method):
            with staller.lock:
                number, staller.count = staller.count, staller.count + 1
            staller.local.number = number
            try:
                if number == staller.at:
                    staller.stalled.set()
                    staller.release.wait(60)
                    if staller.mode == "drop":
                        handler.close_connection = True
                        return None
                return original_dispatch(handler, method)
            finally:
                if number == staller.at:
                    staller.done.set()

        def commit(*args, **kwargs):
            result = original_commit(*args, **kwargs)
            if staller.after_commit and staller.at is None:
                staller.at = staller.local.number  # dispatch's finally then reports this request done
                staller.stalled.set()
                staller.release.wait(60)
            return result

        monkeypatch.setattr(hubserver._Handler, "_dispatch", dispatch)
        monkeypatch.setattr(hub, "_commit", commit)

    def arm(self, at: int | None, mode: str = "land", after_commit: bool = False) -> None:
        with self.lock:
            self.count = 0
        self.at, self.mode, self.after_commit = at, mode, after_commit
        for event in (self.stalled, self.release, self.done):
            event.clear()

    def finish(self) -> None:
        """Let the held request go and wait until its handler is done (before the re-run starts)."""
        self.release.set()
        if self.at is not None:
            assert self.done.wait(30)
        self.at, self.after_commit = None, False


def test_push_killed_mid_upload_reruns_to_the_same_repo_without_duplicate_commits(ckpt, tmp_path, hub, monkeypatch):
    from editor.edit.stage import edit_model
    from editor.report.publish import push_folder

    neurons = tmp_path / "neurons.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": 1, "index": 7}]}))
    folder = tmp_path / "edit"
    edit_model(str(ckpt), neurons, 0.0, "weights", folder, device="cpu")
    push_folder(folder, "tester/reference")
    n_requests = len(hub.requests)
    reference = hub.repo("tester/reference")
    stall = StallingHub(hub, monkeypatch)
    commit = next(i for i, r in enumerate(hub.requests) if "/commit/" in r.path)
    points = [(commit, "land", False), (commit, "drop", False), (None, "land", True)]  # the commit itself
    for seed in SEEDS:  # and anywhere in the upload
        rng = random.Random(seed)
        points.append((rng.randrange(n_requests), rng.choice(["land", "drop"]), False))
    for number, (at, mode, after_commit) in enumerate(points):
        repo_id = f"tester/killed-{number}"
        hub.lfs_store.clear()  # the LFS upload happens again, as for a first push (the repos keep their files)
        stall.arm(at, mode, after_commit)
        finished = kill_when(["push", str(folder), "--repo", repo_id], stall.stalled.is_set, timeout=60)
        assert finished is None, "the push was killed while the Hub held one of its requests"
        stall.finish()
        push_folder(folder, repo_id)
        repo = hub.repo(repo_id)
        assert repo.files() == reference.files()
        assert len(repo.history()) == len(reference.history()), f"duplicate commit after a kill at {at} ({mode})"
        assert repo.pull_requests() == []


def test_run_killed_during_collect_resumes_to_the_same_artifacts(ckpt, tmp_path):
    data = tmp_path / "qs.jsonl"
    write_capital_questions(data, 48)
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model:\n  id: {ckpt}\n  device: cpu\noutput: {out}\ncollect:\n  data: [{data}]\n"
                      f"  splits: [train]\n  samples: 4\n  max_new_tokens: 8\n  batch_size: 2\n")
    argv = ["run", str(recipe), "--to", "collect", "--no-progress"]
    in_process(argv)
    reference = out.rename(tmp_path / "reference")
    interrupted = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        kill_after_random_chunks(argv, out / "collect", rng, fewest=1)
        assert_no_half_written(out, reference, ["collect/responses.jsonl", "collect/collect.json"])
        interrupted += not (out / "collect" / "collect.json").exists()
        in_process(argv)
        assert (out / "collect" / "responses.jsonl").read_bytes() == (reference / "collect" / "responses.jsonl").read_bytes()
        state, ref_state = (json.loads((f / "run_state.json").read_text()) for f in (out, reference))
        assert state["stages"]["collect"]["key"] == ref_state["stages"]["collect"]["key"]
        assert temporaries(out) == []
        shutil.rmtree(out)
    assert interrupted >= 2
