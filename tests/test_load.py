"""Load: the detector streams 10,000 (question, answer) pairs in bounded memory, the detect CLI streams a
file, and concurrent runs into different output folders do not interfere, including two processes that
convert the same GGUF into one empty shared cache at the same moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer, write_capital_questions

from editor.cli import main

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def env(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": str(torch.get_num_threads()), "TOKENIZERS_PARALLELISM": "false", **extra}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("load") / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_probe(path: Path, lm) -> None:
    from editor.locate.settings import LocateSettings
    from editor.locate.stage import FittedProbe, Standardiser
    from editor.locate.stage import write_probe as write

    n = lm.num_layers * lm.d_ff
    weight = torch.zeros(n)
    weight[[1, 5, lm.d_ff + 7]] = torch.tensor([0.5, 0.25, 0.75])
    write(path, FittedProbe(weight, -0.1, Standardiser(torch.zeros(n), torch.full((n,), 0.01)), 1.0),
          LocateSettings(), lm.identity())


# ============================================================================================ detector
DETECTOR_SCRIPT = """
import ctypes, gc, json, sys
from pathlib import Path
from editor.locate.detect import Detector
from editor.model.loading import load_model
from test_load import write_probe

def rss_mb():
    # freed heap pages go back to the OS first: without it, RSS moved by -4 to +10 MB between runs (the
    # allocator's free lists), as much as the 8 MB bound; the 36 MB of records held below stay live
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

lm = load_model(sys.argv[1], device="cpu")
probe = Path(sys.argv[2])
write_probe(probe, lm)
detector = Detector(lm, str(probe), batch_size=64)

def pairs(n):  # a generator: the caller never holds the inputs
    for i in range(n):
        yield {"question": f"What is the capital of land {i}?", "answer": f"City number {i}", "id": i,
               "payload": f"{i:08d}" * 512}  # 4 KB of its own: 40 MB over 10,000 records if anything kept them

seen, rss, probs = 0, {}, set()
for record in detector.score(pairs(10_000)):
    assert record["id"] == seen and 0 <= record["hallucination_prob"] <= 1
    probs.add(round(record["hallucination_prob"], 6))
    seen += 1
    if seen in (1_000, 10_000):
        gc.collect()
        rss[seen] = rss_mb()
held = list(pairs(9_000))  # the same records, kept: the growth the test guards
gc.collect()
print(json.dumps({"seen": seen, "rss": rss, "held": rss_mb(), "distinct": len(probs)}))
"""


def test_detector_streams_10000_pairs_in_bounded_memory(ckpt, tmp_path):
    script = tmp_path / "detect_load.py"
    script.write_text(DETECTOR_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "probe.safetensors")], env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seen"] == 10_000 and result["distinct"] > 20  # every pair scored, on its own answer
    growth = result["rss"]["10000"] - result["rss"]["1000"]
    held = result["held"] - result["rss"]["10000"]
    assert held > 20, f"holding 9,000 records should cost ~36 MB (measured {held:.1f} MB): the probe is blind"
    print(f"RSS growth 1,000 -> 10,000 pairs: {growth:.1f} MB; 9,000 records held: {held:.1f} MB")
    assert growth < 8, f"RSS grew {growth:.1f} MB from 1,000 to 10,000 pairs: something keeps the records"


def test_detect_cli_streams_a_file_with_progress(ckpt, tmp_path):
    from editor.model.loading import load_model

    write_probe(tmp_path / "probe.safetensors", load_model(str(ckpt), device="cpu"))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"Capital of land {i}?", "answer": f"City {i}", "n": i}) + "\n"
                          for i in range(21)))
    out = tmp_path / "scored.jsonl"
    assert main(["detect", "--model", str(ckpt), "--probe", str(tmp_path / "probe.safetensors"), "--input", str(qa),
                 "--out", str(out), "--batch-size", "8", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n"] for r in rows] == list(range(21)) and all("hallucination_prob" in r for r in rows)


# ========================================================================================= concurrency
def make_tiny_gguf(path: Path, layers: int = 2, hidden: int = 32, ff: int = 48, heads: int = 4, kv: int = 2) -> None:
    """A tiny random llama GGUF with the tiny test tokenizer (byte-level BPE), loadable by transformers."""
    import gguf

    tok = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    g = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    head = hidden // heads

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (g.standard_normal(shape) * 0.2).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.attn_q.weight", heads * head, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv * head, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv * head, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, heads * head)
        tensor(f"blk.{i}.ffn_gate.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ff)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    tensor("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


STARTING_GATE = """
import sys, time
from pathlib import Path
gate, ready = Path(sys.argv[1]), Path(sys.argv[2])
import editor.cli, editor.collect.stage, transformers, transformers.models.llama.modeling_llama  # noqa: the slow imports
ready.touch()
while not gate.exists():
    time.sleep(0.002)
sys.exit(editor.cli.main(sys.argv[3:]))
"""


def run_together(tmp_path: Path, commands: list[list[str]], extra_env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Start the CLI commands in separate processes and release them at the same moment."""
    script = tmp_path / "gate.py"
    script.write_text(STARTING_GATE)
    gate = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(gate), str(tmp_path / f"ready-{i}"), *argv],
                              env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, argv in enumerate(commands)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(len(commands))) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    gate.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    gate.unlink()
    return results


def test_concurrent_runs_from_one_gguf_share_an_empty_cache_safely(tmp_path, monkeypatch):
    """Two collect runs of the same GGUF, started at the same moment with an empty HNEURONS_CACHE: both
    convert it, one conversion wins the rename, both finish, and their responses are the same as those
    of a run made afterwards (on the cached conversion). Two rounds, each with a fresh cache."""
    gguf_file = tmp_path / "tiny-llama.gguf"
    make_tiny_gguf(gguf_file)
    data = tmp_path / "qs.jsonl"
    write_capital_questions(data, 6)

    def argv(out: Path) -> list[str]:
        return ["collect", "--model", str(gguf_file), "--data", str(data), "--split", "train", "--samples", "3",
                "--max-new-tokens", "6", "--batch-size", "3", "--out", str(out), "--device", "cpu", "--no-progress"]

    for round_ in range(2):
        cache = tmp_path / f"cache-{round_}"
        outs = [tmp_path / f"round{round_}-a", tmp_path / f"round{round_}-b"]
        results = run_together(tmp_path, [argv(o) for o in outs], {"HNEURONS_CACHE": str(cache)})
        assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
        converted = [p for p in (cache / "gguf").iterdir()]
        assert len(converted) == 1 and (converted[0] / "hneurons_source.json").is_file(), converted
        assert not list(cache.rglob(".hneurons-tmp-*"))
        after = tmp_path / f"round{round_}-after"
        monkeypatch.setenv("HNEURONS_CACHE", str(cache))
        assert main(argv(after)) == 0
        reference = (after / "responses.jsonl").read_bytes()
        assert all((o / "responses.jsonl").read_bytes() == reference for o in outs)
        manifests = [json.loads((o / "collect.json").read_text())["model"] for o in [*outs, after]]
        assert manifests[0] == manifests[1] == manifests[2]  # same identity: same converted weights
