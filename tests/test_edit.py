"""Edit stage: patched checkpoints, out-of-core rewrite, IA3 / LoRA adapters, verification, manifest, CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tinymodels import tiny_model, tiny_tokenizer

from editor.cli import main as cli_main
from editor.edit.stage import edit_model
from editor.edit.verify import FP32_TOLERANCE
from editor.errors import InputError, ModelLoadError, ModelMismatchError, OutputExistsError
from editor.formats import EDIT_MANIFEST
from editor.model.checkpoint import down_proj_tensor_names
from editor.model.hooks import group_by_layer, scaled_neurons
from editor.model.loading import load_model
from editor.model.neuron_set import NeuronSet
from editor.model.registry import get_arch

# Cases: registry architectures with different layouts (plain gated, GPT-2 Conv1D, phi3 fused gate_up,
# gemma3 multimodal whose checkpoint names differ from its module names) and one bfloat16 source.
CASES = {"llama": ("llama", torch.float32), "gpt2": ("gpt2", torch.float32), "phi3": ("phi3", torch.float32),
         "gemma3": ("gemma3", torch.float32), "llama-bf16": ("llama", torch.bfloat16)}
# Where each case's down-projection weights live in the checkpoint files (test data, not registry facts).
DOWN_TENSOR = {"llama": "model.layers.{}.mlp.down_proj.weight", "gpt2": "transformer.h.{}.mlp.c_proj.weight",
               "phi3": "model.layers.{}.mlp.down_proj.weight",
               "gemma3": "language_model.model.layers.{}.mlp.down_proj.weight",
               "llama-bf16": "model.layers.{}.mlp.down_proj.weight"}

# Neurons of the tiny models (2 layers x d_ff 48); alphas: global 0, layer 1 -> 0.5, neuron (0, 40) -> 2.0
# (powers of two: exactly representable after scaling in every dtype).
PAIRS = [(0, 3), (0, 17), (0, 40), (1, 5), (1, 46)]
LAYER_ALPHA = {1: 0.5}
EXPECTED_ALPHA = {(0, 3): 0.0, (0, 17): 0.0, (0, 40): 2.0, (1, 5): 0.5, (1, 46): 0.5}
PROMPT = "What is the capital of France? Respond with the answer only."


# ---------------------------------------------------------------------------------------------- helpers
def raw_tensors(folder: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Every tensor of a safetensors checkpoint as (dtype, shape, raw bytes), read straight from the files."""
    out = {}
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in sorted({folder / name for name in weight_map.values()}):
        data = shard.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        header.pop("__metadata__", None)
        for name, info in header.items():
            b, e = info["data_offsets"]
            out[name] = (info["dtype"], info["shape"], data[8 + n + b:8 + n + e])
    return out


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def write_neuron_file(folder: Path, identity: dict | None, pairs=PAIRS, alpha_for=((0, 40), 2.0)) -> Path:
    doc = {"format": "hneurons.neurons/1", "neurons": []}
    if identity:
        doc["model"] = identity
    for layer, index in pairs:
        item = {"layer": layer, "index": index, "flat_index": layer * 48 + index, "weight": 0.1}
        if (layer, index) == alpha_for[0]:
            item["alpha"] = alpha_for[1]
        doc["neurons"].append(item)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "neurons.json"
    path.write_text(json.dumps(doc))
    return path


def reference_logits(model, tokenizer, pairs_alpha: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independent ground truth: float32 copy of the source, unedited and with run-time scaling hooks."""
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    model32 = copy.deepcopy(model).float()
    with torch.no_grad():
        base = model32(input_ids=ids).logits[0]
        with scaled_neurons(model32, group_by_layer(list(pairs_alpha), pairs_alpha)):
            scaled = model32(input_ids=ids).logits[0]
    return ids, base, scaled


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small passes run faster on one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("edit")


@pytest.fixture(scope="module")
def sources(workdir):
    """Per case: a source checkpoint folder (sharded into several files, with an index) and its LoadedModel."""
    out = {}
    for case, (model_type, dtype) in CASES.items():
        folder = workdir / f"src-{case}"
        tiny_model(model_type).to(dtype).save_pretrained(folder, max_shard_size="20KB")
        tiny_tokenizer().save_pretrained(folder)
        lm = load_model(str(folder), device="cpu")
        assert lm.model.dtype == dtype
        evidence = write_neuron_file(workdir / f"locate-{case}", lm.identity())
        save_file({"weight": torch.zeros(96), "bias": torch.zeros(1)}, str(evidence.parent / "probe.safetensors"))
        out[case] = (folder, lm, evidence)
    return out


@pytest.fixture(scope="module")
def edits(sources, workdir):
    """Every case edited every way (weights in memory, weights out-of-core, IA3, LoRA), source hashes kept."""
    results = {}
    for case, (folder, lm, neurons) in sources.items():
        before = folder_hashes(folder)
        results[case] = {
            mode: edit_model(lm, neurons, 0.0, mode, workdir / f"out-{case}-{mode}", layer_alpha=LAYER_ALPHA)
            for mode in ("weights", "ia3", "lora")
        }
        results[case]["ooc"] = edit_model(str(folder), neurons, 0.0, "weights", workdir / f"out-{case}-ooc",
                                           layer_alpha=LAYER_ALPHA, out_of_core=True)
        for mode in ("ia3", "lora"):  # adapters made from the checkpoint's files, no model loaded to make them
            results[case][f"ooc_{mode}"] = edit_model(str(folder), neurons, 0.0, mode, workdir / f"out-{case}-ooc-{mode}",
                                                      layer_alpha=LAYER_ALPHA, out_of_core=True)
        assert folder_hashes(folder) == before, "the source checkpoint must never be modified"
    return results


# ------------------------------------------------------------------------------------ four-way equivalence
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    from peft import AutoPeftModelForCausalLM, PeftModel

    jobs = json.loads(sys.argv[1])
    out = {}
    with torch.no_grad():
        for job in jobs:
            ids = torch.tensor([job["ids"]])
            ckpt = AutoModelForCausalLM.from_pretrained(job["weights"], dtype=torch.float32)
            res = {"checkpoint": ckpt(input_ids=ids).logits[0], "ckpt_dtype": str(
                AutoModelForCausalLM.from_pretrained(job["weights"]).dtype)}
            streamed = AutoModelForCausalLM.from_pretrained(job["ooc"], dtype=torch.float32)
            res["out_of_core"] = streamed(input_ids=ids).logits[0]
            for mode in ("ia3", "lora", "ooc_ia3", "ooc_lora"):
                # base_model_name_or_path inside the adapter must lead back to the local source
                model = AutoPeftModelForCausalLM.from_pretrained(job[mode], dtype=torch.float32)
                res[mode] = model(input_ids=ids).logits[0]
                res[mode + "_merged"] = model.merge_and_unload()(input_ids=ids).logits[0]
            out[job["case"]] = res
    assert "editor" not in sys.modules, "the fresh process must not import hneurons"
    torch.save(out, sys.argv[2])
""")


def test_four_way_equivalence_in_a_fresh_process_with_plain_transformers_and_peft(sources, edits, workdir):
    jobs, refs = [], {}
    for case, (_, lm, _) in sources.items():
        ids, base, scaled = reference_logits(lm.model, lm.tokenizer, EXPECTED_ALPHA)
        refs[case] = (base, scaled)
        jobs.append({"case": case, "ids": ids[0].tolist(), "weights": str(edits[case]["weights"].out),
                     "ooc": str(edits[case]["ooc"].out), "ia3": str(edits[case]["ia3"].out),
                     "lora": str(edits[case]["lora"].out), "ooc_ia3": str(edits[case]["ooc_ia3"].out),
                     "ooc_lora": str(edits[case]["ooc_lora"].out)})
    result_file = workdir / "fresh.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(jobs), str(result_file)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = torch.load(result_file)
    for case, (base, scaled) in refs.items():
        assert float((scaled - base).abs().max()) > 0.05, f"{case}: the edit must change the logits"
        for name in ("checkpoint", "out_of_core", "ia3", "ia3_merged", "lora", "lora_merged", "ooc_ia3",
                     "ooc_ia3_merged", "ooc_lora", "ooc_lora_merged"):
            diff = float((fresh[case][name] - scaled).abs().max())
            assert diff < 1e-4, f"{case} {name}: max abs logit diff {diff}"
        assert fresh[case]["ckpt_dtype"] == str(CASES[case][1]), "the checkpoint keeps the source dtype"


def test_verification_is_recorded_and_passes(edits):
    for case, by_mode in edits.items():
        for mode, result in by_mode.items():
            ver = result.verification
            assert ver["passed"] is True
            assert ver["form"] == "loaded"  # tiny models fit in memory: the logit check ran
            if mode.startswith("ooc_"):
                assert ver["adapter_tensors"]["passed"] and ver["adapter_tensors"]["problems"] == []
                # IA3 needs no weights; LoRA reads the two targeted layers' down-projections
                assert ver["adapter_tensors"]["source_tensors_read"] == (0 if mode == "ooc_ia3" else 2)
            expected = {"checkpoint"} if mode in ("weights", "ooc") else {"adapter", "adapter_merged"}
            assert set(ver["max_abs_diff"]) == expected
            assert all(d <= ver["tolerance"] for d in ver["max_abs_diff"].values())
            assert ver["edit_effect_max_abs"] > 0.05
            assert ver["stored_dtype"] == str(CASES[case][1]).removeprefix("torch.")
            if CASES[case][1] == torch.float32:
                assert ver["tolerance"] == 2e-4
            else:  # half precision: 2e-4 + 4 * 2^-8 * max(1, max alpha) * suppression effect
                assert ver["tolerance"] == pytest.approx(2e-4 + 2**-6 * 2.0 * ver["suppression_effect_max_abs"])


# ------------------------------------------------------------------------------------------ bit identity
def _columns(raw: tuple[str, list[int], bytes], conv1d: bool) -> torch.Tensor:
    dtype = {"F32": torch.float32, "BF16": torch.bfloat16}[raw[0]]
    t = torch.frombuffer(bytearray(raw[2]), dtype=dtype).reshape(raw[1])
    return t if conv1d else t.T  # rows = neurons


def test_only_the_down_projections_change_and_columns_scale_exactly(sources, edits):
    for case, (folder, lm, _) in sources.items():
        src = raw_tensors(folder)
        conv1d = get_arch(lm.config).conv1d
        changed = {DOWN_TENSOR[case].format(layer) for layer in (0, 1)}
        for mode in ("weights", "ooc"):
            out = raw_tensors(edits[case][mode].out)
            assert set(changed) <= set(out)
            for name, (dtype, shape, data) in out.items():
                assert name in src
                if name not in changed:
                    assert src[name] == (dtype, shape, data), f"{case} {mode}: {name} changed"
            for layer in (0, 1):
                name = DOWN_TENSOR[case].format(layer)
                before, after = _columns(src[name], conv1d), _columns(out[name], conv1d)
                for j in range(before.shape[0]):
                    alpha = EXPECTED_ALPHA.get((layer, j), 1.0)
                    expected = (before[j].float() * alpha).to(before.dtype)
                    assert torch.equal(after[j].view(torch.int16 if after.dtype == torch.bfloat16 else torch.int32),
                                       expected.view(torch.int16 if after.dtype == torch.bfloat16 else torch.int32))


def test_out_of_core_gives_byte_identical_tensors_and_keeps_the_shard_layout(sources, edits):
    for case, (folder, _, _) in sources.items():
        in_memory, streamed = raw_tensors(edits[case]["weights"].out), raw_tensors(edits[case]["ooc"].out)
        common = set(in_memory) & set(streamed)
        assert {DOWN_TENSOR[case].format(layer) for layer in (0, 1)} <= common
        assert all(in_memory[n] == streamed[n] for n in common), case
        # the streamed output mirrors the source: same shards, same index, config and tokenizer files
        ooc = edits[case]["ooc"].out
        shards = sorted(p.name for p in folder.glob("model*.safetensors"))
        assert len(shards) > 1 and sorted(p.name for p in ooc.glob("model*.safetensors")) == shards
        for name in ("model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json"):
            assert (ooc / name).read_bytes() == (folder / name).read_bytes(), name
        assert set(streamed) == set(raw_tensors(folder))


def test_out_of_core_finds_a_hub_model_in_the_offline_cache(sources, edits, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder, _, neurons = sources["gpt2"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    result = edit_model("acme/tiny-gpt2", neurons, 0.0, "weights", tmp_path / "out", layer_alpha=LAYER_ALPHA,
                        out_of_core=True)
    assert result.manifest["model"]["source"] == {"spec": "acme/tiny-gpt2", "kind": "hub", "path": "acme/tiny-gpt2",
                                                  "revision": commit}
    assert raw_tensors(result.out) == raw_tensors(edits["gpt2"]["ooc"].out)
    with pytest.raises(ModelLoadError, match="acme/missing"):
        edit_model("acme/missing", neurons, 0.0, "weights", tmp_path / "out2", out_of_core=True)


def test_tensor_names_are_mapped_whatever_the_checkpoint_prefix():
    llama, gpt2 = get_arch("llama"), get_arch("gpt2")
    legacy_gpt2 = ["wte.weight", "h.0.attn.c_proj.weight", "h.0.mlp.c_proj.weight", "h.1.mlp.c_proj.weight",
                   "h.1.attn.c_proj.weight"]
    assert down_proj_tensor_names(legacy_gpt2, gpt2, 2) == {0: "h.0.mlp.c_proj.weight", 1: "h.1.mlp.c_proj.weight"}
    names = [f"language_model.model.layers.{i}.mlp.down_proj.weight" for i in range(2)] + [
        "vision_tower.encoder.layers.0.mlp.fc2.weight"]
    assert down_proj_tensor_names(names, get_arch("gemma3"), 2)[1] == names[1]
    # two complete prefixes: the one matching the registry path wins
    both = [f"{p}layers.{i}.mlp.down_proj.weight" for p in ("model.", "mtp.") for i in range(2)]
    assert down_proj_tensor_names(both, llama, 2) == {0: both[0], 1: both[1]}
    with pytest.raises(ModelLoadError, match=r"layers.<N>.mlp.down_proj.weight"):
        down_proj_tensor_names(["model.layers.0.mlp.down_proj.weight"], llama, 2)


# ------------------------------------------------------------------------------- streamed verification
def _tensor_range(folder: Path, name: str) -> tuple[Path, int, int, str]:
    """(shard, absolute byte offset, byte length, dtype) of one tensor, read from the headers directly."""
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = folder / weight_map[name]
    with open(shard, "rb") as handle:
        n = int.from_bytes(handle.read(8), "little")
        info = json.loads(handle.read(n))[name]
    begin, end = info["data_offsets"]
    return shard, 8 + n + begin, end - begin, info["dtype"]


def _offset(j: int, row: int, d_model: int, conv1d: bool, item: int) -> int:
    """Byte offset of element (row, neuron j) in a tiny model's down-projection (d_ff 48)."""
    return (j * d_model + row if conv1d else row * 48 + j) * item


def _poke(shard: Path, offset: int, data: bytes) -> None:
    with open(shard, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_streamed_check_names_a_wrong_byte_and_a_wrong_column(sources, edits, tmp_path):
    from editor.edit.verify import check_checkpoint
    from editor.errors import VerificationError

    for case in ("llama", "gpt2", "llama-bf16"):  # Linear and Conv1D layouts, fp32 and bf16
        folder, lm, neurons = sources[case]
        scales = NeuronSet.load(neurons).scales(0.0, LAYER_ALPHA)  # (0, 40) -> 2.0
        changed = {layer: DOWN_TENSOR[case].format(layer) for layer in (0, 1)}
        good = edits[case]["ooc"].out
        report, hashes = check_checkpoint(folder, good, scales, changed, lm.arch, require_same_names=True)
        assert report["differing"] == [] and report["index"]["consistent"] and report["method"] == "streamed"
        assert hashes == {name: hashlib.sha256((good / name).read_bytes()).hexdigest() for name in hashes}
        untouched = next(n for n in raw_tensors(good) if n not in changed.values() and "norm" not in n)
        conv1d = lm.arch.conv1d
        d_model = raw_tensors(good)[changed[0]][1][1 if conv1d else 0]
        item = 2 if CASES[case][1] == torch.bfloat16 else 4

        plants = [  # (tensor, byte offset in it, what is written there)
            (untouched, len(raw_tensors(good)[untouched][2]) // (2 * item) * item, "flip"),
            # neuron (0, 40) must be 2 x source: one element put back to the source's value
            (changed[0], _offset(40, 0, d_model, conv1d, item), "source"),
            # neuron (0, 10) is not in the set: one element of its column changed
            (changed[0], _offset(10, 1, d_model, conv1d, item), "flip"),
        ]
        for k, (name, at, what) in enumerate(plants):
            bad = tmp_path / f"{case}-{k}"
            shutil.copytree(good, bad)
            shard, begin, _, _ = _tensor_range(bad, name)
            current = shard.read_bytes()[begin + at:begin + at + item]
            if what == "source":
                src_shard, src_begin, _, _ = _tensor_range(folder, name)
                data = src_shard.read_bytes()[src_begin + at:src_begin + at + item]
            else:  # flip the lowest bit of the element's most significant byte (little-endian: its last)
                data = current[:-1] + bytes([current[-1] ^ 0x01])
            assert data != current
            _poke(shard, begin + at, data)
            with pytest.raises(VerificationError, match=re.escape(name)) as caught:
                check_checkpoint(folder, bad, scales, changed, lm.arch, require_same_names=True)
            others = (set(changed.values()) | {untouched}) - {name}
            assert not any(f"'{n}'" in str(caught.value) for n in others), f"{case}: only {name} is named"
    # an index that maps a tensor to the wrong shard is named too
    folder, lm, neurons = sources["llama"]
    bad = tmp_path / "index"
    shutil.copytree(edits["llama"]["ooc"].out, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, s in index["weight_map"].items() if s != shards[0])
    index["weight_map"][name] = shards[0]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(VerificationError, match=re.escape(name)):
        check_checkpoint(folder, bad, NeuronSet.load(neurons).scales(0.0, LAYER_ALPHA),
                         {layer: DOWN_TENSOR["llama"].format(layer) for layer in (0, 1)}, lm.arch,
                         require_same_names=True)


def test_out_of_core_without_the_logit_check_says_it_verified_streamed(sources, workdir):
    folder, _, neurons = sources["llama-bf16"]
    for mode in ("weights", "ia3", "lora"):
        result = edit_model(str(folder), neurons, 0.0, mode, workdir / f"streamed-{mode}", layer_alpha=LAYER_ALPHA,
                            out_of_core=True, verify_logits=False)
        ver = result.verification
        assert ver["form"] == "streamed" and ver["passed"] is True and "skipped" in ver["logits"]
        if mode == "weights":
            assert ver["tensors"]["method"] == "streamed" and ver["tensors"]["index"]["identical_to_source"] is True
            assert ver["tensors"]["tensors_compared"] == len(raw_tensors(folder))
        else:
            assert ver["adapter_tensors"]["passed"] is True
        manifest = json.loads((result.out / EDIT_MANIFEST).read_text())
        assert manifest["verification"]["form"] == "streamed"
        on_disk = {p.relative_to(result.out).as_posix() for p in result.out.rglob("*") if p.is_file()}
        assert set(manifest["files"]) == on_disk - {EDIT_MANIFEST}  # every written file hashed
        assert all(hashlib.sha256((result.out / n).read_bytes()).hexdigest() == h for n, h in manifest["files"].items())


def test_out_of_core_copies_the_same_bytes_where_the_kernel_cannot_copy(sources, edits, tmp_path, monkeypatch):
    """os.copy_file_range refuses across some file systems (EXDEV): the copy then goes through a buffer."""
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    folder, _, neurons = sources["llama-bf16"]
    result = edit_model(str(folder), neurons, 0.0, "weights", tmp_path / "out", layer_alpha=LAYER_ALPHA,
                        out_of_core=True)
    assert raw_tensors(result.out) == raw_tensors(edits["llama-bf16"]["ooc"].out)
    for shard in folder.glob("model*.safetensors"):
        assert (result.out / shard.name).read_bytes() == (edits["llama-bf16"]["ooc"].out / shard.name).read_bytes()


def test_a_70b_header_only_checkpoint_is_inspected_and_checked_without_weights(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import make_big_checkpoint
    finally:
        sys.path.pop(0)
    from editor.model.checkpoint import index_report, local_checkpoint, tensor_entries
    from editor.model.info import inspect_model

    folder = tmp_path / "llama-70b-headers"
    summary = make_big_checkpoint.write_checkpoint(folder, "70b", header_only=True)
    assert summary["shards"] == 30 and summary["tensor_bytes"] == 2 * 70_553_706_496
    assert sum(p.stat().st_size for p in folder.iterdir()) < 200_000  # headers only
    info = inspect_model(str(folder))
    assert (info.num_layers, info.d_ff, info.parameters, info.dtype) == (80, 28672, 70_553_706_496, "bfloat16")
    assert cli_main(["inspect", str(folder)]) in (0, None)
    ckpt = local_checkpoint(str(folder))
    entries = tensor_entries(ckpt.folder)
    downs = down_proj_tensor_names(entries, ckpt.arch, 80, str(folder))
    assert len(entries) == 723 and entries[downs[79]].shape == (8192, 28672)
    assert NeuronSet.from_pairs([(0, 0), (79, 28671)]).validate(ckpt.config) is None
    with pytest.raises(InputError, match=r"layer 80, index 3.*80 layers"):
        NeuronSet.from_pairs([(80, 3)]).validate(ckpt.config)
    # the headers describe 141 GB the files do not hold: reported per shard, and an edit names the shard
    report = index_report(folder)
    assert not report["consistent"] and "model-00001-of-00030.safetensors: the file is" in report["problems"][0]
    with pytest.raises(ModelLoadError, match=r"model-00001-of-00030\.safetensors is truncated"):
        edit_model(str(folder), [(79, 5)], 0.0, "weights", tmp_path / "out", out_of_core=True)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- adapters
def test_adapter_files_match_what_peft_itself_would_save(sources, edits):
    from peft import IA3Config, LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors import safe_open

    for case in ("gpt2", "gemma3"):
        _, lm, _ = sources[case]
        arch = get_arch(lm.config)
        names = [arch.down_proj_path(layer) for layer in (0, 1)]
        ia3 = get_peft_model(copy.deepcopy(lm.model), IA3Config(target_modules=names, feedforward_modules=names,
                                                                 fan_in_fan_out=arch.conv1d))
        lora = get_peft_model(copy.deepcopy(lm.model), LoraConfig(target_modules=names, r=3, rank_pattern={
            names[0]: 3, names[1]: 2}, fan_in_fan_out=arch.conv1d))
        for mode, reference in (("ia3", ia3), ("lora", lora)):
            expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(reference).items()}
            with safe_open(str(edits[case][mode].out / "adapter_model.safetensors"), "pt") as f:
                ours = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
            assert ours == expected, (case, mode)


def test_ia3_vector_and_lora_factors_hold_the_alphas(sources, edits):
    from safetensors import safe_open

    _, lm, _ = sources["llama"]
    with safe_open(str(edits["llama"]["ia3"].out / "adapter_model.safetensors"), "pt") as f:
        vectors = {layer: f.get_tensor(f"base_model.model.model.layers.{layer}.mlp.down_proj.ia3_l")[0]
                   for layer in (0, 1)}
    for layer, vector in vectors.items():
        expected = torch.ones(48)
        for (at_layer, j), a in EXPECTED_ALPHA.items():
            if at_layer == layer:
                expected[j] = a
        assert torch.equal(vector, expected)
    config = json.loads((edits["llama"]["lora"].out / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"model.layers.0.mlp.down_proj": 3, "model.layers.1.mlp.down_proj": 2}
    assert config["alpha_pattern"] == config["rank_pattern"]  # lora_alpha = rank: scaling 1
    assert config["target_modules"] and set(config["target_modules"]) == set(config["rank_pattern"])
    assert config["base_model_name_or_path"] == str(sources["llama"][0].resolve())
    with safe_open(str(edits["llama"]["lora"].out / "adapter_model.safetensors"), "pt") as f:
        a = f.get_tensor("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
        b = f.get_tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")
    assert torch.equal(a.sum(dim=1), torch.ones(3)) and a[:, [3, 17, 40]].equal(torch.eye(3))
    w = lm.model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(b, w[:, [3, 17, 40]] * torch.tensor([-1.0, -1.0, 1.0]))  # alpha - 1 = -1, -1, +1


def test_adapters_target_only_layers_with_neurons(sources, workdir):
    folder, lm, _ = sources["llama"]
    result = edit_model(lm, [(1, 7)], 0.0, "ia3", workdir / "ia3-one-layer")
    config = json.loads((result.out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model.layers.1.mlp.down_proj"]
    assert config["feedforward_modules"] == ["model.layers.1.mlp.down_proj"]
    assert result.verification["passed"]


# --------------------------------------------------------------------------------------------- manifest
def test_manifest_lists_every_file_with_its_sha256_and_ships_the_evidence(sources, edits):
    folder, lm, neurons = sources["phi3"]
    for mode in ("weights", "ia3", "lora", "ooc"):
        result = edits["phi3"][mode]
        manifest = json.loads((result.out / EDIT_MANIFEST).read_text())
        assert manifest == json.loads(json.dumps(result.manifest))
        files = {p.relative_to(result.out).as_posix() for p in result.out.rglob("*") if p.is_file()}
        assert set(manifest["files"]) == files - {EDIT_MANIFEST}
        for name, digest in manifest["files"].items():
            assert hashlib.sha256((result.out / name).read_bytes()).hexdigest() == digest
        assert (result.out / "neurons.json").read_bytes() == neurons.read_bytes()
        assert (result.out / "probe.safetensors").read_bytes() == (neurons.parent / "probe.safetensors").read_bytes()
        assert manifest["mode"] == ("weights" if mode == "ooc" else mode)
        assert manifest["model"]["architecture_hash"] == lm.architecture_hash
        assert manifest["model"]["weights_fingerprint"] == lm.fingerprint
        assert manifest["neurons"]["sha256"] == NeuronSet.load(neurons).sha256
        assert manifest["neurons"]["per_layer"] == {"0": 3, "1": 2}
        assert manifest["alpha"] == {"default": 0.0, "per_layer": {"1": 0.5}, "per_neuron_overrides": 1,
                                     "min": 0.0, "max": 2.0}
        assert manifest["provenance"]["packages"]["torch"]
    assert manifest["written"]["out_of_core"] is True
    # a single-file checkpoint gets an index too, so that *.safetensors globbing loaders skip the probe
    index = json.loads((edits["phi3"]["weights"].out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}


# ------------------------------------------------------------------------------------------ bad specs
def _no_output(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if name in p.name], "no temporary folder may be left behind"


@pytest.mark.parametrize(
    "doc, alpha, error, message",
    [
        ({"neurons": [{"layer": 0, "index": 48}]}, 0.0, InputError, r"index out of range.*d_ff is 48"),
        ({"neurons": [{"layer": 2, "index": 0}]}, 0.0, InputError, r"layer out of range.*2 layers"),
        ({"neurons": []}, 0.0, InputError, "empty"),
        ({"neurons": [{"layer": 0, "index": 1}, {"layer": 0, "index": 1}]}, 0.0, InputError, "more than once"),
        ({"neurons": [{"layer": 0, "index": 1}]}, -0.5, InputError, "must be >= 0"),
        ({"neurons": [{"layer": 0, "index": 1}]}, float("nan"), InputError, "finite"),
        ({"neurons": [{"layer": 0, "index": 1, "alpha": "0"}]}, 0.0, InputError, r"neurons\[0\].alpha"),
        ({"neurons": [{"layer": 0}]}, 0.0, InputError, r"neurons\[0\] must be an object"),
        ({"neurons": [{"layer": 0, "index": 1, "flat_index": 3}]}, 0.0, InputError, "flat_index is 3"),
        ({"layers": [0]}, 0.0, InputError, 'a "neurons" list'),
    ],
)
def test_bad_specs_give_clear_errors_and_write_nothing(sources, tmp_path, doc, alpha, error, message):
    _, lm, _ = sources["llama"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    for mode in ("weights", "ia3"):
        with pytest.raises(error, match=message):
            edit_model(lm, path, alpha, mode, tmp_path / "out")
        _no_output(tmp_path, "out")


def test_a_set_from_another_architecture_or_other_weights_is_refused(sources, tmp_path):
    folder, lm, _ = sources["llama"]
    gpt2_identity = sources["gpt2"][1].identity()
    wrong_arch = write_neuron_file(tmp_path / "gpt2-set", gpt2_identity, pairs=[(0, 1)])
    with pytest.raises(ModelMismatchError, match="located in a gpt2 model"):
        edit_model(lm, wrong_arch, 0.0, "weights", tmp_path / "out")
    with pytest.raises(ModelMismatchError, match="located in a gpt2 model"):
        edit_model(str(folder), wrong_arch, 0.0, "weights", tmp_path / "out", out_of_core=True)
    _no_output(tmp_path, "out")
    other = dict(lm.identity(), weights_fingerprint="0123456789abcdef")
    other_weights = write_neuron_file(tmp_path / "other-set", other, pairs=[(0, 1)])
    for ooc in (False, True):
        with pytest.raises(ModelMismatchError, match="--force"):
            edit_model(str(folder) if ooc else lm, other_weights, 0.0, "weights", tmp_path / "out", out_of_core=ooc)
        _no_output(tmp_path, "out")
    assert edit_model(lm, other_weights, 0.0, "ia3", tmp_path / "forced", force=True).verification["passed"]


def test_output_overlapping_the_source_and_bad_mode_are_refused(sources, tmp_path):
    folder, lm, neurons = sources["llama"]
    with pytest.raises(InputError, match="overlaps the source"):
        edit_model(str(folder), neurons, 0.0, "weights", folder, overwrite=True, out_of_core=True)
    with pytest.raises(InputError, match="overlaps the source"):
        edit_model(lm, neurons, 0.0, "weights", folder / "inside")
    with pytest.raises(InputError, match="unknown edit mode"):
        edit_model(lm, neurons, 0.0, "prune", tmp_path / "out")
    with pytest.raises(InputError, match="per-layer alpha names layer 1"):
        edit_model(lm, [(0, 1)], 0.0, "ia3", tmp_path / "out", layer_alpha={1: 0.5})
    _no_output(tmp_path, "out")
    assert not (folder / "inside").exists()


# ----------------------------------------------------------------------------------- atomic output
def test_interrupted_write_leaves_no_final_folder_and_keeps_an_old_one(sources, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    _, lm, neurons = sources["llama"]

    def disk_full(self, save_directory, **kwargs):
        (Path(save_directory) / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):
        edit_model(lm, neurons, 0.0, "weights", tmp_path / "out")
    _no_output(tmp_path, "out")
    old = tmp_path / "old"
    old.mkdir()
    (old / "marker").write_text("previous edit")
    with pytest.raises(OSError, match="No space"):
        edit_model(lm, neurons, 0.0, "weights", old, overwrite=True)
    assert [p.name for p in old.iterdir()] == ["marker"]
    # the loaded model's weights were restored after the failed save
    ids, base, _ = reference_logits(lm.model, lm.tokenizer, EXPECTED_ALPHA)
    fresh = load_model(str(sources["llama"][0]), device="cpu")
    with torch.no_grad():
        assert torch.equal(fresh.model(input_ids=ids).logits[0], base)


def test_existing_output_needs_overwrite(sources, tmp_path):
    _, lm, neurons = sources["llama"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        edit_model(lm, neurons, 0.0, "ia3", out)
    result = edit_model(lm, neurons, 0.0, "ia3", out, overwrite=True)
    assert not (out / "stale").exists() and (out / "adapter_model.safetensors").is_file()
    assert result.out == out


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_edit_writes_and_reports(sources, tmp_path, capsys):
    folder, _, neurons = sources["gpt2"]
    out = tmp_path / "cli-lora"
    code = cli_main(["edit", "--model", str(folder), "--neurons", str(neurons), "--mode", "lora",
                     "--layer-alpha", "1=0.5", "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and str(out) in printed
    manifest = json.loads((out / EDIT_MANIFEST).read_text())
    assert manifest["alpha"]["per_layer"] == {"1": 0.5} and manifest["mode"] == "lora"
    code = cli_main(["edit", "--model", str(folder), "--neurons", str(neurons), "--out", str(out), "--device", "cpu"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    code = cli_main(["edit", "--model", str(folder), "--neurons", str(neurons), "--layer-alpha", "one=0",
                     "--out", str(tmp_path / "x")])
    assert code == 2 and "LAYER=ALPHA" in capsys.readouterr().err


def test_several_modes_from_one_command_and_the_verify_prompts_setting(sources, tmp_path, capsys):
    """--mode twice writes both forms under --out (as a recipe run lays them out); --verify-prompt, a setting
    declared once on EditSettings, reaches the verification from the command line and from a recipe."""
    folder, _, neurons = sources["gpt2"]
    code = cli_main(["edit", "--model", str(folder), "--neurons", str(neurons), "--mode", "weights", "--mode", "ia3",
                     "--verify-prompt", "One two three", "--verify-prompt", "Four", "--out", str(tmp_path / "both"),
                     "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for sub, mode in (("model", "weights"), ("adapter-ia3", "ia3")):
        manifest = json.loads((tmp_path / "both" / sub / EDIT_MANIFEST).read_text())
        assert manifest["mode"] == mode and manifest["verification"]["prompts"] == 2
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: {folder}, device: cpu}}\noutput: {tmp_path / 'run'}\n"
                      f"edit: {{modes: [ia3], verify_prompts: [Only this one]}}\n")
    assert cli_main(["edit", "--recipe", str(recipe), "--neurons", str(neurons)]) == 0
    manifest = json.loads((tmp_path / "run" / "adapter-ia3" / EDIT_MANIFEST).read_text())
    assert manifest["verification"]["prompts"] == 1
    with pytest.raises(InputError, match="verify_prompts"):
        edit_model(str(folder), neurons, 0.0, "ia3", tmp_path / "none", verify_prompts=[])


# ----------------------------------------------------------------------------------------- integration
SMOL_GENERATE = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel

    ckpt, base, ia3, lora = sys.argv[1:5]
    tok = AutoTokenizer.from_pretrained(ckpt)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = {}
    def gen(model):
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        return seq[0, ids.shape[1]:].tolist()
    out["checkpoint"] = gen(AutoModelForCausalLM.from_pretrained(ckpt))
    out["ia3"] = gen(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ia3))
    out["lora"] = gen(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), lora))
    out["text"] = tok.decode(out["checkpoint"], skip_special_tokens=True)
    out["ids"] = ids[0].tolist()
    assert "editor" not in sys.modules
    print(json.dumps(out))
""")


@pytest.mark.integration
def test_smollm2_edit_loads_offline_with_plain_libraries_and_generates(smollm2, tmp_path):
    rng = random.Random(7)
    pairs = sorted({(rng.randrange(30), rng.randrange(1536)) for _ in range(30)})
    locate = tmp_path / "locate"
    locate.mkdir()
    doc = {"format": "hneurons.neurons/1", "model": smollm2.identity(),
           "neurons": [{"layer": i, "index": j, "flat_index": i * 1536 + j, "weight": 0.1} for i, j in pairs],
           "count": len(pairs), "total_ffn_neurons": 46080}
    (locate / "neurons.json").write_text(json.dumps(doc))
    results = {mode: edit_model(smollm2, locate / "neurons.json", 0.0, mode, tmp_path / mode)
               for mode in ("weights", "ia3", "lora")}
    assert (tmp_path / "ia3" / "adapter_model.safetensors").stat().st_size < 1_000_000
    for result in results.values():
        assert all(d <= FP32_TOLERANCE for d in result.verification["max_abs_diff"].values())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SMOL_GENERATE, str(tmp_path / "weights"), smollm2.folder,
                           str(tmp_path / "ia3"), str(tmp_path / "lora")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["text"].strip(), "the edited checkpoint must generate text"
    # greedy tokens of every shipped form equal the source model under run-time suppression
    ids = torch.tensor([fresh["ids"]])
    with scaled_neurons(smollm2.model, NeuronSet.from_pairs(pairs).scales(0.0)), torch.no_grad():
        hooked = smollm2.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                        do_sample=False)[0, ids.shape[1]:].tolist()
    assert fresh["checkpoint"] == fresh["ia3"] == fresh["lora"] == hooked
