"""Origin: parameter drift on constructed checkpoint pairs, backward transfer end to end, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_locate import synthetic_collect
from tinymodels import TINY_TYPES, tiny_config, tiny_model, tiny_tokenizer

from editor.errors import InputError, ModelMismatchError
from editor.locate.origin import drift_report, origin, parameter_drift
from editor.locate.settings import LocateSettings, OriginSettings
from editor.locate.stage import locate
from editor.model.checkpoint import local_checkpoint
from editor.model.loading import load_model

D_FF, LAYERS = 48, 2  # tinymodels' FFN shape
CHOSEN = [(0, 5), (1, 0), (1, 17), (1, 47)]  # (layer, neuron) whose weights the "instruct" copy changes
DECOYS = [(0, 9), (1, 30)]  # neurons whose *gate* changes (not a W_up row or W_down column)


def neuron_vectors(model, model_type: str, layer: int, j: int) -> dict[str, torch.Tensor]:
    """Views of neuron j's W_up row, W_down column and gate row, written out per architecture on purpose
    (independent of the registry the code under test uses)."""
    if model_type == "gpt2":
        mlp = model.transformer.h[layer].mlp
        return {"up": mlp.c_fc.weight[:, j], "down": mlp.c_proj.weight[j, :]}
    mlp = model.model.layers[layer].mlp
    if model_type == "phi3":
        return {"up": mlp.gate_up_proj.weight[D_FF + j], "gate": mlp.gate_up_proj.weight[j],
                "down": mlp.down_proj.weight[:, j]}
    return {"up": mlp.up_proj.weight[j], "gate": mlp.gate_proj.weight[j], "down": mlp.down_proj.weight[:, j]}


def save(model, folder: Path) -> Path:
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        # tinymodels sets num_hidden_layers after construction; configs with per-layer types must agree to save
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = cfg.layer_types[:cfg.num_hidden_layers]
    model.save_pretrained(folder)
    return folder


@torch.no_grad()
def constructed_pair(tmp: Path, model_type: str) -> tuple[Path, Path]:
    """A tiny model and a copy in which every weight moves a little and CHOSEN neurons' up rows and down
    columns move a lot; DECOYS move their gate rows (or, in GPT-2, the attention's c_proj) a lot."""
    base = tiny_model(model_type, seed=0)
    inst = tiny_model(model_type, seed=0)
    g = torch.Generator().manual_seed(1)
    for p in inst.parameters():
        p.add_(1e-3 * torch.randn(p.shape, generator=g))
    for layer, j in CHOSEN:
        for name in ("up", "down"):
            v = neuron_vectors(inst, model_type, layer, j)[name]
            v.add_(0.5 * torch.randn(v.shape, generator=g))
    for layer, j in DECOYS:
        if model_type == "gpt2":
            w = inst.transformer.h[layer].attn.c_proj.weight
            w.add_(torch.randn(w.shape, generator=g))
        else:
            v = neuron_vectors(inst, model_type, layer, j)["gate"]
            v.add_(torch.randn(v.shape, generator=g))
    return save(base, tmp / f"{model_type}-base"), save(inst, tmp / f"{model_type}-instruct")


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3"])
def test_drift_ranks_exactly_the_perturbed_neurons_as_most_changed(tmp_path, model_type):
    base, inst = constructed_pair(tmp_path, model_type)
    drift = parameter_drift(local_checkpoint(str(base)), local_checkpoint(str(inst)))
    chosen = {layer * D_FF + j for layer, j in CHOSEN}
    k = len(chosen)
    order = np.argsort(-drift.score)
    assert set(order[:k].tolist()) == chosen
    rank = drift.normalised_rank
    others = np.array(sorted(set(range(LAYERS * D_FF)) - chosen))
    assert rank[list(chosen)].max() < rank[others].min()  # 0 = most changed
    assert rank[list(chosen)].max() == pytest.approx((k - 1) / (LAYERS * D_FF - 1))
    # the gate (or attention) decoys did not move their neuron's up row / down column beyond the noise
    decoys = [layer * D_FF + j for layer, j in DECOYS]
    assert drift.up[decoys].max() < 1e-3 and drift.down[decoys].max() < 1e-3
    report = drift_report(drift, np.array(sorted(chosen)), top=k)
    assert {n["flat_index"] for n in report["top_changed"]} == chosen
    assert all(n["h_neuron"] for n in report["top_changed"])
    assert report["mean_normalised_rank"] < 0.05 and report["p_value"] > 0.99
    assert report["p_value_changed_more"] < 1e-4
    # block reads (one neuron at a time here) give the same distances as whole tensors
    small = parameter_drift(local_checkpoint(str(base)), local_checkpoint(str(inst)), chunk_elements=40)
    np.testing.assert_allclose(small.up, drift.up, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(small.down, drift.down, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_drift_finds_the_write_vector_of_every_registry_architecture(tmp_path, model_type):
    """Zeroing one neuron's write vector through the model (editor.model.hooks) is found in the files."""
    from editor.model.hooks import down_proj_modules, down_weight, scale_columns_
    from editor.model.registry import get_arch

    model = tiny_model(model_type, seed=0)
    a = save(model, tmp_path / "a")
    scale_columns_(down_weight(down_proj_modules(model)[1]), get_arch(model.config), torch.tensor([7]),
                   torch.tensor([0.0]))
    drift = parameter_drift(local_checkpoint(str(a)), local_checkpoint(str(save(model, tmp_path / "b"))))
    assert drift.up.shape == (LAYERS * D_FF,) and not drift.up.any()
    assert drift.down[D_FF + 7] == 1.0 and np.count_nonzero(drift.down) == 1
    assert int(np.argmax(drift.score)) == D_FF + 7 and drift.normalised_rank[D_FF + 7] == 0.0


def test_identical_checkpoints_have_zero_drift_and_mismatched_architectures_error(tmp_path):
    a = local_checkpoint(str(save(tiny_model("llama", seed=0), tmp_path / "a")))
    drift = parameter_drift(a, a)
    assert not drift.up.any() and not drift.down.any() and not drift.score.any()
    assert np.all(drift.normalised_rank == 0.5)  # every neuron ties: no neuron stands out
    report = drift_report(drift, np.array([3, 50]))
    assert report["mean_normalised_rank"] == 0.5
    wider = local_checkpoint(str(save(tiny_model("llama", seed=0, intermediate_size=64), tmp_path / "w")))
    with pytest.raises(ModelMismatchError, match="not the same architecture"):
        parameter_drift(a, wider)
    gpt2 = local_checkpoint(str(save(tiny_model("gpt2", seed=0), tmp_path / "g")))
    with pytest.raises(ModelMismatchError, match="not the same architecture"):
        parameter_drift(a, gpt2)


def _mlp_only_checkpoint(folder: Path, seed: int, layers: int, d_model: int, d_ff: int) -> int:
    """A llama checkpoint holding only FFN weights (all drift reads), written tensor by tensor."""
    folder.mkdir()
    tiny_config("llama", hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=layers).save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for name, shape in (("up_proj", (d_ff, d_model)), ("down_proj", (d_model, d_ff))):
            tensors[f"model.layers.{layer}.mlp.{name}.weight"] = torch.randn(shape, generator=g)
    save_file(tensors, str(folder / "model.safetensors"))
    return sum(t.numel() * 4 for t in tensors.values())


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


def test_drift_reads_block_by_block_without_building_a_model(tmp_path, monkeypatch):
    import transformers

    size = _mlp_only_checkpoint(tmp_path / "a", 0, layers=8, d_model=512, d_ff=2048)
    _mlp_only_checkpoint(tmp_path / "b", 1, layers=8, d_model=512, d_ff=2048)
    a, b = local_checkpoint(str(tmp_path / "a")), local_checkpoint(str(tmp_path / "b"))

    def no_models(*args, **kwargs):
        raise AssertionError("drift instantiated a model")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", no_models)
    baseline, peak, done = _rss_anon(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        drift = parameter_drift(a, b, chunk_elements=1 << 18)
    finally:
        done.set()
        sampler.join()
    assert drift.up.shape == (8 * 2048,) and 0.5 < drift.up.mean() < 1.5  # independent random rows: cos ~ 0
    # each checkpoint holds 64 MiB of FFN weights; reading block by block stays far below even one of them
    assert peak[0] - baseline < size / 4, f"peak anonymous memory grew by {(peak[0] - baseline) / 2**20:.0f} MiB"


# ================================================================================ backward transfer
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An 'instruct' tiny llama with a located probe, and a 'base' = the same model slightly perturbed."""
    tmp = tmp_path_factory.mktemp("origin")
    model = tiny_model("llama", seed=0)
    model.save_pretrained(tmp / "instruct")
    tiny_tokenizer().save_pretrained(tmp / "instruct")
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    model.save_pretrained(tmp / "base")
    tiny_tokenizer().save_pretrained(tmp / "base")
    instruct = load_model(str(tmp / "instruct"), device="cpu")
    base = load_model(str(tmp / "base"), device="cpu")
    synthetic_collect(tmp / "icollect", instruct)
    located = locate(instruct, tmp / "icollect", tmp / "locate", LocateSettings(random_draws=3, bootstrap=100, n_C=8),
                     progress=False)
    synthetic_collect(tmp / "bcollect", base, n_per_split=(20, 10, 20), seed=1, fabricated=0)
    result = origin(tmp / "locate" / "probe.safetensors", tmp / "out", base=base, instruct=str(tmp / "instruct"),
                    base_responses=tmp / "bcollect", settings=OriginSettings(bootstrap=200), progress=False)
    return SimpleNamespace(tmp=tmp, instruct=instruct, base=base, located=located, result=result)


def test_backward_transfer_end_to_end(pair):
    instruct, base, located, result = pair.instruct, pair.base, pair.located, pair.result
    bt = result.report["backward_transfer"]
    assert bt["n"] == 50 and bt["n_hallucinated"] == 25  # every selected base response (all splits)
    assert bt["auroc"] > 0.8  # a small perturbation: the probe's signal transfers
    lo, hi = bt["auroc_ci95"]
    assert lo <= bt["auroc"] <= hi
    assert bt["test_split"]["n"] == 20
    # controls fit as locate's baseline: same draws, refit on the instruct training rows
    assert bt["random_draws"] == 3 and len(bt["random_auroc_per_draw"]) == 3
    assert bt["random_auroc_min"] <= bt["random_auroc_mean"] <= bt["random_auroc_max"]
    assert bt["random_auroc_mean"] < bt["auroc"] - 0.1
    assert bt["h_neurons"] == located.neurons["count"] > 0
    assert 0 <= bt["h_neurons_only_auroc_ci95"][0] <= bt["h_neurons_only_auroc"] <= bt["h_neurons_only_auroc_ci95"][1]
    assert bt["instruct_test"]["probe_auroc"] == located.report["test"]["probe"]["auroc"]
    assert result.report["model"]["weights_fingerprint"] == instruct.fingerprint
    assert result.report["base_model"]["weights_fingerprint"] == base.fingerprint


def test_transfer_controls_are_locates_random_baseline(pair):
    """Applied to the instruct model's own test split, the controls reproduce locate.json's numbers exactly:
    the same random neuron sets, refit the same way on the same training rows."""
    from editor.locate.features import FeatureStore
    from editor.locate.origin import _transfer_controls
    from editor.locate.stage import load_probe

    tmp, located = pair.tmp, pair.located
    records = [json.loads(x) for x in (tmp / "icollect" / "responses.jsonl").read_text().splitlines()]
    test = [r for r in records if r["split"] == "test" and not r["fabricated"] and r["selected"]]
    x = FeatureStore.open(tmp / "locate" / "features").load([r["id"] for r in test], "answer")
    y = np.array([r["hallucinated"] for r in test])
    probe, meta = load_probe(tmp / "locate" / "probe.safetensors")
    controls = _transfer_controls(probe, meta, x, y, tmp / "locate", None, OriginSettings(bootstrap=100))
    expected = located.report["test"]
    assert controls["random_auroc_per_draw"] == pytest.approx([d["auroc"] for d in expected["random"]["per_draw"]])
    assert controls["h_neurons_only_auroc"] == pytest.approx(expected["h_neurons_only"]["auroc"])


def test_transferred_probe_scores_equal_the_detector_on_the_base_model(pair):
    """The unchanged probe on stored base features = the run-time detector forced onto the base model."""
    from editor.locate.detect import Detector
    from editor.locate.features import FeatureStore
    from editor.locate.stage import load_probe

    tmp, base = pair.tmp, pair.base
    records = [json.loads(x) for x in (tmp / "bcollect" / "responses.jsonl").read_text().splitlines()][:6]
    detector = Detector(base, str(tmp / "locate" / "probe.safetensors"), force=True)
    probe, _ = load_probe(tmp / "locate" / "probe.safetensors")
    stored = probe.scores(FeatureStore.open(tmp / "out" / "features").load([r["id"] for r in records], "answer"))
    for (rid, det), logit in zip(detector.score_records(records), stored):
        assert det.logit == pytest.approx(float(logit), abs=1e-4)


def test_origin_drift_block_and_plots(pair):
    tmp, located, result = pair.tmp, pair.located, pair.result
    d = result.report["drift"]
    assert d["n_neurons"] == located.neurons["count"] and d["n_total"] == LAYERS * D_FF
    assert 0 <= d["mean_normalised_rank"] <= 1 and 0 <= d["p_value"] <= 1 and d["alternative"].startswith("greater")
    from safetensors.torch import load_file

    stored = load_file(str(tmp / "out" / "drift.safetensors"))
    h = [n["flat_index"] for n in located.neurons["neurons"]]
    assert float(stored["normalised_rank"][h].mean()) == pytest.approx(d["mean_normalised_rank"], abs=1e-6)
    assert set(d["per_layer_mean"]) == {"0", "1"}
    assert result.report["plots"] == ["origin_drift_hist.png", "origin_drift_per_layer.png"]
    for name in result.report["plots"]:
        assert (tmp / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a re-run resumes: the drift file is reused, the numbers are the same
    mtime = (tmp / "out" / "drift.safetensors").stat().st_mtime_ns
    again = origin(tmp / "locate" / "probe.safetensors", tmp / "out", base=str(tmp / "base"),
                   instruct=str(tmp / "instruct"), progress=False)
    assert (tmp / "out" / "drift.safetensors").stat().st_mtime_ns == mtime
    assert again.report["drift"]["mean_normalised_rank"] == d["mean_normalised_rank"]


def test_origin_refuses_wrong_models(pair, tmp_path):
    tmp, instruct = pair.tmp, pair.instruct
    probe = tmp / "locate" / "probe.safetensors"
    with pytest.raises(InputError, match="probe's own weights"):
        origin(probe, tmp_path / "o1", base=instruct, base_responses=tmp / "icollect", progress=False)
    stranger = save(tiny_model("llama", seed=3), tmp_path / "stranger")  # same architecture, other weights
    with pytest.raises(ModelMismatchError, match="not the model the probe was made with"):
        origin(probe, tmp_path / "o2", base=str(tmp / "base"), instruct=str(stranger), progress=False)
    other = save(tiny_model("llama", seed=0, intermediate_size=64), tmp_path / "wide")
    with pytest.raises(ModelMismatchError, match="architecture"):
        origin(probe, tmp_path / "o3", base=str(other), instruct=str(tmp / "instruct"), progress=False)
    with pytest.raises(InputError, match="nothing to do"):
        origin(probe, tmp_path / "o4", base=str(tmp / "base"), progress=False)


def test_cli_origin_on_the_tiny_pair(pair, tmp_path):
    tmp, result = pair.tmp, pair.result
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "editor", "origin", "--probe", str(tmp / "locate" / "probe.safetensors"),
         "--base", str(tmp / "base"), "--instruct", str(tmp / "instruct"), "--base-responses", str(tmp / "bcollect"),
         "--out", str(out), "--bootstrap", "200", "--device", "cpu", "--no-progress"],
        check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "backward transfer" in proc.stdout and "mean normalised rank" in proc.stdout
    doc = json.loads((out / "origin.json").read_text())
    assert doc["format"] == "hneurons.origin/1"
    for key in ("auroc", "auroc_ci95", "n", "n_hallucinated", "random_auroc_mean", "random_auroc_std",
                "random_auroc_min", "random_auroc_max", "h_neurons_only_auroc", "h_neurons_only_auroc_ci95"):
        assert doc["backward_transfer"][key] == result.report["backward_transfer"][key]
    for key in ("convention", "mean_normalised_rank", "p_value", "alternative", "n_neurons", "n_total",
                "per_layer_mean", "top_changed"):
        assert doc["drift"][key] == result.report["drift"][key]
    assert (out / "origin_drift_hist.png").is_file()


def test_cli_origin_needs_something_to_do(pair, tmp_path, capsys):
    from editor.cli import main

    tmp = pair.tmp
    code = main(["origin", "--probe", str(tmp / "locate" / "probe.safetensors"), "--base", str(tmp / "base"),
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "--instruct" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ====================================================================================== integration
@pytest.mark.integration
def test_drift_on_smollm2_against_a_perturbed_bfloat16_copy(tmp_path):
    """Real scale (30 x 1536 = 46,080 neurons), the embedded alias read from its converted folder, against a
    copy stored in bfloat16 (every weight rounded: background drift) whose CHOSEN neurons moved."""
    from safetensors import safe_open

    from editor.locate.origin import ffn_neuron_tensors

    base = local_checkpoint("smollm2-135m-instruct")
    where, tensors = ffn_neuron_tensors(base)
    chosen = {(3, 100), (17, 5), (29, 1535), (29, 0)}
    g = torch.Generator().manual_seed(0)
    copy = {}
    with safe_open(str(base.folder / where[tensors[0][0].name]), framework="pt") as handle:
        for layer, (up, down) in tensors.items():
            u, d = handle.get_tensor(up.name), handle.get_tensor(down.name)  # [1536, 576], [576, 1536]
            for lay, j in chosen:
                if lay == layer:
                    u[j] += 0.5 * u[j].abs().mean() * torch.randn(u.shape[1], generator=g)
                    d[:, j] += 0.5 * d[:, j].abs().mean() * torch.randn(d.shape[0], generator=g)
            copy[up.name], copy[down.name] = u.bfloat16(), d.bfloat16()
    (tmp_path / "copy").mkdir()
    base.config.save_pretrained(tmp_path / "copy")
    save_file(copy, str(tmp_path / "copy" / "model.safetensors"))
    del copy
    drift = parameter_drift(base, local_checkpoint(str(tmp_path / "copy")))
    flat = {layer * 1536 + j for layer, j in chosen}
    assert drift.score.size == 46080
    assert set(np.argsort(-drift.score)[:len(flat)].tolist()) == flat
    assert drift.up.mean() < 1e-4  # bf16 rounding alone barely moves a neuron
    report = drift_report(drift, np.array(sorted(flat)))
    assert report["mean_normalised_rank"] < 1e-4 and report["p_value_changed_more"] < 1e-10
