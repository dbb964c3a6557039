"""Edit mode gguf: a patched GGUF file from a GGUF source (editor/edit/gguf.py).

Tiny llama GGUFs are written here with gguf's own writer (quantized with gguf.quants), with the tiny test
tokenizer in the metadata so that transformers' GGUF loader reads them. Everything is checked against
gguf's reader and transformers' loader directly, not against hneurons' own report.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize, quantize
from tinymodels import tiny_model, tiny_tokenizer

from editor.cli import main as cli_main
from editor.edit.gguf import EDIT_FRACTION, value_error_bound
from editor.edit.settings import VERIFY_PROMPTS
from editor.edit.stage import edit_model
from editor.errors import InputError, ModelLoadError
from editor.formats import EDIT_FOLDERS, EDIT_MANIFEST
from editor.model.hooks import group_by_layer, scaled_neurons
from editor.pipeline.recipe import load_recipe

Q = gguf.GGMLQuantizationType
HIDDEN, FF, LAYERS, HEADS, KV = 64, 128, 2, 4, 2
# Neurons and alphas: two in one block of 32 (alpha 0), one amplified (2.0: its block may need a new scale),
# two in layer 1 (0.5), one of them in the last block.
ALPHA = {(0, 3): 0.0, (0, 17): 0.0, (0, 40): 2.0, (1, 5): 0.5, (1, 127): 0.5}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small passes run faster on one thread


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """GGUF sources are converted once into the hneurons cache: a private one for this module."""
    old = os.environ.get("HNEURONS_CACHE")
    os.environ["HNEURONS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("HNEURONS_CACHE", None)
    else:
        os.environ["HNEURONS_CACHE"] = old


def _store(writer, name: str, values: np.ndarray, qtype) -> None:
    if qtype == Q.F32:
        writer.add_tensor(name, values.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, values.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(values.astype(np.float32), qtype), raw_dtype=qtype)


def _q6_k_bytes(rows: int, cols: int, g: np.random.Generator) -> np.ndarray:
    """Valid Q6_K blocks (which gguf cannot quantize): random 6-bit levels, small int8 scales, a float16 scale."""
    blocks = g.integers(0, 256, size=(rows * cols // 256, 210), dtype=np.uint8)
    blocks[:, 192:208] = g.integers(1, 16, size=(blocks.shape[0], 16)).astype(np.int8).view(np.uint8)
    blocks[:, 208:210] = np.full((blocks.shape[0], 1), 0.002, np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def write_tiny_gguf(path: Path, down_type=Q.Q4_1, other_type=Q.Q8_0, seed: int = 0, ff: int = FF) -> Path:
    """A tiny random llama GGUF: attention and gate/up in ``other_type``, down-projections in ``down_type``
    (layer 1's in Q8_0 when ``down_type`` is Q4_1, so one file mixes two types), norms in F32."""
    tok = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    g = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_string("general.name", "tiny test llama")
    head = HIDDEN // HEADS

    def rand(*shape: int) -> np.ndarray:
        return (g.standard_normal(shape) * 0.2).astype(np.float32)

    _store(writer, "token_embd.weight", rand(len(tokens), HIDDEN), other_type)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        for name, shape in (("attn_q", (HEADS * head, HIDDEN)), ("attn_k", (KV * head, HIDDEN)),
                            ("attn_v", (KV * head, HIDDEN)), ("attn_output", (HIDDEN, HEADS * head)),
                            ("ffn_gate", (ff, HIDDEN)), ("ffn_up", (ff, HIDDEN))):
            _store(writer, f"blk.{i}.{name}.weight", rand(*shape), other_type)
        if down_type == Q.Q6_K:
            writer.add_tensor(f"blk.{i}.ffn_down.weight", _q6_k_bytes(HIDDEN, ff, g), raw_dtype=Q.Q6_K)
        else:
            own = Q.Q8_0 if (down_type == Q.Q4_1 and i == 1) else down_type
            _store(writer, f"blk.{i}.ffn_down.weight", rand(HIDDEN, ff), own)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    _store(writer, "output.weight", rand(len(tokens), HIDDEN), other_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def neuron_file(folder: Path) -> Path:
    doc = {"neurons": [{"layer": layer, "index": index, "alpha": alpha} for (layer, index), alpha in ALPHA.items()]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "neurons.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def source(work):
    return write_tiny_gguf(work / "tiny-llama.Q4_1.gguf")


@pytest.fixture(scope="module")
def neurons(work):
    return neuron_file(work / "locate")


@pytest.fixture(scope="module")
def edits(work, source, neurons):
    """The edit written with each storage choice (one load of the source serves all)."""
    from editor.model.loading import load_model

    lm = load_model(str(source), device="cpu")
    return {choice: edit_model(lm, neurons, mode="gguf", out=work / f"out-{choice}", gguf_type=choice)
            for choice in ("auto", "source", "Q8_0", "F16", "F32")}


def gguf_file(result) -> Path:
    return result.out / result.manifest["written"]["gguf_file"]


def fields(reader: gguf.GGUFReader) -> dict:
    return {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def dequantized(tensor) -> np.ndarray:
    return np.asarray(dequantize(np.asarray(tensor.data), tensor.tensor_type), np.float32).reshape(HIDDEN, FF)


def intended(tensor, layer: int) -> np.ndarray:
    values = dequantized(tensor).copy()
    for (lay, index), alpha in ALPHA.items():
        if lay == layer:
            values[:, index] *= np.float32(alpha)
    return values


def gguf_logits(path: Path, scales=None) -> torch.Tensor:
    """float32 logits at every token of the default verification prompts, one prompt at a time, with
    transformers' GGUF loader (optionally with run-time scaling)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok = tiny_tokenizer()
    out = []
    with torch.no_grad(), (scaled_neurons(model, scales) if scales else contextlib.nullcontext()):
        for prompt in VERIFY_PROMPTS:
            out.append(model(input_ids=tok(prompt, return_tensors="pt")["input_ids"]).logits[0])
    return torch.cat(out)


# ========================================================================================== the file
@pytest.mark.parametrize("choice", ["source", "Q8_0", "F16", "F32"])
def test_untouched_tensors_and_metadata_are_the_source_bytes(edits, source, choice):
    src, out = gguf.GGUFReader(str(source)), gguf.GGUFReader(str(gguf_file(edits[choice])))
    assert out.alignment == src.alignment
    written = fields(out)
    for key, value in fields(src).items():
        assert written[key] == value, key
    assert written["hneurons.neurons.count"][1] == len(ALPHA)
    assert written["hneurons.alpha.max"][1] == 2.0
    assert json.loads(written["hneurons.edit"][1])["layers"] == {"0": 3, "1": 2}
    assert [t.name for t in out.tensors] == [t.name for t in src.tensors]
    for a, b in zip(src.tensors, out.tensors):
        if "ffn_down" in a.name:
            continue
        assert (b.tensor_type, list(b.shape)) == (a.tensor_type, list(a.shape)), a.name
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name
        assert b.data_offset % out.alignment == 0


@pytest.mark.parametrize("choice", ["source", "Q8_0", "F16", "F32"])
def test_edited_tensors_dequantize_to_the_intended_values(edits, source, choice):
    src = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    out = {t.name: t for t in gguf.GGUFReader(str(gguf_file(edits[choice]))).tensors}
    for layer in range(LAYERS):
        name = f"blk.{layer}.ffn_down.weight"
        want, got = intended(src[name], layer), dequantized(out[name])
        stored = src[name].tensor_type if choice == "source" else Q[choice]
        assert out[name].tensor_type == stored
        if choice == "F32":
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
            continue
        bound = value_error_bound(want, dequantized(src[name]), stored.name)
        assert (np.abs(got - want) <= bound).all()
        if choice == "source":  # blocks of 32 neurons without an edited one keep their bytes
            edited_blocks = {index // 32 for (lay, index) in ALPHA if lay == layer}
            a = np.asarray(src[name].data).reshape(HIDDEN, FF // 32, -1)
            b = np.asarray(out[name].data).reshape(HIDDEN, FF // 32, -1)
            for block in set(range(FF // 32)) - edited_blocks:
                assert a[:, block].tobytes() == b[:, block].tobytes()
        if layer == 0 and stored in (Q.Q8_0, Q.F16):  # alpha 0 is stored exactly where zero is on the grid
            assert not got[:, [3, 17]].any()


def test_written_file_round_trips_through_transformers_with_the_logits_of_run_time_scaling(edits, source):
    scales = group_by_layer(list(ALPHA), ALPHA)
    base = gguf_logits(source)
    reference = gguf_logits(source, scales)
    effect = float((reference - base).abs().max())
    assert effect > 0.05  # the edit moves the logits visibly
    assert float((gguf_logits(gguf_file(edits["F32"])) - reference).abs().max()) <= 1e-4
    for choice in ("source", "Q8_0", "F16"):
        ver = edits[choice].verification
        diff = float((gguf_logits(gguf_file(edits[choice])) - reference).abs().max())
        fraction = max(EDIT_FRACTION[t] for t in ver["stored_dtype"].split("+"))
        assert diff <= 1e-4 + fraction * effect, choice
        assert abs(diff - ver["max_abs_diff"]["transformers_gguf"]) < 1e-5 * max(1.0, diff)
        assert ver["edit_effect_max_abs"] == pytest.approx(effect, rel=1e-4)


def test_auto_picks_the_most_compact_type_that_passes_and_reports_it(edits, source):
    result = edits["auto"]
    ver, written = result.verification, result.manifest["written"]
    assert ver["gguf_type"] == "source" and ver["tried"][0]["passed"]
    assert ver["quantization_error_max_abs"] <= ver["tolerance"]
    assert 0 < ver["error_over_edit_effect"] < EDIT_FRACTION["Q4_1"]
    assert written["size_bytes"] - source.stat().st_size < 4096  # the same tensors, plus the hneurons keys
    assert gguf_file(edits["F32"]).stat().st_size > gguf_file(edits["F16"]).stat().st_size > written["size_bytes"]
    files = json.loads((result.out / EDIT_MANIFEST).read_text())["files"]
    assert written["gguf_file"] in files and "neurons.json" in files


def test_a_k_quant_source_is_written_as_q8_0_or_finer(work, neurons):
    path = write_tiny_gguf(work / "tiny-q6k.gguf", down_type=Q.Q6_K, other_type=Q.F32, ff=256)
    with pytest.raises(InputError, match=r"tiny-q6k.gguf stores blk.0.ffn_down.weight as Q6_K, which the gguf package can read but not write"):
        edit_model(str(path), neurons, mode="gguf", out=work / "q6k-source", gguf_type="source")
    assert not (work / "q6k-source").exists()
    result = edit_model(str(path), neurons, mode="gguf", out=work / "q6k-auto")
    assert result.verification["tried"][0]["gguf_type"] == "Q8_0"
    assert result.verification["stored_dtype"] in ("Q8_0", "F16", "F32")


# ========================================================================================= bad inputs
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".hneurons-tmp"))


def test_truncated_gguf_is_one_clear_error_and_leaves_nothing(work, source, neurons):
    broken = work / "bad" / "truncated.gguf"
    broken.parent.mkdir()
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated.gguf"):
        edit_model(str(broken), neurons, mode="gguf", out=work / "bad" / "out")
    assert sorted(p.name for p in (work / "bad").iterdir()) == ["truncated.gguf"]


def test_unsupported_type_for_writing_is_refused_before_anything_is_written(work, source, neurons):
    for bad in ("Q4_K", "IQ2_XS", "int4"):
        with pytest.raises(InputError, match=f"cannot write GGUF type '{bad}'"):
            edit_model(str(source), neurons, mode="gguf", out=work / "refused", gguf_type=bad)
    assert not (work / "refused").exists() and not leftovers(work)


def test_safetensors_source_without_the_converter_names_it(tmp_path, monkeypatch, neurons):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(InputError, match=r"tiny-llama.*llama.cpp's converter.*convert_hf_to_gguf"):
        edit_model(str(folder), neurons, mode="gguf", out=tmp_path / "out")
    with pytest.raises(InputError, match="--gguf-converter /nowhere/convert_hf_to_gguf.py"):
        edit_model(str(folder), neurons, mode="gguf", out=tmp_path / "out",
                   gguf_converter="/nowhere/convert_hf_to_gguf.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-bin", "tiny-llama"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]


# ============================================================================================== CLI
def test_cli_format_gguf_and_several_modes(work, source, neurons, capsys):
    out = work / "cli"
    assert cli_main(["edit", "--model", str(source), "--neurons", str(neurons), "--format", "gguf", "--mode",
                     "weights", "--gguf-type", "f16", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "stored as F16" in printed and "edit's own effect" in printed
    assert (out / EDIT_FOLDERS["weights"] / EDIT_MANIFEST).is_file()
    manifest = json.loads((out / EDIT_FOLDERS["gguf"] / EDIT_MANIFEST).read_text())
    assert manifest["mode"] == "gguf" and manifest["verification"]["gguf_type"] == "F16"
    assert (out / "gguf" / manifest["written"]["gguf_file"]).is_file()


def test_recipe_lists_gguf_as_an_edit_mode(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {id: smollm2-135m-instruct}\noutput: out\nedit: {modes: [weights, ia3, gguf], "
                      "gguf_type: q8_0}\n")
    loaded = load_recipe(recipe)
    assert loaded.edit.modes == ["weights", "ia3", "gguf"] and loaded.edit.gguf_type == "Q8_0"


# ============================================================================================ card, push
def test_card_says_how_to_run_the_gguf_and_push_uploads_it(edits):
    import shutil

    import yaml

    from editor.report.card import write_card
    from editor.report.publish import collect_upload_files

    folder = edits["auto"].out.parent / "card-gguf"
    shutil.copytree(edits["auto"].out, folder)
    name = edits["auto"].manifest["written"]["gguf_file"]
    card = write_card(folder, repo_id="someone/tiny-llama-hneurons-gguf").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "gguf" and "gguf" in meta["tags"] and "peft" not in meta["tags"]
    assert f"llama-cli -m {name}" in card and f"FROM ./{name}" in card and "ollama create" in card
    assert "ollama run hf.co/someone/tiny-llama-hneurons-gguf" in card and "--mode gguf" in card
    assert "byte-identical to the source GGUF" in card and "quantization keeps the edit" in card
    files, _ = collect_upload_files(folder)
    assert name in {f.path for f in files}


def test_an_edited_gguf_can_be_edited_again_its_hneurons_keys_replaced(work, edits, neurons):
    first = gguf_file(edits["F16"])
    again = edit_model(str(first), neurons, mode="gguf", out=work / "again", gguf_type="source")
    reader = gguf.GGUFReader(str(gguf_file(again)))  # duplicate keys would make gguf's reader refuse the file
    assert [k for k in reader.fields if k == "hneurons.version"] == ["hneurons.version"]
    assert reader.fields["hneurons.source.sha256"].contents() == again.manifest["model"]["source"]["gguf_sha256"]
    assert again.verification["stored_dtype"] == "F16"


def test_gguf_settings_enter_the_edit_stage_key_only_when_a_gguf_is_written(tmp_path):
    from editor.pipeline.run import stage_settings

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {id: smollm2-135m-instruct}\noutput: out\nedit: {modes: [weights, ia3]}\n")
    assert "gguf_type" not in stage_settings(load_recipe(recipe), "edit")["edit"]
    recipe.write_text("model: {id: smollm2-135m-instruct}\noutput: out\nedit: {modes: [weights, gguf]}\n")
    assert stage_settings(load_recipe(recipe), "edit")["edit"]["gguf_type"] == "auto"
