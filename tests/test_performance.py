"""Performance plumbing: auto batch sizes, streamed feature shards, the optional vLLM backend's refusal,
and the benchmark driver's JSON (functional checks only: nothing here is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tinymodels import tiny_model, tiny_tokenizer, write_capital_questions

from editor.collect.settings import CollectSettings
from editor.collect.stage import collect
from editor.data.prompting import build_prompt
from editor.data.questions import Question
from editor.errors import BackendUnavailableError, InputError
from editor.locate.features import FeatureSettings, _ShardWriter, cett_features, extract_features
from editor.model.batching import (
    ModelDims,
    batch_size_for,
    features_row_bytes,
    generation_row_bytes,
    parse_batch_size,
    resolve_batch_size,
)
from editor.model.loading import LoadedModel, ModelSource
from editor.model.registry import get_arch

REPO = Path(__file__).resolve().parent.parent


def tiny_lm() -> LoadedModel:
    model = tiny_model("llama")
    return LoadedModel(model, tiny_tokenizer(), ModelSource("tiny", "folder", "tiny"), get_arch(model.config))


def questions(n: int) -> list[Question]:
    return [Question(f"q{i}", f"What is the capital of country {i}?", ("Paris",), "test", "capital",
                     f"country{i}", "train") for i in range(n)]


# ------------------------------------------------------------------------------------ auto batch size
SMOLLM2 = ModelDims(num_layers=30, hidden=576, d_ff=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)


def test_batch_size_for_fills_the_free_memory_fraction_and_clamps():
    assert batch_size_for(10_000, 1_000, fraction=0.7) == 7
    assert batch_size_for(10_000, 1_000, fraction=1.0) == 10
    assert batch_size_for(500, 1_000) == 1  # never below one row
    assert batch_size_for(10**15, 1_000, maximum=512) == 512
    with pytest.raises(ValueError):
        batch_size_for(10_000, 0)


def test_row_estimates_follow_the_kv_cache_and_sequence_length():
    # the KV cache alone: 2 x layers x kv_heads x head_dim x seq x bytes
    kv_per_token = 2 * 30 * 3 * 64 * 2
    short, long = generation_row_bytes(SMOLLM2, 100, 2), generation_row_bytes(SMOLLM2, 200, 2)
    assert long - short >= 100 * kv_per_token
    assert generation_row_bytes(SMOLLM2, 100, 4) > short  # fp32 costs more than bf16
    assert features_row_bytes(SMOLLM2, 200, 2) > features_row_bytes(SMOLLM2, 100, 2)
    # an 80 GB GPU with 60 GB free and bf16 SmolLM2: many rows, a few GB each at most
    rows = batch_size_for(60 * 2**30, generation_row_bytes(SMOLLM2, 110, 2), maximum=10**6)
    assert 1_000 < rows < 10**6
    assert batch_size_for(60 * 2**30, generation_row_bytes(SMOLLM2, 110, 2)) == 512


def test_model_dims_come_from_the_config_through_the_registry():
    model = tiny_model("llama")
    dims = ModelDims.of(model.config, get_arch(model.config))
    cfg = model.config
    assert dims.num_layers == cfg.num_hidden_layers and dims.d_ff == cfg.intermediate_size
    assert dims.kv_heads == cfg.num_key_value_heads and dims.vocab == cfg.vocab_size
    assert dims.head_dim == getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def test_parse_batch_size_accepts_positive_ints_and_auto_only():
    assert parse_batch_size("auto") == "auto" and parse_batch_size(" AUTO ") == "auto"
    assert parse_batch_size("16") == 16 and parse_batch_size(3) == 3
    for bad in (0, -1, "0", "lots", 2.5, True, None):
        with pytest.raises(InputError, match="positive integer or 'auto'"):
            parse_batch_size(bad)


def test_auto_on_cpu_keeps_the_stage_defaults():
    lm = tiny_lm()
    assert resolve_batch_size("auto", lm, "generation", 100) == 32
    assert resolve_batch_size("auto", lm, "features", 100) == 8
    assert resolve_batch_size(5, lm, "features", 100) == 5


def test_collect_with_auto_batch_size_records_it_and_resumes(tmp_path):
    lm = tiny_lm()
    qs = questions(3)
    settings = CollectSettings(samples=2, max_new_tokens=4, batch_size="auto")
    first = collect(lm, qs, tmp_path / "c", settings=settings, progress=False)
    assert first.manifest["sampling"]["batch_size"] == 32 and first.manifest["sampling"]["batch_size_auto"]
    again = collect(lm, qs, tmp_path / "c", settings=settings, progress=False)  # same settings: resumed
    assert again.records == first.records
    fixed = collect(lm, qs, tmp_path / "d", settings=CollectSettings(samples=2, max_new_tokens=4, batch_size=32),
                    progress=False)
    assert "batch_size_auto" not in fixed.manifest["sampling"]  # folders without auto keep their old record
    assert [r["samples"] for r in fixed.records] == [r["samples"] for r in first.records]


def test_invalid_batch_sizes_are_refused():
    with pytest.raises(InputError):
        CollectSettings.of(batch_size=0)
    with pytest.raises(InputError):
        FeatureSettings(batch_size="big").validate()
    FeatureSettings(batch_size="auto").validate()


# --------------------------------------------------------------------------------- feature extraction
def _records(lm, n):
    out = []
    for q in questions(n):
        prompt = build_prompt(lm.tokenizer, q.question).input_ids
        ids = list(prompt) + [5, 6, 7][: 1 + len(out) % 3]
        out.append({"id": q.id, "representative": {"input_ids": ids, "response_start": len(prompt),
                                                    "response_end": len(ids)}})
    return out


def test_shard_writer_bytes_equal_save_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(7, 2, 40, generator=g).half()
    meta = {"ids": json.dumps([f"r{i}" for i in range(7)])}
    writer = _ShardWriter(tmp_path / "streamed.safetensors", 7, 40, torch.float16, meta)
    for start, stop in ((0, 3), (3, 5), (5, 7)):  # written batch by batch
        writer.write(start, feats[start:stop])
    writer.close()
    save_file({"answer": feats[:, 0].contiguous(), "other": feats[:, 1].contiguous()},
              str(tmp_path / "reference.safetensors"), metadata=meta)
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()


def test_extracted_store_equals_the_in_memory_features(tmp_path):
    lm = tiny_lm()
    records = _records(lm, 5)
    expected = torch.cat([f for _, f in cett_features(lm, records, batch_size=2, span="response")])
    store = extract_features(lm, records, tmp_path / "f", FeatureSettings(batch_size="auto", store_dtype="float32"),
                             progress=False)
    with safe_open(str(tmp_path / "f" / store.meta["shards"][0]["file"]), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("answer"), expected[:, 0])
        assert torch.equal(handle.get_tensor("other"), expected[:, 1])


def test_features_do_not_depend_on_the_lm_head():
    """CETT asks the model for the last position's logits only; the features are those of a full pass."""
    from editor.model.hooks import capture_down_inputs

    lm = tiny_lm()
    records = _records(lm, 2)
    feats = torch.cat([f for _, f in cett_features(lm, records, batch_size=2, span="response")])
    ids = torch.tensor([records[0]["representative"]["input_ids"]])
    with capture_down_inputs(lm.model) as z, torch.no_grad():
        lm.model(input_ids=ids)  # full logits, no hooks of ours
    from editor.model.hooks import down_proj_modules

    n = ids.shape[1]
    start = records[0]["representative"]["response_start"]
    for layer, module in enumerate(down_proj_modules(lm.model)):
        w = module.weight
        h = z[layer][0] @ w.T
        cett = z[layer][0].abs() * w.norm(dim=0) / h.norm(dim=-1, keepdim=True)
        d = w.shape[1]
        torch.testing.assert_close(feats[0, 0, layer * d:(layer + 1) * d], cett[start:n].mean(0))
        torch.testing.assert_close(feats[0, 1, layer * d:(layer + 1) * d], cett[:start].mean(0))


# ------------------------------------------------------------------------------------------------ vLLM
@pytest.mark.parametrize("missing", ["package", "cuda"])
def test_vllm_backend_refuses_clearly_without_vllm_or_cuda(tmp_path, monkeypatch, missing):
    import importlib.util

    from editor.collect.vllm_backend import require_vllm, vllm_generate

    real_find_spec = importlib.util.find_spec
    if missing == "package":  # whatever this machine has, vLLM is missing for this test
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else
                            real_find_spec(name, *a))
        expected = "needs the vllm package"
    else:  # vLLM "installed", no GPU
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else
                            real_find_spec(name, *a))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        expected = "needs a CUDA GPU"
    with pytest.raises(BackendUnavailableError, match=expected):
        require_vllm()
    lm = tiny_lm()
    with pytest.raises(BackendUnavailableError, match=expected):
        collect(lm, questions(2), tmp_path / "c", settings=CollectSettings(samples=1), backend="vllm",
                progress=False)
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(BackendUnavailableError, match=expected):
        vllm_generate(lm, [build_prompt(lm.tokenizer, "Why?")], CollectSettings(), sample=False, seed=0)


def test_unknown_backend_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="backend: Input should be 'hf' or 'vllm'"):
        collect(tiny_lm(), questions(1), tmp_path / "c", backend="tgi", progress=False)


def test_vllm_sampling_params_mirror_the_settings(monkeypatch):
    """The translation of hneurons' settings (no vLLM needed: a stand-in of its SamplingParams class
    returns the keyword arguments it is given)."""
    import types

    from editor.collect import vllm_backend

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    s = CollectSettings(temperature=0.5, top_p=0.9, top_k=0, max_new_tokens=50)
    sampled = vllm_backend.sampling_params(s, sample=True, seed=7, stop_ids={2, 0})
    greedy = vllm_backend.sampling_params(s, sample=False, seed=7, stop_ids={2})
    assert sampled == {"n": 1, "max_tokens": 50, "stop_token_ids": [0, 2], "skip_special_tokens": True,
                       "temperature": 0.5, "top_p": 0.9, "top_k": -1, "seed": 7}
    assert greedy["temperature"] == 0.0 and "seed" not in greedy
    assert len({vllm_backend.row_seed(3, r) for r in range(100)}) == 100  # duplicate prompts draw apart


# ------------------------------------------------------------------------------------ benchmark driver
def test_benchmark_driver_writes_every_figure_it_reports(tmp_path):
    """The driver's JSON schema on its cheapest stage (synthetic probe features; no model)."""
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--stages", "probe",
                           "--sizes", "80,160", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "quick" and r["stages"] == ["probe"]
    for key in ("cpu", "cores", "ram_gb", "torch", "transformers", "torch_threads", "date"):
        assert r["machine"][key] not in (None, ""), key
    assert len(r["load_average"]["start"]) == 3 and len(r["load_average"]["end"]) == 3
    assert [row["size"] for row in r["scaling"]["probe"]] == [80, 160]
    for row in r["scaling"]["probe"]:
        assert row["torch_s"]["min"] <= row["torch_s"]["median"] <= row["torch_s"]["max"]
        assert 0 <= row["jaccard_positive"] <= 1 and row["speedup"] > 0
    (target,) = r["targets"]
    assert target["stage"] == "probe" and target["met"] in (True, False) and target["measured"] > 0
    assert r["scaling_summary"]["probe"]["sizes"] == [80, 160]
    assert (tmp_path / "scaling-quick.png").is_file()
    assert "probe" in proc.stdout and "target" in proc.stdout


# ------------------------------------------------------------------------------------ shared prompt pass
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_decoding_from_a_shared_prompt_pass_equals_decoding_afresh(model_type):
    """collect prefills a chunk's prompts once and decodes greedy + every sample round from that state."""
    from editor.collect.sampler import DecodeSettings, decode, prefill

    model = tiny_model(model_type)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (5, 11, 8)]
    settings = DecodeSettings(max_new_tokens=10)
    state = prefill(model, prompts, pad_id=0)
    rows = [2, 0, 2, 1]  # a subset in another order, with a repeat (several samples of one question)
    shared = decode(model, None, settings, stop_ids=set(), pad_id=0, state=state, rows=rows)
    fresh = decode(model, [prompts[r] for r in rows], settings, stop_ids=set(), pad_id=0)
    assert [t for t, _ in shared] == [t for t, _ in fresh]
    again = decode(model, None, settings, stop_ids=set(), pad_id=0, state=state)  # the state is reusable
    alone = decode(model, prompts, settings, stop_ids=set(), pad_id=0)
    assert [t for t, _ in again] == [t for t, _ in alone]
    assert [t for t, _ in again] == [shared[1][0], shared[3][0], shared[0][0]]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_a_shared_prefix_is_run_once_and_changes_no_token(model_type):
    """Prompts that start alike (a chat template's system turn) share one prefix pass on full-attention
    caches: the state's logits and the greedy tokens equal each prompt decoded alone, through decode and the
    continuous batch; sliding-window caches (Gemma 3) keep the plain left-padded pass."""
    from editor.collect.sampler import DecodeSettings, decode, decode_many, prefill, shared_prefix_length

    model = tiny_model(model_type)
    g = torch.Generator().manual_seed(3)
    system = torch.randint(4, 300, (12,), generator=g).tolist()
    prompts = [system + torch.randint(4, 300, (n,), generator=g).tolist() for n in (3, 9, 1, 6)]
    assert shared_prefix_length(prompts) == 12 and shared_prefix_length([system, system]) == 11
    assert shared_prefix_length(prompts[:1]) == 0 and shared_prefix_length([[5, 6], [7, 6]]) == 0
    state = prefill(model, prompts, pad_id=0)
    full = model_type == "llama"
    assert state.mask.shape[1] == 21
    # shared: the gap sits after the prefix (row 2, 1 own token, has 8 masked columns there); plain: on the left
    assert state.mask[2].tolist() == ([1] * 12 + [0] * 8 + [1] if full else [0] * 8 + [1] * 13)
    assert state.last_pos.tolist() == [len(p) - 1 for p in prompts]
    for row, prompt in enumerate(prompts):
        alone = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        torch.testing.assert_close(state.logits[row], alone, rtol=1e-4, atol=1e-4)
    settings = DecodeSettings(max_new_tokens=8)
    one_by_one = [decode(model, [p], settings, stop_ids=set(), pad_id=0)[0][0] for p in prompts]
    assert [t for t, _ in decode(model, prompts, settings, stop_ids=set(), pad_id=0)] == one_by_one
    many = decode_many(model, prompts * 3, settings, max_rows=4, stop_ids={7, 11}, pad_id=0)
    stopped = [decode(model, [p], settings, stop_ids={7, 11}, pad_id=0)[0] for p in prompts]
    assert many == stopped * 3
    # every prompt its own limit, one stream (continuous) or batches of one limit (sliding window)
    limits = [3, 8, 5, 8, 3, 1]
    mixed = decode_many(model, prompts + prompts[:2], settings, max_rows=3, stop_ids=set(), pad_id=0,
                        max_new_tokens=limits)
    assert mixed == [decode(model, [p], DecodeSettings(max_new_tokens=n), stop_ids=set(), pad_id=0)[0]
                     for p, n in zip(prompts + prompts[:2], limits)]
    assert [len(t) for t, _ in mixed] == limits
    from editor.collect.sampler import equal_runs

    assert equal_runs([3, 3, 8, 8, 8, 1], 2) == [(0, 2), (2, 4), (4, 5), (5, 6)] and equal_runs([], 4) == []


@pytest.mark.parametrize("top_k,top_p", [(50, 0.9), (50, 1.0), (0, 0.9), (5, 0.5)])
def test_candidate_draws_use_the_warped_distribution(top_k, top_p):
    """Sampling among the top-k candidates is the distribution of transformers' warpers (editor.collect.sampler.warp)."""
    from editor.collect.sampler import DecodeSettings, candidate_probs, warp

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
    settings = DecodeSettings(sample=True, temperature=0.7, top_k=top_k, top_p=top_p)
    probs, index = candidate_probs(logits, settings)
    full = torch.zeros_like(logits).scatter_add(-1, index, probs)
    torch.testing.assert_close(full, warp(logits, settings).softmax(dim=-1))
    tied = logits.clone()
    tied[:, :3] = tied.topk(top_k or 1, dim=-1).values[:, -1:]  # ties at the k-th value: warp decides
    probs, index = candidate_probs(tied, settings)
    torch.testing.assert_close(torch.zeros_like(tied).scatter_add(-1, index, probs),
                               warp(tied, settings).softmax(dim=-1))


# ------------------------------------------------------------------------- CLI and recipe: --batch-size, --backend
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny llama checkpoint folder and a local question file, as the CLI reads them."""
    tmp = tmp_path_factory.mktemp("cli")
    folder = tmp / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = tmp / "qs.jsonl"
    write_capital_questions(data, 3)
    return folder, data


def collect_argv(checkpoint, out, *extra) -> list[str]:
    folder, data = checkpoint
    return ["collect", "--model", str(folder), "--data", str(data), "--split", "train", "--samples", "2",
            "--max-new-tokens", "4", "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def test_cli_parses_batch_size_auto_and_backend():
    from editor.cli import build_parser, parse
    from editor.collect.settings import CollectSettings
    from editor.locate.settings import DetectSettings, LocateSettings, OriginSettings
    from editor.options import from_args

    def settings(cls, argv):
        return from_args(cls, parse(argv))

    s = settings(CollectSettings, ["collect", "--batch-size", "auto", "--backend", "vllm"])
    assert s.batch_size == "auto" and s.backend == "vllm"
    s = settings(CollectSettings, ["collect"])
    assert s.batch_size == 32 and s.backend == "hf"
    for command, cls, default in (("locate", LocateSettings, 8), ("origin", OriginSettings, 8),
                                  ("detect", DetectSettings, 8)):
        extra = {"origin": ["--probe", "p", "--base", "b", "--out", "o"], "detect": ["--probe", "p"]}.get(command, [])
        assert settings(cls, [command, *extra, "--batch-size", "AUTO"]).batch_size == "auto"
        assert settings(cls, [command, *extra, "--batch-size", "5"]).batch_size == 5
        assert settings(cls, [command, *extra]).batch_size == default
    with pytest.raises(SystemExit):  # the backend is a closed choice
        build_parser().parse_args(["collect", "--backend", "tgi"])


@pytest.mark.parametrize("command", ["collect", "locate", "detect"])
@pytest.mark.parametrize("value", ["0", "big", "-3"])
def test_cli_bad_batch_size_is_one_error_naming_the_flag(tmp_path, tiny_checkpoint, capsys, command, value):
    from editor.cli import main

    if command == "collect":
        argv = collect_argv(tiny_checkpoint, tmp_path / "out", "--batch-size", value)
    elif command == "locate":
        argv = ["locate", "--model", str(tiny_checkpoint[0]), "--responses", str(tmp_path / "none"),
                "--out", str(tmp_path / "out"), "--device", "cpu", "--batch-size", value]
    else:  # refused before the model or the (missing) probe is read
        argv = ["detect", "--model", str(tiny_checkpoint[0]), "--probe", str(tmp_path / "none.safetensors"),
                "--question", "Q?", "--out", str(tmp_path / "out"), "--device", "cpu", "--batch-size", value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"hneurons {command}: error: --batch-size: must be a positive integer or 'auto' (got {value})"
    assert not (tmp_path / "out").exists()


def test_cli_collect_with_batch_size_auto_runs_and_records_it(tmp_path, tiny_checkpoint, capsys):
    from editor.cli import main

    assert main(collect_argv(tiny_checkpoint, tmp_path / "out", "--batch-size", "auto")) == 0
    manifest = json.loads((tmp_path / "out" / "collect.json").read_text())
    assert manifest["sampling"]["batch_size_auto"] is True
    assert manifest["sampling"]["batch_size"] == 32  # auto on the CPU: the stage's default
    assert "backend" not in manifest  # hf, the default, is not recorded
    assert len((tmp_path / "out" / "responses.jsonl").read_text().splitlines()) == 3
    assert "selected_faithful" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["package", "cuda"])
def test_cli_backend_vllm_without_vllm_is_a_clear_error(tmp_path, tiny_checkpoint, capsys, monkeypatch, missing):
    import importlib.util

    from editor.cli import main

    real_find_spec = importlib.util.find_spec
    present = None if missing == "package" else object()  # whatever this machine has
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: present if name == "vllm" else
                        real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(collect_argv(tiny_checkpoint, tmp_path / "out", "--backend", "vllm")) == 2
    err = capsys.readouterr().err
    assert err.startswith("hneurons collect: error: the vllm backend needs ") and "Traceback" not in err
    assert ("pip install vllm" if missing == "package" else "CUDA GPU") in err
    assert not (tmp_path / "out").exists()


def test_recipe_backend_vllm_is_refused_before_the_model_loads(tmp_path, tiny_checkpoint, monkeypatch):
    import importlib.util

    from editor.pipeline.run import run_recipe

    folder, data = tiny_checkpoint
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else
                        real_find_spec(name, *a))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: '{folder}', device: cpu}}\noutput: '{tmp_path / 'run'}'\n"
                      f"collect: {{data: ['{data}'], splits: [train], samples: 2, max_new_tokens: 4, backend: vllm}}\n")
    with pytest.raises(BackendUnavailableError, match="pip install vllm"):
        run_recipe(recipe, to_stage="collect", progress=False)
    assert not (tmp_path / "run" / "collect").exists()


def test_recipe_batch_size_auto_reaches_collect(tmp_path, tiny_checkpoint, capsys):
    from editor.pipeline.run import run_recipe

    folder, data = tiny_checkpoint
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: '{folder}', device: cpu}}\noutput: '{tmp_path / 'run'}'\n"
                      f"collect: {{data: ['{data}'], splits: [train], samples: 2, max_new_tokens: 4, "
                      f"batch_size: auto}}\n")
    run_recipe(recipe, to_stage="collect", progress=False)
    manifest = json.loads((tmp_path / "run" / "collect" / "collect.json").read_text())
    assert manifest["sampling"]["batch_size_auto"] is True and manifest["sampling"]["batch_size"] == 32
