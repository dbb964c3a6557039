"""Bad inputs, one table: every row makes one bad input, runs the stage on it, and checks the failure.

For each row (see CASES): the error class is exact (``-v`` makes the CLI re-raise, so the class is
checked on the real code path), the CLI exits with status 2 and prints ONE line
``hneurons CMD: error: ...`` naming the culprit (no traceback), and nothing under the test folders was
created or altered: the snapshot of every file (bytes, inode, mtime) and symlink is the same before and
after, so an existing output folder is untouched and no temporary is left behind.

Rows that need a real file system limit use a 64 KiB tmpfs (disk full), a read-only tmpfs (not
writable, as root) or RLIMIT_FSIZE in a subprocess (file size limit; works without mount rights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer, write_collect_folder

from editor.cli import main
from editor.errors import (
    BackendUnavailableError,
    InputError,
    ModelLoadError,
    ModelMismatchError,
    ModelUnavailableError,
    NumericalError,
    OutputExistsError,
    OutputInUseError,
    OutputWriteError,
    PublishError,
    RecipeError,
    UnavailableError,
    UnsupportedArchitectureError,
)

REPO = Path(__file__).resolve().parents[1]
NEURONS = {"neurons": [{"layer": 0, "index": 1}, {"layer": 1, "index": 5}]}


# ============================================================================================ the world
@dataclass
class World:
    """Valid inputs every row starts from (module scope; rows never modify them: the snapshot checks it)."""

    root: Path
    tiny: Path  # tiny llama checkpoint (config + safetensors + tokenizer)
    neurons: Path  # a valid neuron file for it
    probe: Path  # a probe made with it
    probe_other: Path  # a probe made with other weights
    collect: Path  # a valid collect folder (both classes in every split)
    edit: Path  # an `hneurons edit` output folder
    identity: dict
    identity_other: dict


def _write_probe(path: Path, identity: dict) -> None:
    from editor.locate.settings import LocateSettings
    from editor.locate.stage import FittedProbe, Standardiser, write_probe

    n = identity["num_layers"] * identity["d_ff"]
    weight = torch.zeros(n)
    weight[[1, identity["d_ff"] + 5]] = torch.tensor([0.5, 0.25])
    write_probe(path, FittedProbe(weight, 0.0, Standardiser(torch.zeros(n), torch.ones(n)), 1.0), LocateSettings(),
                identity)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from editor.edit.stage import edit_model
    from editor.model.loading import load_model

    root = tmp_path_factory.mktemp("world")
    tiny, other = root / "tiny", root / "other"
    for folder, seed in ((tiny, 0), (other, 1)):
        tiny_model("llama", seed=seed).save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
    identity = load_model(str(tiny), device="cpu").identity()
    identity_other = load_model(str(other), device="cpu").identity()
    shutil.rmtree(other)  # only its identity is needed
    (root / "neurons.json").write_text(json.dumps(NEURONS))
    _write_probe(root / "probe.safetensors", identity)
    _write_probe(root / "probe-other.safetensors", identity_other)
    write_collect_folder(root / "collect", identity)
    edit_model(str(tiny), root / "neurons.json", 0.0, "weights", root / "edit", device="cpu")
    return World(root, tiny, root / "neurons.json", root / "probe.safetensors", root / "probe-other.safetensors",
                 root / "collect", root / "edit", identity, identity_other)


# ============================================================================================ snapshots
def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry below ``roots``: files by (sha256, inode, mtime), symlinks by target, folders by name."""
    state: dict[str, tuple] = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            continue
        for path in [root, *sorted(root.rglob("*"))]:
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                state[str(path)] = ("dir",)
            else:
                st = path.stat()
                state[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_ino, st.st_mtime_ns)
    return state


def changes(before: dict, after: dict) -> list[str]:
    return ([f"created {p}" for p in sorted(after.keys() - before.keys())]
            + [f"removed {p}" for p in sorted(before.keys() - after.keys())]
            + [f"altered {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


# =========================================================================================== the rows
@dataclass
class Ctx:
    """What a row's setup gets: a fresh folder, the shared world, and fixtures on demand."""

    tmp: Path
    w: World
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest
    cleanups: list

    def hub(self):
        return self.request.getfixturevalue("hub")

    def checkpoint(self, name: str, **config) -> Path:
        """A copy of the tiny checkpoint with ``config`` keys changed."""
        folder = self.tmp / name
        shutil.copytree(self.w.tiny, folder)
        if config:
            doc = json.loads((folder / "config.json").read_text())
            doc.update(config)
            (folder / "config.json").write_text(json.dumps(doc))
        return folder

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def mount_tmpfs(self, name: str, options: str) -> Path | None:
        """A tmpfs at tmp/name (root only); None when this machine does not allow mounting."""
        folder = self.tmp / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            folder.rmdir()
            return None
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(folder)], check=False))
        return folder


@dataclass
class Action:
    argv: list[str] | None = None  # in-process CLI
    call: Callable[[], object] | None = None  # Python API (where the CLI is impractical)
    subprocess_limit: int | None = None  # run the CLI in a subprocess with RLIMIT_FSIZE = this many bytes
    after: Callable[[], None] | None = None  # extra check (e.g. nothing reached the Hub)


@dataclass
class Case:
    id: str
    stage: str
    setup: Callable[[Ctx], tuple[Action, str]]  # -> the action and the text that names the culprit
    error: type


def edit_argv(ctx: Ctx, model, out="out", *extra) -> list[str]:
    return ["edit", "--model", str(model), "--neurons", str(ctx.w.neurons), "--out", str(ctx.tmp / out),
            "--device", "cpu", *extra]


def collect_argv(ctx: Ctx, data, *extra) -> list[str]:
    return ["collect", "--model", str(ctx.w.tiny), "--data", str(data), "--split", "train", "--samples", "2",
            "--max-new-tokens", "4", "--out", str(ctx.tmp / "out"), "--device", "cpu", "--no-progress", *extra]


def locate_argv(ctx: Ctx, responses) -> list[str]:
    return ["locate", "--model", str(ctx.w.tiny), "--responses", str(responses), "--out", str(ctx.tmp / "out"),
            "--device", "cpu", "--no-progress"]


def question_rows(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


GOOD_ROW = {"id": "q1", "question": "What is the capital of France?", "answers": ["Paris"], "split": "train"}


# ---- models
def model_path_missing(ctx):
    return Action(edit_argv(ctx, ctx.tmp / "no-such-model")), "no-such-model"


def folder_without_config(ctx):
    folder = ctx.checkpoint("noconfig")
    (folder / "config.json").unlink()
    return Action(edit_argv(ctx, folder)), "config.json"


def unsupported_architecture(ctx):
    return Action(edit_argv(ctx, ctx.checkpoint("bert", model_type="bert"))), "'bert'"


def moe_architecture(ctx):
    folder = ctx.checkpoint("mixtral", model_type="mixtral", num_local_experts=4, num_experts_per_tok=2)
    return Action(edit_argv(ctx, folder)), "mixture-of-experts"


def truncated_safetensors(ctx):
    folder = ctx.checkpoint("truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return Action(edit_argv(ctx, folder)), str(weights)


def index_names_missing_shard(ctx):
    folder = ctx.checkpoint("sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    names = ["model.embed_tokens.weight", "lm_head.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        names[0]: "model-00001-of-00002.safetensors", names[1]: "model-00002-of-00002.safetensors"}}))
    return Action(edit_argv(ctx, folder)), "model-00002-of-00002.safetensors"


class _Planted:
    """Unpickling this creates a file: proof that a pickle ran code (the snapshot would show the file)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def pickle_only_checkpoint(ctx):
    import pickle

    folder = ctx.checkpoint("pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Planted(str(ctx.tmp / "pwned"))}))
    return Action(edit_argv(ctx, folder)), "--allow-pickle"


def remote_code_required(ctx):
    folder = ctx.checkpoint("remote", model_type="my_custom_lm",
                           auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.X"})
    (folder / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    return Action(edit_argv(ctx, folder)), "--trust-remote-code"


def gguf_unsupported_architecture(ctx):
    import gguf

    path = ctx.tmp / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((10, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ctx.monkeypatch.setenv("HNEURONS_CACHE", str(ctx.tmp / "cache"))
    ctx.tmp.joinpath("cache").mkdir()
    return Action(edit_argv(ctx, path)), "architecture bert"


def gguf_file_missing(ctx):
    return Action(edit_argv(ctx, ctx.tmp / "model.gguf")), "model.gguf"


# ---- question files
def data_missing_columns(ctx):
    path = ctx.file("qs.jsonl", question_rows([{"id": "q1", "question": "Capital of France?"}]))
    return Action(collect_argv(ctx, path)), "'answers'"


def data_empty_answers(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW, dict(GOOD_ROW, id="q2", answers=[])]))
    return Action(collect_argv(ctx, path)), "'q2'"


def data_not_utf8(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]).encode() + b'{"id": "q2", "question": "Caf\xe9?"}\n')
    return Action(collect_argv(ctx, path)), "UTF-8"


def data_duplicate_ids(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW, dict(GOOD_ROW, question="Capital of Spain?")]))
    return Action(collect_argv(ctx, path)), "'q1'"


def data_zero_rows(ctx):
    path = ctx.file("qs.jsonl", "\n")
    return Action(collect_argv(ctx, path)), "no rows"


def data_unsupported_file_type(ctx):
    path = ctx.file("qs.txt", "What is the capital of France?\n")
    return Action(collect_argv(ctx, path)), "'.txt'"


def data_unknown_bundled_set(ctx):
    return Action(collect_argv(ctx, "bundled:trivia-nope")), "'trivia-nope'"


def collect_bad_limit(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]))
    return Action(collect_argv(ctx, path, "--limit", "train=lots")), "train=lots"


# ---- collect output -> locate
def collect_one_class(ctx):
    folder = ctx.tmp / "collect"
    write_collect_folder(folder, ctx.w.identity, hallucinated=lambda i: 0)
    return Action(locate_argv(ctx, folder)), "both classes"


def collect_output_missing(ctx):
    folder = ctx.tmp / "collect"
    folder.mkdir()
    return Action(locate_argv(ctx, folder)), str(folder / "collect.json")


def collect_output_of_other_model(ctx):
    folder = ctx.tmp / "collect"
    write_collect_folder(folder, ctx.w.identity_other)
    return Action(locate_argv(ctx, folder)), both_identities(ctx)


# ---- probes and neuron files
def both_identities(ctx) -> tuple[str, str]:
    """A mismatch message names the artifact's model and the model given (their weight fingerprints)."""
    return ctx.w.identity_other["weights_fingerprint"], ctx.w.identity["weights_fingerprint"]


def probe_of_other_model(ctx):
    return Action(["detect", "--model", str(ctx.w.tiny), "--probe", str(ctx.w.probe_other), "--question", "Who?",
                   "--answer", "Me", "--device", "cpu"]), ("probe-other.safetensors", *both_identities(ctx))


def probe_not_a_probe(ctx):
    path = ctx.file("probe.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return Action(["detect", "--model", str(ctx.w.tiny), "--probe", str(path), "--question", "Who?",
                   "--device", "cpu"]), str(path)


def detect_input_not_utf8(ctx):
    path = ctx.file("qa.jsonl", b'{"question": "Caf\xe9?", "answer": "yes"}\n')
    return Action(["detect", "--model", str(ctx.w.tiny), "--probe", str(ctx.w.probe), "--input", str(path),
                   "--out", str(ctx.tmp / "scored.jsonl"), "--device", "cpu"]), str(path)


def neurons_of_other_model(ctx):
    path = ctx.file("neurons.json", json.dumps({**NEURONS, "model": ctx.w.identity_other}))
    return Action(["edit", "--model", str(ctx.w.tiny), "--neurons", str(path), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), both_identities(ctx)


def neuron_index_out_of_range(ctx):
    path = ctx.file("neurons.json", json.dumps({"neurons": [{"layer": 1, "index": 48}]}))
    return Action(["edit", "--model", str(ctx.w.tiny), "--neurons", str(path), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), "48"


def neuron_layer_out_of_range(ctx):
    path = ctx.file("neurons.json", json.dumps({"neurons": [{"layer": 7, "index": 3}]}))
    return Action(["edit", "--model", str(ctx.w.tiny), "--neurons", str(path), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), "layer 7"


def neuron_file_not_json(ctx):
    path = ctx.file("neurons.json", "{'neurons': [(0, 1)]}")
    return Action(["edit", "--model", str(ctx.w.tiny), "--neurons", str(path), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), str(path)


def alpha(value):
    def setup(ctx):
        return Action(edit_argv(ctx, ctx.w.tiny, "out", "--alpha", value)), f"got {value}"

    setup.__name__ = f"alpha_{value}"
    return setup


def layer_alpha_malformed(ctx):
    return Action(edit_argv(ctx, ctx.w.tiny, "out", "--layer-alpha", "one=0.5")), "one=0.5"


# ---- evaluation
def unknown_lm_eval_task(ctx):
    return Action(["eval", "--base", str(ctx.w.tiny), "--tasks", "no_such_task_xyz", "--limit", "2", "--out",
                   str(ctx.tmp / "out"), "--device", "cpu"]), "no_such_task_xyz"


# ---- recipes
RECIPE = "model:\n  id: {model}\noutput: {out}\n"


def recipe(text_fn, culprit):
    def setup(ctx):
        path = ctx.file("recipe.yaml", text_fn(RECIPE.format(model=ctx.w.tiny, out=ctx.tmp / "out")))
        return Action(["recipe", "check", str(path)]), culprit

    return setup


def run_recipe(text_fn, culprit):
    """The same bad recipes through `hneurons run` (nothing may be created: not even the output folder)."""
    def setup(ctx):
        path = ctx.file("recipe.yaml", text_fn(RECIPE.format(model=ctx.w.tiny, out=ctx.tmp / "out")))
        return Action(["run", str(path), "--no-progress"]), culprit

    return setup


# ---- outputs
def output_folder_exists(ctx):
    out = ctx.tmp / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    return Action(edit_argv(ctx, ctx.w.tiny)), str(out)


def output_folder_not_writable(ctx):
    if os.geteuid() == 0:
        parent = ctx.mount_tmpfs("ro", "ro,size=16k")
        assert parent is not None, "as root a read-only folder needs a read-only mount; this machine refused it"
    else:
        parent = ctx.tmp / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        ctx.cleanups.append(lambda: parent.chmod(0o755))
    return Action(edit_argv(ctx, ctx.w.tiny, "ro/out")), str(parent)


def output_parent_is_a_file(ctx):
    ctx.file("file", "not a folder")
    return Action(edit_argv(ctx, ctx.w.tiny, "file/out")), str(ctx.tmp / "file")


def disk_full(ctx):
    """A 64 KiB tmpfs: the tiny checkpoint (~60 KB of weights plus tokenizer) does not fit."""
    full = ctx.mount_tmpfs("full", "size=64k")
    if full is None:  # no mount rights: the same failure through a file size limit
        return Action(edit_argv(ctx, ctx.w.tiny), subprocess_limit=32 * 1024), str(ctx.tmp / "out")
    return Action(edit_argv(ctx, ctx.w.tiny, "full/out")), str(full / "out")


def file_size_limit(ctx):
    """RLIMIT_FSIZE (EFBIG): works without mount rights; the CLI runs in a subprocess."""
    return Action(edit_argv(ctx, ctx.w.tiny), subprocess_limit=32 * 1024), str(ctx.tmp / "out")


# ---- the Hub
def hub_repo_name_invalid(ctx):
    hub = ctx.hub()

    def nothing_sent():
        assert hub.requests == []

    return Action(["push", str(ctx.w.edit), "--repo", "tester/bad name!"], after=nothing_sent), "'tester/bad name!'"


def push_without_token(ctx):
    hub = ctx.hub()
    ctx.monkeypatch.delenv("HF_TOKEN")

    def nothing_sent():
        assert hub.requests == []

    return Action(["push", str(ctx.w.edit), "--repo", "tester/model"], after=nothing_sent), "HF_TOKEN"


def push_folder_without_manifest(ctx):
    folder = ctx.tmp / "plain"
    shutil.copytree(ctx.w.tiny, folder)
    ctx.hub()
    return Action(["push", str(folder), "--repo", "tester/model"]), "hneurons_edit.json"


# ---- the environment: named before any model loads (reliability round 2)
def empty_caches(ctx) -> None:
    """Point the Hub and datasets caches at empty folders: nothing is cached, whatever this machine holds."""
    from huggingface_hub import constants

    for name in ("hub-cache", "datasets-cache"):
        (ctx.tmp / name).mkdir()
    ctx.monkeypatch.setattr(constants, "HF_HUB_CACHE", str(ctx.tmp / "hub-cache"))
    ctx.monkeypatch.setenv("HF_DATASETS_CACHE", str(ctx.tmp / "datasets-cache"))


def online(ctx) -> None:
    """Leave offline mode (what importing huggingface_hub without HF_HUB_OFFLINE would have set)."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        ctx.monkeypatch.delenv(name, raising=False)
    ctx.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def eval_builtin_task_offline(ctx):
    empty_caches(ctx)
    return Action(["eval", "--base", str(ctx.w.tiny), "--tasks", "arc_easy", "--limit", "2", "--out",
                   str(ctx.tmp / "out"), "--device", "cpu"]), ("arc_easy", "allenai/ai2_arc", "offline")


def sweep_builtin_task_offline(ctx):
    empty_caches(ctx)
    return Action(["sweep", "--base", str(ctx.w.tiny), "--neurons", str(ctx.w.neurons), "--tasks", "hellaswag",
                   "--out", str(ctx.tmp / "out"), "--device", "cpu"]), ("hellaswag", "Rowan/hellaswag", "offline")


def recipe_check_task_offline(ctx):
    empty_caches(ctx)
    path = ctx.file("recipe.yaml", RECIPE.format(model=ctx.w.tiny, out=ctx.tmp / "out") + "eval:\n  tasks: [hneurons, "
                                                                                           "arc_easy]\n")
    return Action(["recipe", "check", str(path)]), ("eval.tasks", "arc_easy", "allenai/ai2_arc")


def run_task_offline(ctx):
    empty_caches(ctx)
    path = ctx.file("recipe.yaml", RECIPE.format(model=ctx.w.tiny, out=ctx.tmp / "out") + "eval:\n  tasks: [arc_easy]\n")
    return Action(["run", str(path), "--no-progress"]), ("eval.tasks", "arc_easy")


def hub_model_offline(ctx):
    empty_caches(ctx)
    return Action(edit_argv(ctx, "acme/not-cached")), ("acme/not-cached", "offline", "not in the Hub cache")


def hub_base_offline(ctx):
    empty_caches(ctx)
    return Action(["eval", "--base", "acme/not-cached", "--model", str(ctx.w.tiny), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), ("acme/not-cached", "offline")


def hub_unreachable(ctx):
    empty_caches(ctx)
    online(ctx)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx.monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    return Action(edit_argv(ctx, "acme/not-cached")), ("acme/not-cached", "cannot be reached")


def hub_no_such_repo(ctx):
    ctx.hub()
    empty_caches(ctx)
    return Action(edit_argv(ctx, "tester/no-such-model")), ("tester/no-such-model", "no model repository")


def cuda_without_cuda(ctx):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    return Action(edit_argv(ctx, ctx.w.tiny)[:-2] + ["--device", "cuda"]), ("device cuda", "--device cpu")


def vllm_not_installed(ctx):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and a GPU are here")
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]))
    return Action(collect_argv(ctx, path, "--backend", "vllm")), "vllm"


def gguf_converter_missing(ctx):
    return Action(edit_argv(ctx, ctx.w.tiny, "out", "--mode", "gguf", "--gguf-converter",
                            "/nowhere/convert_hf_to_gguf.py")), ("/nowhere/convert_hf_to_gguf.py", "llama.cpp")


def run_gguf_converter_missing(ctx):
    path = ctx.file("recipe.yaml", RECIPE.format(model=ctx.w.tiny, out=ctx.tmp / "out") + "edit:\n  modes: [gguf]\n  "
                                                                                           "gguf_converter: /nowhere/"
                                                                                           "convert_hf_to_gguf.py\n")
    return Action(["run", str(path), "--no-progress"]), "/nowhere/convert_hf_to_gguf.py"


# ---- one writer per output folder
HOLDER = ("import sys\nfrom editor.locking import output_lock\nwith output_lock(sys.argv[1]):\n"
          "    print('locked', flush=True)\n    sys.stdin.read()\n")


def hold_lock(ctx, folder: Path) -> int:
    """Another process that holds ``folder``'s lock until the row is over; returns its pid."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    ctx.cleanups.append(lambda: (proc.kill(), proc.wait()))
    return proc.pid


def output_in_use(ctx):
    pid = hold_lock(ctx, ctx.tmp / "out")
    return Action(edit_argv(ctx, ctx.w.tiny)), (str(ctx.tmp / "out"), f"pid {pid}")


def recipe_output_in_use(ctx):
    path = ctx.file("recipe.yaml", RECIPE.format(model=ctx.w.tiny, out=ctx.tmp / "run-out"))
    pid = hold_lock(ctx, ctx.tmp / "run-out")
    return Action(["run", str(path), "--no-progress"]), (str(ctx.tmp / "run-out"), f"pid {pid}")


# ---- inputs from elsewhere
def adapter_of_other_model(ctx):
    from editor.edit.stage import edit_model

    folder = ctx.tmp / "ia3"
    edit_model(str(ctx.w.tiny), ctx.w.neurons, 0.0, "ia3", folder, device="cpu")
    manifest = json.loads((folder / "hneurons_edit.json").read_text())
    (folder / "hneurons_edit.json").write_text(json.dumps({**manifest, "model": ctx.w.identity_other}))
    return Action(["eval", "--base", str(ctx.w.tiny), "--adapter", str(folder), "--tasks", "hneurons_facts", "--limit",
                   "1", "--out", str(ctx.tmp / "out"), "--device", "cpu"]), both_identities(ctx)


def weights_not_safetensors(ctx):
    folder = ctx.checkpoint("text-weights")
    (folder / "model.safetensors").write_text("this is a text file, not safetensors\n")
    return Action(edit_argv(ctx, folder)), (str(folder / "model.safetensors"), "not a safetensors file")


def adapter_not_safetensors(ctx):
    folder = ctx.tmp / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 40)
    return Action(["eval", "--base", str(ctx.w.tiny), "--adapter", str(folder), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), str(folder / "adapter_model.safetensors")


def _tiny_gguf(ctx) -> bytes:
    import gguf

    path = ctx.tmp / "whole.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for i in range(4):
        writer.add_tensor(f"t{i}.weight", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


def gguf_truncated(ctx):
    data = _tiny_gguf(ctx)
    path = ctx.file("truncated.gguf", data[: len(data) - 100])
    return Action(edit_argv(ctx, path)), (str(path), f"byte {len(data) - 100}")


def gguf_not_gguf(ctx):
    path = ctx.file("model.gguf", "just text\n" * 10)
    return Action(edit_argv(ctx, path)), (str(path), "byte 0")


def data_malformed_line(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]) + '{"id": "q2", "question": \n')
    return Action(collect_argv(ctx, path)), (str(path), "line 2")


def responses_not_utf8(ctx):
    folder = ctx.tmp / "collect"
    write_collect_folder(folder, ctx.w.identity)
    lines = (folder / "responses.jsonl").read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"r"', b'"\xe9"')
    (folder / "responses.jsonl").write_bytes(b"".join(lines))
    offset = sum(len(x) for x in lines[:3]) + lines[3].index(b"\xe9")
    return Action(locate_argv(ctx, folder)), ("line 4", f"byte offset {offset}")


# ---- numbers that cannot be
def layer_alpha(value):
    def setup(ctx):
        return Action(edit_argv(ctx, ctx.w.tiny, "out", "--layer-alpha", f"1={value}")), ("--layer-alpha", value)

    setup.__name__ = f"layer_alpha_{value}"
    return setup


def neuron_alpha_nan(ctx):
    path = ctx.file("neurons.json", '{"neurons": [{"layer": 0, "index": 1, "alpha": NaN}]}')
    return Action(["edit", "--model", str(ctx.w.tiny), "--neurons", str(path), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), (str(path), "neurons[0].alpha", "nan")


def neuron_alpha_infinite(ctx):
    path = ctx.file("neurons.json", '{"neurons": [{"layer": 0, "index": 1}, {"layer": 1, "index": 2, '
                                    '"alpha": -Infinity}]}')
    return Action(["edit", "--model", str(ctx.w.tiny), "--neurons", str(path), "--out", str(ctx.tmp / "out"),
                   "--device", "cpu"]), (str(path), "neurons[1].alpha")


def sweep_alpha_nan(ctx):
    return Action(["sweep", "--base", str(ctx.w.tiny), "--neurons", str(ctx.w.neurons), "--alphas", "0,nan",
                   "--out", str(ctx.tmp / "out"), "--device", "cpu"]), ("--alphas", "nan")


def eval_alpha_nan(ctx):
    return Action(["eval", "--base", str(ctx.w.tiny), "--neurons", str(ctx.w.neurons), "--alpha", "nan",
                   "--out", str(ctx.tmp / "out"), "--device", "cpu"]), ("alpha", "nan")


def samples_negative(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]))
    args = collect_argv(ctx, path)
    args[args.index("--samples") + 1] = "-1"
    return Action(args), "--samples"


def limit_negative(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]))
    return Action(collect_argv(ctx, path, "--limit", "train=-3")), ("--limit", "-3")


def empty_split_after_filtering(ctx):
    path = ctx.file("qs.jsonl", question_rows([GOOD_ROW]))
    args = collect_argv(ctx, path)
    args[args.index("--split") + 1] = "validation"
    return Action(args), ("'validation'", str(path))


CASES = [
    Case("model path does not exist", "load", model_path_missing, ModelLoadError),
    Case("folder without config.json", "load", folder_without_config, ModelLoadError),
    Case("unsupported architecture (bert)", "load", unsupported_architecture, UnsupportedArchitectureError),
    Case("mixture-of-experts architecture", "load", moe_architecture, UnsupportedArchitectureError),
    Case("truncated safetensors", "load", truncated_safetensors, ModelLoadError),
    Case("index names a missing shard", "load", index_names_missing_shard, ModelLoadError),
    Case("pickled .bin only, no --allow-pickle", "load", pickle_only_checkpoint, ModelLoadError),
    Case("trust_remote_code required, not given", "load", remote_code_required, ModelLoadError),
    Case("GGUF of an unsupported architecture", "load", gguf_unsupported_architecture, UnsupportedArchitectureError),
    Case("GGUF file missing", "load", gguf_file_missing, ModelLoadError),
    Case("dataset: missing columns", "collect", data_missing_columns, InputError),
    Case("dataset: empty answers", "collect", data_empty_answers, InputError),
    Case("dataset: non-UTF-8 bytes", "collect", data_not_utf8, InputError),
    Case("dataset: duplicate ids", "collect", data_duplicate_ids, InputError),
    Case("dataset: 0 rows", "collect", data_zero_rows, InputError),
    Case("dataset: unsupported file type", "collect", data_unsupported_file_type, InputError),
    Case("dataset: unknown bundled set", "collect", data_unknown_bundled_set, InputError),
    Case("collect: malformed --limit", "collect", collect_bad_limit, InputError),
    Case("collect output with one class", "locate", collect_one_class, InputError),
    Case("collect folder without its files", "locate", collect_output_missing, InputError),
    Case("collect output of another model", "locate", collect_output_of_other_model, ModelMismatchError),
    Case("probe of another model", "detect", probe_of_other_model, ModelMismatchError),
    Case("probe file that is not a probe", "detect", probe_not_a_probe, InputError),
    Case("detect input with non-UTF-8 bytes", "detect", detect_input_not_utf8, InputError),
    Case("neuron file of another model", "edit", neurons_of_other_model, ModelMismatchError),
    Case("neuron index out of range", "edit", neuron_index_out_of_range, InputError),
    Case("neuron layer out of range", "edit", neuron_layer_out_of_range, InputError),
    Case("neuron file is not JSON", "edit", neuron_file_not_json, InputError),
    Case("alpha negative", "edit", alpha("-1"), InputError),
    Case("alpha NaN", "edit", alpha("nan"), InputError),
    Case("alpha inf", "edit", alpha("inf"), InputError),
    Case("--layer-alpha malformed", "edit", layer_alpha_malformed, InputError),
    Case("unknown lm-eval task", "eval", unknown_lm_eval_task, InputError),
    Case("recipe: unknown key", "recipe", recipe(lambda t: t + "colect:\n  samples: 3\n", "colect"), RecipeError),
    Case("recipe: wrong type", "recipe", recipe(lambda t: t + "collect:\n  samples: three\n", "collect.samples"),
         RecipeError),
    Case("recipe: missing model", "recipe", recipe(lambda t: t.split("\n", 2)[2], "model"), RecipeError),
    Case("output folder exists", "edit", output_folder_exists, OutputExistsError),
    Case("output folder not writable", "edit", output_folder_not_writable, InputError),
    Case("output parent is a file", "edit", output_parent_is_a_file, InputError),
    Case("disk full during a write (64 KiB tmpfs)", "edit", disk_full, OutputWriteError),
    Case("file size limit during a write (RLIMIT_FSIZE)", "edit", file_size_limit, OutputWriteError),
    Case("Hub repo name invalid", "push", hub_repo_name_invalid, PublishError),
    Case("push without a token", "push", push_without_token, PublishError),
    Case("push of a folder without a manifest", "push", push_folder_without_manifest, PublishError),
    Case("run: recipe with an unknown key", "run", run_recipe(lambda t: t + "colect:\n  samples: 3\n", "colect"),
         RecipeError),
    Case("run: recipe with a wrong type", "run",
         run_recipe(lambda t: t + "collect:\n  samples: three\n", "collect.samples"), RecipeError),
    Case("run: recipe without a model", "run", run_recipe(lambda t: t.split("\n", 2)[2], "model"), RecipeError),
    # reliability round 2: the environment, before any model loads
    Case("eval: built-in lm-eval task, offline and not cached", "eval", eval_builtin_task_offline, UnavailableError),
    Case("sweep: built-in lm-eval task, offline and not cached", "sweep", sweep_builtin_task_offline,
         UnavailableError),
    Case("recipe check: a task's dataset offline and not cached", "recipe", recipe_check_task_offline,
         UnavailableError),
    Case("run: a task's dataset offline and not cached", "run", run_task_offline, UnavailableError),
    Case("Hub model id, offline and not cached (--model)", "load", hub_model_offline, ModelUnavailableError),
    Case("Hub model id, offline and not cached (--base)", "eval", hub_base_offline, ModelUnavailableError),
    Case("Hub model id, Hub unreachable", "load", hub_unreachable, ModelUnavailableError),
    Case("Hub model id, no such repository", "load", hub_no_such_repo, ModelUnavailableError),
    Case("--device cuda without a CUDA device", "load", cuda_without_cuda, UnavailableError),
    Case("collect --backend vllm without vLLM", "collect", vllm_not_installed, BackendUnavailableError),
    Case("edit --mode gguf without llama.cpp's converter", "edit", gguf_converter_missing, InputError),
    Case("run: GGUF edit without llama.cpp's converter", "run", run_gguf_converter_missing, InputError),
    # one writer per output folder
    Case("output folder in use by another process", "edit", output_in_use, OutputInUseError),
    Case("recipe output folder in use by another run", "run", recipe_output_in_use, OutputInUseError),
    # inputs from elsewhere
    Case("adapter made from another model", "eval", adapter_of_other_model, ModelMismatchError),
    Case("model.safetensors that is not safetensors", "load", weights_not_safetensors, ModelLoadError),
    Case("adapter_model.safetensors that is not safetensors", "eval", adapter_not_safetensors, ModelLoadError),
    Case("truncated GGUF", "load", gguf_truncated, ModelLoadError),
    Case(".gguf file that is not GGUF", "load", gguf_not_gguf, ModelLoadError),
    Case("dataset: a malformed JSONL line", "collect", data_malformed_line, InputError),
    Case("collect output with a non-UTF-8 line", "locate", responses_not_utf8, InputError),
    # numbers that cannot be
    Case("--layer-alpha NaN", "edit", layer_alpha("nan"), InputError),
    Case("--layer-alpha inf", "edit", layer_alpha("inf"), InputError),
    Case("per-neuron alpha NaN in the neuron file", "edit", neuron_alpha_nan, InputError),
    Case("per-neuron alpha -Infinity in the neuron file", "edit", neuron_alpha_infinite, InputError),
    Case("sweep --alphas with NaN", "sweep", sweep_alpha_nan, InputError),
    Case("eval --alpha NaN (before the model loads)", "eval", eval_alpha_nan, InputError),
    Case("collect --samples negative", "collect", samples_negative, InputError),
    Case("collect --limit negative", "collect", limit_negative, InputError),
    Case("collect: split empty after filtering", "collect", empty_split_after_filtering, InputError),
]


# ============================================================================================ the test
def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _raised_by_cli(argv: list[str]) -> BaseException:
    with pytest.raises(BaseException) as info:
        main(["-v", *argv])
    return info.value


def _run_limited(argv: list[str], limit: int, verbose: bool) -> subprocess.CompletedProcess:
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "editor", *(["-v"] if verbose else []), *argv], env=env,
                          capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)


def _check_message(err: str, command: str, culprit: str | tuple[str, ...]) -> str:
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith(f"hneurons {command}: error: ")]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    for name in culprit if isinstance(culprit, tuple) else (culprit,):
        assert name in lines[0], f"the message does not name {name!r}: {lines[0]}"
    assert "Traceback" not in err, err
    return lines[0]


# The documented table (docs/BAD_INPUTS.md) is made from the messages of a real run of this table:
#   HNEURONS_BAD_INPUT_TABLE=/tmp/bad pytest tests/test_bad_inputs.py -k test_bad_input
#   python tests/render_bad_input_table.py /tmp/bad > docs/BAD_INPUTS.md
TABLE_DIR = os.environ.get("HNEURONS_BAD_INPUT_TABLE")
DOCUMENTED_TABLE = Path(__file__).parents[1] / "docs" / "BAD_INPUTS.md"


def _record(case: "Case", command: str, message: str, world: "World", tmp: Path) -> None:
    """Write the case's real message for the documented table (paths of the test folders shortened)."""
    if not TABLE_DIR:
        return
    for folder, name in ((str(tmp), "DIR"), (str(world.root), "W")):
        message = message.replace(folder, name)
    out = Path(TABLE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    row = {"id": case.id, "stage": case.stage, "error": case.error.__name__, "command": command, "message": message}
    (out / f"{hashlib.sha256(case.id.encode()).hexdigest()[:16]}.json").write_text(json.dumps(row))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, tmp_path, monkeypatch, request, capsys):
    cleanups: list = []
    try:
        ctx = Ctx(tmp_path, world, monkeypatch, request, cleanups)
        action, culprit = case.setup(ctx)
        watched = (tmp_path, world.root)
        before = snapshot(*watched)
        if action.subprocess_limit:
            done = _run_limited(action.argv, action.subprocess_limit, verbose=False)
            assert done.returncode == 2, done.stderr[-3000:]
            _record(case, f"hneurons {action.argv[0]}", _check_message(done.stderr, action.argv[0], culprit), world,
                    tmp_path)
            verbose = _run_limited(action.argv, action.subprocess_limit, verbose=True)
            last = verbose.stderr.strip().splitlines()[-1]
            assert last.startswith(f"{case.error.__module__}.{case.error.__name__}: "), verbose.stderr[-3000:]
        elif action.argv is not None:
            rc, _, err = _run_cli(action.argv, capsys)
            assert rc == 2, err
            _record(case, f"hneurons {action.argv[0]}", _check_message(err, action.argv[0], culprit), world, tmp_path)
            raised = _raised_by_cli(action.argv)
            assert type(raised) is case.error, f"{type(raised).__name__}: {raised}"
        else:
            with pytest.raises(case.error) as info:
                action.call()
            assert type(info.value) is case.error, info.value
            assert all(c in str(info.value) for c in (culprit if isinstance(culprit, tuple) else (culprit,))), info.value
            _record(case, "Python API", f"{type(info.value).__name__}: {info.value}", world, tmp_path)
        if action.after:
            action.after()
        assert changes(before, snapshot(*watched)) == []
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def test_the_table_has_at_least_30_distinct_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert len({c.setup for c in CASES}) == len(CASES)


def test_the_documented_table_lists_every_case():
    """docs/BAD_INPUTS.md is regenerated from a real run (see TABLE_DIR); a new case must appear in it."""
    text = DOCUMENTED_TABLE.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Case")]
    listed = {row.split(" | ")[0].removeprefix("| ").replace("\\|", "|") for row in rows}
    assert {c.id for c in CASES} <= listed, sorted({c.id for c in CASES} - listed)


# ==================================================================================== numerical safety
def _fp16_overflowing_checkpoint(folder: Path, layer: int = 1) -> None:
    """A tiny llama in float16 whose FFN in ``layer`` overflows fp16 (|z| > 65504) on any input."""
    model = tiny_model("llama").to(torch.float16)
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.up_proj.weight.fill_(40.0)
        mlp.gate_proj.weight.fill_(40.0)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)


def test_fp16_overflow_in_activations_is_reported_with_its_layer_and_never_stored(tmp_path, capsys):
    from editor.model.loading import load_model

    ckpt = tmp_path / "fp16"
    _fp16_overflowing_checkpoint(ckpt)
    identity = load_model(str(ckpt), device="cpu", dtype="float16").identity()
    write_collect_folder(tmp_path / "collect", identity)
    out = tmp_path / "locate"
    argv = ["locate", "--model", str(ckpt), "--dtype", "float16", "--responses", str(tmp_path / "collect"),
            "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _check_message(err, "locate", "layer 1")
    assert "NaN or inf" in err and "float32" in err  # what happened and what to do
    assert not list(out.rglob("shard-*.safetensors")) and not (out / "neurons.json").exists()
    assert json.loads((out / "features" / "features.json").read_text())["complete"] is False
    with pytest.raises(NumericalError):
        main(["-v", *argv])


def test_detector_refuses_overflowing_activations(tmp_path):
    from editor.locate.detect import Detector
    from editor.model.loading import load_model

    ckpt = tmp_path / "fp16"
    _fp16_overflowing_checkpoint(ckpt, layer=0)
    lm = load_model(str(ckpt), device="cpu", dtype="float16")
    _write_probe(tmp_path / "probe.safetensors", lm.identity())
    detector = Detector(lm, str(tmp_path / "probe.safetensors"))
    with pytest.raises(NumericalError, match="layer 0"):
        list(detector.score([{"question": "Capital of France?", "answer": "Paris"}]))


def test_zero_and_constant_features_do_not_break_locate(world, tmp_path):
    """All-zero feature columns (neurons whose down-projection column is zero, and neurons that never
    activate) go through locate: a finite probe that never selects them. (Constant non-zero columns, which
    a model cannot easily be made to produce: test_probe::test_constant_zero_and_duplicate_columns.)"""
    from editor.locate.settings import LocateSettings
    from editor.locate.stage import load_probe, locate
    from editor.model.loading import load_model

    lm = load_model(str(world.tiny), device="cpu")
    layer = lm.model.model.layers[0].mlp
    with torch.no_grad():
        layer.down_proj.weight[:, :10] = 0.0  # neurons 0-9 write nothing: CETT exactly 0
        layer.up_proj.weight[10:14] = 0.0  # neurons 10-13 never activate: z = 0 on every token
    write_collect_folder(tmp_path / "collect", lm.identity())
    result = locate(lm, tmp_path / "collect", tmp_path / "locate", LocateSettings(n_C=4, random_draws=1,
                                                                                   bootstrap=20), progress=False)
    probe, _ = load_probe(result.probe_path)
    assert torch.isfinite(probe.weight).all() and torch.isfinite(probe.standardiser.std).all()
    assert (probe.weight[:14] == 0).all()
    assert not {(n["layer"], n["index"]) for n in result.neurons["neurons"]} & {(0, j) for j in range(14)}
