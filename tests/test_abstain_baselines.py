"""The baselines of the abstention edit (issue 18, item 4), trained and written like the edit itself
(editor/edit/abstain.py): the matched random neuron control (``random_seed``, ``--random-control SEED``) and a
standard LoRA on every down-projection of about the neuron edit's parameter count (``params: lora``,
``--abstain-params lora``, editor/edit/abstain_lora.py). Tiny random models (tests/tinymodels.py) and the planted
model and collect folders of tests/test_abstain.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_abstain import FAST, H, planted_source, question, source, state, write_collect
from tinymodels import tiny_model

from editor.cli import main as cli_main
from editor.edit.abstain import abstain_edit
from editor.edit.abstain_delta import load_delta
from editor.edit.abstain_lora import LoraDelta, matched_rank, per_rank
from editor.edit.abstain_train import load_state
from editor.edit.settings import AbstainSettings
from editor.errors import InputError
from editor.formats import ABSTAIN_DELTA, EDIT_MANIFEST, NEURONS
from editor.model.neuron_set import NeuronSet, matched_random_pairs

NEURONS_2L = [(0, 3), (0, 17), (1, 5), (1, 40), (1, 41)]
QUICK = {"epochs": 2, "lr": 5e-2, "kl_max_prompts": 6, "strengths": [0.5, 1.0]}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small passes run faster on one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("abstain-baselines")


@pytest.fixture(scope="module")
def two_layer(workdir):
    """An unplanted two-layer llama and a small collect folder of it."""
    lm = source(workdir, "llama", tiny_model("llama"))
    return lm, write_collect(workdir / "collect-llama", lm, sizes=(8, 4, 2))


@pytest.fixture(scope="module")
def planted(workdir):
    return planted_source(workdir)


@pytest.fixture(scope="module")
def lora_run(planted, workdir):
    """The LoRA baseline trained on the planted data with the settings of test_abstain's planted runs."""
    lm, collect = planted
    before = state(lm.model)
    out, manifest = abstain_edit(lm, H, workdir / "planted-lora", collect, progress=False,
                                 settings=AbstainSettings(**FAST, params="lora"),
                                 edit={"verify_prompts": [question(900, True), question(901, False)]})
    return lm, out, manifest, before


# ------------------------------------------------------------------------------------- the random control
def test_the_random_control_trains_the_matched_random_set_and_records_it(two_layer, workdir):
    lm, collect = two_layer
    h = NeuronSet.from_pairs(NEURONS_2L)
    drawn = {}
    for seed in (1, 2, 3):
        out, manifest = abstain_edit(lm, NEURONS_2L, workdir / f"random-{seed}", collect, progress=False,
                                     settings=AbstainSettings(**QUICK, random_seed=seed, forms=["lora"]))
        control = NeuronSet.load(out / NEURONS)
        pairs = set(control.neurons)
        assert control.per_layer() == h.per_layer()  # the same count in every layer, exactly
        assert not pairs & set(NEURONS_2L)  # none of the H-Neurons
        assert sorted(pairs) == sorted(matched_random_pairs(NEURONS_2L, lm.d_ff, seed))  # eval's draw
        record = manifest["control"]
        assert record["seed"] == seed and record["control_of"] == h.sha256 and record["sha256"] == control.sha256
        assert record["kind"] == "random" and record["match"] == "per layer" and record["control_of_count"] == 5
        assert manifest["neurons"]["sha256"] == control.sha256 and manifest["neurons"]["count"] == 5
        # what was trained is the drawn set: the delta's indices, and the adapter folder's own neurons.json
        delta, _ = load_delta(out / ABSTAIN_DELTA, lm.model)
        assert {(p.layer, int(j)) for p in delta.parts for j in p.index} == pairs
        assert NeuronSet.load(out / "adapter-lora" / NEURONS).sha256 == control.sha256
        assert json.loads((out / "adapter-lora" / EDIT_MANIFEST).read_text())["control"] == record
        drawn[seed] = pairs
    assert len({frozenset(p) for p in drawn.values()}) == 3  # different seeds, different sets


def test_the_random_control_from_the_command_line(two_layer, workdir, capsys):
    lm, collect = two_layer
    neurons = workdir / "neurons-2l.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": l, "index": j} for l, j in NEURONS_2L]}))
    out = workdir / "cli-random"
    argv = ["edit", "--mode", "abstain", "--model", lm.folder, "--neurons", str(neurons), "--responses", str(collect),
            "--out", str(out), "--device", "cpu", "--epochs", "1", "--kl-max-prompts", "4", "--form", "lora",
            "--random-control", "7"]
    assert cli_main(argv) == 0
    assert "the matched random control, seed 7" in capsys.readouterr().out
    manifest = json.loads((out / EDIT_MANIFEST).read_text())
    assert manifest["control"]["seed"] == 7 and manifest["abstain"]["settings"]["random_seed"] == 7
    assert cli_main([*argv[:-2], "--abstain-params", "lora", "--random-control", "7", "--overwrite"]) == 2
    assert "give one of the two" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- LoRA baseline
def test_the_matched_rank():
    assert matched_rank(40 * 576, (1536 + 576) * 30) == 1  # SmolLM2-135M: rank 1 is already 2.75x
    assert matched_rank(512, 80) == 6  # 480 is closer to 512 than 560
    assert matched_rank(15, 10) == 1 and matched_rank(25, 10) == 2  # ties: the smaller rank
    assert matched_rank(3, 10) == 1 and matched_rank(100, 10) == 10
    with pytest.raises(InputError, match="belongs to the LoRA baseline"):
        AbstainSettings.of(lora_rank=2)


def test_the_lora_baseline_trains_only_its_factors_and_learns(lora_run):
    lm, out, manifest, before = lora_run
    after = state(lm.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the loaded model must not change"
    info = manifest["abstain"]
    lora = info["lora"]
    neuron_count = len(H) * lm.model.config.hidden_size  # 16 W_down columns of d_model 32
    one_rank = lm.d_ff + lm.model.config.hidden_size
    assert lora["neuron_edit_parameters"] == neuron_count and lora["rank"] == matched_rank(neuron_count, one_rank) == 6
    assert info["trainable_parameters"] == lora["parameters"] == 6 * one_rank
    assert lora["ratio_to_neuron_edit"] == pytest.approx(6 * one_rank / neuron_count)
    assert manifest["baseline"] == "lora" and info["train"] == ["lora"] and lora["note"] is None
    assert list(manifest["forms"]) == ["lora"] and manifest["written"]["delta"] is None
    assert not (out / "model").exists() and not (out / ABSTAIN_DELTA).exists()
    # the training objective went down on the planted data, on train and on validation (how much the baseline
    # abstains is what it is measured for, not a property of the code: on this toy it learns the marker slowly)
    history = info["training"]["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert info["training"]["best"]["val_loss"] < 0.9 * history[0]["val_loss"]
    assert info["strength"]["validation"]["abstain_rate_right"] is not None
    # the adapter: LoRA factors of every down-projection and nothing else
    tensors = load_file(str(out / "adapter-lora" / "adapter_model.safetensors"))
    modules = [lm.arch.down_proj_path(i) for i in range(lm.num_layers)]
    assert sorted(tensors) == sorted(f"base_model.model.{m}.lora_{x}.weight" for m in modules for x in "AB")
    config = json.loads((out / "adapter-lora" / "adapter_config.json").read_text())
    assert config["r"] == 6 and config["lora_alpha"] == 6 and sorted(config["target_modules"]) == sorted(modules)
    assert tensors[f"base_model.model.{modules[0]}.lora_A.weight"].shape == (6, lm.d_ff)


def test_the_lora_baseline_adapter_reproduces_the_trained_model(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm, out, manifest, _ = lora_run
    strength = manifest["abstain"]["strength"]["chosen"]
    trained = LoraDelta.for_model(lm.model, lm.arch, manifest["abstain"]["lora"]["rank"], seed=0)
    trained.load_state(load_state(out / "training" / "state.pt")["best_delta"])
    ids = torch.tensor([lm.tokenizer(question(950, True) + " I don't know.")["input_ids"]])
    with trained.applied(lm.model, strength), torch.no_grad():
        expected = lm.model(input_ids=ids).logits
    with torch.no_grad():
        assert (expected - lm.model(input_ids=ids).logits).abs().max() > 1e-3, "the edit must change the model"
    fresh = AutoModelForCausalLM.from_pretrained(lm.folder, dtype=torch.float32)
    source_tensors = load_file(str(lm.folder + "/model.safetensors"))
    peft_model = PeftModel.from_pretrained(fresh, str(out / "adapter-lora")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - expected).abs().max() <= 1e-4
    base = {k: v for k, v in peft_model.get_base_model().state_dict().items() if "lora_" not in k}
    for name, tensor in source_tensors.items():  # the adapter's base: bit-identical to the source
        key = name.replace(f"{lm.arch.down_proj}.weight", f"{lm.arch.down_proj}.base_layer.weight")
        assert torch.equal(base[key], tensor), name
    check = manifest["verification"]["lora"]
    assert check["passed"] and check["max_abs_diff"]["adapter"] <= 1e-4 and check["max_abs_diff"]["adapter_merged"] <= 1e-4


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_the_lora_baseline_on_other_layouts_and_from_the_command_line(model_type, workdir, capsys):
    """Conv1D (fan_in_fan_out) and a fused gate_up model; a given rank; the command line."""
    lm = source(workdir, model_type, tiny_model(model_type))
    collect = write_collect(workdir / f"collect-{model_type}", lm, sizes=(6, 3, 2))
    neurons = workdir / f"neurons-{model_type}.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": l, "index": j} for l, j in NEURONS_2L]}))
    out = workdir / f"cli-lora-{model_type}"
    assert cli_main(["edit", "--mode", "abstain", "--model", lm.folder, "--neurons", str(neurons), "--responses",
                     str(collect), "--out", str(out), "--device", "cpu", "--epochs", "2", "--kl-max-prompts", "4",
                     "--strengths", "1", "--abstain-params", "lora", "--lora-rank", "2"]) == 0
    assert "a LoRA of rank 2 on 2 down-projections" in capsys.readouterr().out
    manifest = json.loads((out / EDIT_MANIFEST).read_text())
    lora = manifest["abstain"]["lora"]
    d_model = lm.model.config.hidden_size
    assert lora["rank"] == 2 and lora["rank_from"].startswith("given")
    assert lora["parameters"] == 2 * per_rank(lm.model, lm.arch) == 2 * 2 * (lm.d_ff + d_model)
    assert lora["neuron_edit_parameters"] == 5 * d_model
    assert manifest["verification"]["lora"]["passed"]
    config = json.loads((out / "adapter-lora" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] == lm.arch.conv1d


def test_rank_one_larger_than_the_neuron_edit_is_said(two_layer, workdir):
    lm, collect = two_layer
    _, manifest = abstain_edit(lm, [(0, 3)], workdir / "lora-small", collect, progress=False,
                               settings=AbstainSettings(**{**QUICK, "epochs": 1}, params="lora"))
    lora = manifest["abstain"]["lora"]
    assert lora["rank"] == 1 and lora["ratio_to_neuron_edit"] == pytest.approx(2 * (48 + 32) / 32)
    assert "rank 1, the smallest, already has 5.00x" in lora["note"]


def test_a_stopped_lora_baseline_resumes_to_the_same_adapter(two_layer, workdir):
    lm, collect = two_layer
    settings = AbstainSettings(**{**QUICK, "epochs": 3, "patience": 0}, params="lora", kl_weight=0.5)

    class Killed(Exception):
        pass

    def stop(epoch, history):
        if epoch == 1:
            raise Killed

    whole_out, _ = abstain_edit(lm, NEURONS_2L, workdir / "lora-whole", collect, settings=settings, progress=False)
    with pytest.raises(Killed):
        abstain_edit(lm, NEURONS_2L, workdir / "lora-stopped", collect, settings=settings, progress=False,
                     on_epoch=stop)
    out, resumed = abstain_edit(lm, NEURONS_2L, workdir / "lora-stopped", collect, settings=settings, progress=False)
    assert resumed["abstain"]["training"]["resumed_from_epoch"] == 1
    x = load_file(str(whole_out / "adapter-lora" / "adapter_model.safetensors"))
    y = load_file(str(out / "adapter-lora" / "adapter_model.safetensors"))
    assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)
