"""The abstention edit (`hneurons edit --mode abstain`, editor/edit/abstain.py; issue 18): only the neuron set's own
columns / rows change, the LoRA form reproduces the trained model, a planted abstention rule is learned by the
neurons that carry it and not by a matched random set, and a stopped run resumes to the same edit.

Every model here is tiny and random (tests/tinymodels.py). The planted model is a one-layer Llama whose last
hidden dimension u is a private channel: no token embedding, attention value or read vector touches it except
the marker token's embedding, one attention head that carries it forward (uniform attention: q = k = 0) and the
gates of the planted neurons H, which read u alone. So on a prompt with the marker the H-Neurons fire (their
up rows read the current token, so their activations differ per position) and on a prompt without it they are
exactly 0, while every other neuron sees the two kinds of prompts alike (up to the RMS norm's few per cent).
H's down columns start at 0 (the marker does nothing until trained)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinymodels import tiny_model, tiny_tokenizer

from editor.cli import main as cli_main
from editor.edit.abstain import abstain_edit
from editor.edit.abstain_data import answer_tokens, load_training_data
from editor.edit.abstain_delta import applied, load_delta
from editor.edit.abstain_train import target_scores
from editor.edit.settings import AbstainSettings
from editor.edit.stage import edit_model
from editor.errors import InputError, ModelMismatchError, OutputExistsError
from editor.formats import ABSTAIN_DELTA, EDIT_MANIFEST
from editor.model.loading import load_model
from editor.model.neuron_set import matched_random_pairs

MARK, PLAIN = "~", "?"  # the marker replaces the question mark at the end of a 'wrong' question
NEWLINE = 202  # the tiny tokenizer's "\n": the end of a base-prompted answer
H = [(0, j) for j in range(16)]
PROMPT = {"chat": False, "instruction": "", "system": None, "base_template": "{question}"}
FAST = {"kl_weight": 0.0, "epochs": 20, "lr": 5e-2, "batch_size": 8, "patience": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small passes run faster on one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("abstain")


# ---------------------------------------------------------------------------------------------- helpers
def plant(model, tok, neurons=H, c=0.15, carried=3.0, gain=4.0):
    """Give ``neurons`` (layer 0) the marker signal, alone (module docstring)."""
    u = model.config.hidden_size - 1
    marker, plain = tok.convert_tokens_to_ids(MARK), tok.convert_tokens_to_ids(PLAIN)
    index = torch.tensor([j for _, j in neurons])
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, u] = 0
        emb[marker] = emb[plain]
        emb[marker, u] = c
        attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        v, o = attn.v_proj.weight, attn.o_proj.weight
        v[:, u] = 0
        v[0] = 0
        v[0, u] = 1.0
        o[u] = 0
        for head in range(model.config.num_attention_heads // model.config.num_key_value_heads):
            o[:, head * model.config.head_dim] = 0  # the heads that read kv head 0's first dimension
        o[u, 0] = carried
        mlp.gate_proj.weight[:, u] = 0
        mlp.up_proj.weight[:, u] = 0
        mlp.gate_proj.weight[index] = 0
        mlp.gate_proj.weight[index, u] = gain
        mlp.down_proj.weight[:, index] = 0
        model.lm_head.weight[:, u] = 0
    return model


def question(i: int, marked: bool) -> str:
    return f"What is the capital of land {i}{MARK if marked else PLAIN}"


def greedy_answer(lm, ids, n=3, banned=(NEWLINE, 290)) -> list[int]:
    """The model's own greedy answer (newline and ' I' banned, so that it is a non-empty non-abstention)."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = lm.model(torch.tensor([out])).logits[0, -1]
            logits[list(banned)] = -1e9
            out.append(int(logits.argmax()))
    return out[len(ids):]


def write_collect(folder: Path, lm, sizes=(24, 8, 8), wrong=lambda i, marked: marked, mixed=()) -> Path:
    """A finished collect folder as `hneurons collect` writes it, of marked ('wrong') and unmarked ('right')
    questions, base-prompted with the template "{question}"; ``mixed`` ids are recorded as mixed."""
    tok = lm.tokenizer
    records = []
    for offset, (split, n) in zip((100, 200, 300), zip(("train", "validation", "test"), sizes)):
        for i in range(n):
            for marked in (True, False):
                q = question(offset + i, marked)
                ids = tok(q)["input_ids"]
                answer = greedy_answer(lm, ids)
                record_id = f"{split}-{i}-{int(marked)}"
                is_wrong = wrong(i, marked)
                consistency = "mixed" if record_id in mixed else "wrong" if is_wrong else "correct"
                n_ids = len(ids)
                rep = {"text": tok.decode(answer), "count": 1, "input_ids": ids + answer, "prompt_len": n_ids,
                       "response_start": n_ids, "response_end": n_ids + len(answer), "answer_start": n_ids,
                       "answer_end": n_ids + len(answer), "answer_span": "response"}
                records.append({"id": record_id, "split": split, "question": q, "answers": ["Paris"],
                                "relation": "capital", "entity": str(i), "fabricated": False, "prompt": q,
                                "greedy": {"text": rep["text"], "n_tokens": len(answer),
                                           "label": "wrong" if is_wrong else "correct", "truncated": False},
                                "samples": [], "n_samples": 0, "early_stopped": False, "consistency": consistency,
                                "hallucinated": None if consistency == "mixed" else int(is_wrong),
                                "selected": consistency != "mixed",
                                "representative": None if consistency == "mixed" else rep})
    folder.mkdir(parents=True)
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "collect.json").write_text(json.dumps({"format": "hneurons.collect/1", "model": lm.identity(),
                                                     "prompt": PROMPT, "data": {}, "sampling": {}, "counts": {}}))
    return folder


def source(workdir: Path, name: str, model) -> object:
    folder = workdir / f"src-{name}"
    model.save_pretrained(folder)
    tiny_tokenizer(chat=False).save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def planted_source(workdir: Path) -> tuple[object, Path]:
    """The one-layer llama with the planted marker signal (module docstring), loaded, and its collect folder."""
    lm = source(workdir, "planted", plant(tiny_model("llama", num_hidden_layers=1), tiny_tokenizer(chat=False)))
    return lm, write_collect(workdir / "collect-planted", lm)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def abstains(lm, out: Path, prompts: list[str]) -> torch.Tensor:
    """Whether greedy decoding of the edited model gives the abstention sentence (teacher-forced, exact)."""
    delta, strength = load_delta(out / ABSTAIN_DELTA, lm.model)
    target = tuple(json.loads((out / EDIT_MANIFEST).read_text())["abstain"]["data"]["abstain_target_ids"])
    rows = [(lm.tokenizer(p)["input_ids"], target) for p in prompts]
    with applied(lm.model, delta, strength), torch.no_grad():
        return target_scores(lm.model, rows, 0, "cpu")[2]


TEST_PROMPTS = [(question(400 + i, m), m) for i in range(16) for m in (True, False)]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def planted(workdir):
    return planted_source(workdir)


@pytest.fixture(scope="module")
def planted_runs(planted, workdir):
    """The planted model trained on H and on a matched random set, the same way; seconds each."""
    lm, collect = planted
    before = state(lm.model)
    runs = {}
    for name, pairs in (("H", H), ("random", matched_random_pairs(H, lm.d_ff, seed=1))):
        began = time.time()
        out, manifest = abstain_edit(lm, pairs, workdir / f"planted-{name}", collect, progress=False,
                                     settings=AbstainSettings(**FAST),
                                     edit={"verify_prompts": [question(900, True), question(901, False)]})
        runs[name] = (out, manifest, time.time() - began)
    after = state(lm.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "training must leave the loaded model unchanged"
    return runs


ARCHS = {"llama": ["gate", "up", "down"], "gpt2": ["up", "down"], "phi3": ["gate", "up", "down"]}


@pytest.fixture(scope="module")
def arch_runs(workdir):
    """Unplanted tiny models of three layouts (gated, Conv1D, fused gate_up), every part trained briefly."""
    runs = {}
    for model_type, parts in ARCHS.items():
        lm = source(workdir, model_type, tiny_model(model_type))
        collect = write_collect(workdir / f"collect-{model_type}", lm, sizes=(8, 4, 2))
        before = state(lm.model)
        neurons = [(0, 3), (0, 17), (1, 5), (1, 40), (1, 41)]
        out, manifest = abstain_edit(lm, neurons, workdir / f"arch-{model_type}", collect, progress=False,
                                     settings=AbstainSettings(epochs=2, lr=5e-2, train=parts, kl_max_prompts=8,
                                                              strengths=[0.5, 1.0]))
        runs[model_type] = (lm, out, manifest, before, neurons)
    return runs


# ------------------------------------------------------------------------------------------------- tests
def test_a_planted_abstention_rule_is_learned_by_its_neurons_and_not_by_a_matched_random_set(planted, planted_runs):
    lm, _ = planted
    marked = torch.tensor([m for _, m in TEST_PROMPTS])
    accuracy = {}
    for name, (out, manifest, seconds) in planted_runs.items():
        said = abstains(lm, out, [p for p, _ in TEST_PROMPTS])
        accuracy[name] = float((said == marked).float().mean())
        assert seconds < 60, f"{name}: the planted training took {seconds:.0f} s"
    assert accuracy["H"] >= 0.9, accuracy
    assert accuracy["random"] <= accuracy["H"] - 0.3, accuracy
    # the written checkpoint, loaded with plain transformers, generates the sentence on marked prompts only
    from transformers import AutoModelForCausalLM

    out = planted_runs["H"][0]
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    tok = lm.tokenizer
    for text, is_marked in TEST_PROMPTS[:4]:
        ids = torch.tensor([tok(text)["input_ids"]])
        said = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, ids.shape[1]:])
        assert said.startswith(" I don't know.\n") == is_marked, (text, said)
    # the validation choice is recorded: abstains on the wrong questions, not on the right ones
    chosen = planted_runs["H"][1]["abstain"]["strength"]["validation"]
    assert chosen["abstain_rate_wrong"] >= 0.9 and chosen["abstain_rate_right"] == 0.0


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_only_the_neurons_columns_and_rows_change_in_the_written_checkpoint(arch_runs, model_type):
    lm, out, manifest, before, neurons = arch_runs[model_type]
    after = state(lm.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the loaded model must not change"
    src = load_file(str(Path(lm.folder) / "model.safetensors"))
    written = load_file(str(out / "model" / "model.safetensors"))
    assert sorted(src) == sorted(written)
    arch, d_ff = lm.arch, lm.d_ff
    changed = set()
    for name in src:
        if torch.equal(src[name], written[name]):
            continue
        changed.add(name)
        diff = (src[name] != written[name])
        part = "down" if arch.down_proj in name else "up"
        neuron_axis = {("down", False): 1, ("down", True): 0, ("up", False): 0, ("up", True): 1}[(part, arch.conv1d)]
        rows = diff.any(dim=1 - neuron_axis).nonzero().flatten().tolist()
        layer = int(name.removeprefix(arch.layers + ".").split(".")[0])
        mine = {j for l, j in neurons if l == layer}
        allowed = mine if part == "down" or not arch.fused_gate_up else mine | {d_ff + j for j in mine}
        assert set(rows) <= allowed, (name, rows, allowed)
    expected = set()
    for layer in {l for l, _ in neurons}:
        for part in ARCHS[model_type]:
            path = {"down": arch.down_proj, "up": arch.up_proj, "gate": arch.gate_proj or arch.up_proj}[part]
            expected.add(f"{arch.layers}.{layer}.{path}.weight")
    assert changed == expected
    weights = manifest["verification"]["weights"]
    assert weights["passed"] and weights["tensors"]["differing"] == [] and weights["max_abs_diff"]["checkpoint"] <= 1e-4
    assert sorted(weights["tensors"]["tensors_changed"]) == sorted(expected)
    files = json.loads((out / "model" / EDIT_MANIFEST).read_text())["files"]
    assert "model.safetensors" in files and "neurons.json" in files


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_the_lora_adapter_reproduces_the_trained_model(arch_runs, model_type):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm, out, manifest, _, neurons = arch_runs[model_type]
    delta, strength = load_delta(out / ABSTAIN_DELTA, lm.model)
    assert strength == manifest["abstain"]["strength"]["chosen"]
    ids = torch.tensor([lm.tokenizer("What is the capital of land 7? I don't know.")["input_ids"]])
    with applied(lm.model, delta, strength), torch.no_grad():
        trained = lm.model(input_ids=ids).logits
    with torch.no_grad():
        untouched = lm.model(input_ids=ids).logits
    assert (trained - untouched).abs().max() > 1e-3, "the edit must change the model"
    fresh = AutoModelForCausalLM.from_pretrained(lm.folder, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(fresh, str(out / "adapter-lora")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - trained).abs().max() <= 1e-4
        merged = peft_model.merge_and_unload()
        assert (merged(input_ids=ids).logits - trained).abs().max() <= 1e-4
    config = json.loads((out / "adapter-lora" / "adapter_config.json").read_text())
    per_layer = {layer: sum(1 for l, _ in neurons if l == layer) for layer, _ in neurons}
    arch = lm.arch
    for name, rank in config["rank_pattern"].items():
        layer = int(name.removeprefix(arch.layers + ".").split(".")[0])
        fused = arch.fused_gate_up and name.endswith(arch.up_proj)
        assert rank == per_layer[layer] * (2 if fused else 1) and config["alpha_pattern"][name] == rank
    assert config["lora_dropout"] == 0.0
    tensors = load_file(str(out / "adapter-lora" / "adapter_model.safetensors"))
    down = f"base_model.model.{arch.down_proj_path(1)}.lora_A.weight"
    assert torch.equal(tensors[down].sum(0).nonzero().flatten(), torch.tensor([5, 40, 41]))  # one-hot rows
    assert manifest["verification"]["lora"]["max_abs_diff"]["adapter"] <= 1e-4


def test_a_stopped_run_resumes_to_the_same_edit(planted, workdir):
    lm, collect = planted
    settings = AbstainSettings(epochs=3, lr=5e-2, batch_size=8, patience=0, kl_weight=0.5, kl_max_prompts=6,
                               forms=["weights"])
    neurons = H[:8] + matched_random_pairs(H[:8], lm.d_ff, seed=2)  # the random half is active on neutral prompts

    class Killed(Exception):
        pass

    def stop(epoch, history):
        if epoch == 1:
            raise Killed

    whole_out, whole = abstain_edit(lm, neurons, workdir / "resume-whole", collect, settings=settings, progress=False)
    with pytest.raises(Killed):
        abstain_edit(lm, neurons, workdir / "resume-stopped", collect, settings=settings, progress=False, on_epoch=stop)
    assert (workdir / "resume-stopped" / "training" / "state.pt").is_file()
    assert not (workdir / "resume-stopped" / EDIT_MANIFEST).exists()
    with pytest.raises(OutputExistsError, match="other data or settings"):  # another run's state is not taken over
        abstain_edit(lm, neurons, workdir / "resume-stopped", collect, settings=settings.model_copy(update={"lr": 1e-2}),
                     progress=False)
    out, resumed = abstain_edit(lm, neurons, workdir / "resume-stopped", collect, settings=settings, progress=False)
    assert resumed["abstain"]["training"]["resumed_from_epoch"] == 1
    assert whole["abstain"]["training"]["resumed_from_epoch"] is None

    def same(a: Path, b: Path, name: str) -> None:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x), name

    same(whole_out, out, ABSTAIN_DELTA)
    same(whole_out, out, "model/model.safetensors")
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in whole["abstain"]["training"]["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"}
                     for row in resumed["abstain"]["training"]["history"]]
    assert whole["abstain"]["strength"] == resumed["abstain"]["strength"]
    assert whole["abstain"]["training"]["history"][0]["train_kl"] > 0


def test_the_training_data_follows_the_collect_labels_and_prompts(planted, workdir):
    lm, _ = planted
    collect = write_collect(workdir / "collect-data", lm, sizes=(4, 2, 3), mixed={"train-0-1"})
    data, _ = load_training_data(collect, lm, AbstainSettings())
    record = data.record()
    # train: 4 marked (wrong -> abstain) + 3 unmarked right (the mixed one is left out); test never read
    assert record["splits"]["train"] == {**record["splits"]["train"], "abstain": 3, "answer": 4, "mixed": 0}
    assert record["splits"]["validation"]["examples"] == 4 and {e.split for e in data.train} == {"train"}
    assert data.abstain_target[-1] == NEWLINE and data.targets_from == "base template"
    assert lm.tokenizer.decode(list(data.abstain_target)) == " I don't know.\n"
    answer = next(e for e in data.train if e.kind == "answer")
    assert answer.target[-1] == NEWLINE and len(answer.target) == 4  # the 3 answer tokens + the end
    assert answer.prompt == tuple(lm.tokenizer(question(100 + int(answer.id.split("-")[1]), False))["input_ids"])
    with_mixed, _ = load_training_data(collect, lm, AbstainSettings(mixed_weight=0.5))
    mixed = [e for e in with_mixed.train if e.consistency == "mixed"]
    assert len(mixed) == 1 and mixed[0].weight == 0.5 and mixed[0].target == data.abstain_target
    # a chat tokenizer: the sentence's tokens and the template's end of turn
    chat = tiny_tokenizer(chat=True)
    from editor.data.prompting import PromptStyle

    content, end, how = answer_tokens(chat, PromptStyle(), "I don't know.", {2})
    assert how == "chat template" and end == [2] and chat.decode(content) == "I don't know."
    # prompts that this tokenizer does not rebuild, and answers of other weights, are refused
    broken = workdir / "collect-broken"
    broken.mkdir()
    lines = (collect / "responses.jsonl").read_text().splitlines()
    right = json.loads(lines[1])  # train-0-0: a consistently right question, with its stored prompt tokens
    right["representative"]["input_ids"][0] += 1
    (broken / "responses.jsonl").write_text("\n".join([lines[0], json.dumps(right), *lines[2:]]) + "\n")
    (broken / "collect.json").write_text((collect / "collect.json").read_text())
    with pytest.raises(InputError, match="not the one collect used"):
        load_training_data(broken, lm, AbstainSettings())
    other = json.loads((collect / "collect.json").read_text())
    other["model"]["weights_fingerprint"] = "0" * 16
    (broken / "collect.json").write_text(json.dumps(other))
    (broken / "responses.jsonl").write_text((collect / "responses.jsonl").read_text())
    with pytest.raises(ModelMismatchError, match="other weights"):
        load_training_data(broken, lm, AbstainSettings())
    assert load_training_data(broken, lm, AbstainSettings(), force=True)[1]["recorded"]["weights_fingerprint"]


def test_the_command_line_and_the_recipe_section(planted, workdir, capsys):
    lm, collect = planted
    neurons = workdir / "neurons-cli.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": l, "index": j} for l, j in H]}))
    out = workdir / "cli-abstain"
    argv = ["edit", "--mode", "abstain", "--model", lm.folder, "--neurons", str(neurons), "--responses", str(collect),
            "--out", str(out), "--device", "cpu", "--epochs", "2", "--kl-weight", "0", "--form", "lora",
            "--strengths", "1,1.5"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained 512 parameters (down) of 16 neurons" in printed and "adapter-lora" in printed
    manifest = json.loads((out / EDIT_MANIFEST).read_text())
    assert manifest["mode"] == "abstain" and list(manifest["forms"]) == ["lora"]
    assert [r["strength"] for r in manifest["abstain"]["strength"]["table"]] == [1.0, 1.5]
    assert cli_main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert cli_main(["edit", "--model", lm.folder, "--neurons", str(neurons), "--responses", str(collect),
                     "--out", str(workdir / "x")]) == 2
    assert "belong to --mode abstain" in capsys.readouterr().err
    with pytest.raises(InputError, match="belong to mode abstain"):
        edit_model(lm, neurons, 0.0, "weights", workdir / "y", epochs=2)
    with pytest.raises(InputError, match="give it alone"):
        edit_model(lm, neurons, modes=["abstain", "weights"], out=workdir / "y")
    # the recipe: an abstain section adds the stage; abstain is not an edit mode there
    from editor.errors import RecipeError
    from editor.pipeline.recipe import load_recipe
    from editor.pipeline.run import active_stages, stage_settings

    recipe = workdir / "recipe.yaml"
    recipe.write_text(f"model: {{id: {lm.folder}}}\noutput: {workdir / 'run'}\nabstain: {{epochs: 2, train: [up, down]}}\n")
    loaded = load_recipe(recipe)
    assert active_stages(loaded)[active_stages(loaded).index("edit") + 1] == "abstain"
    assert stage_settings(loaded, "abstain")["abstain"]["train"] == ["up", "down"]
    recipe.write_text(f"model: {{id: {lm.folder}}}\noutput: {workdir / 'run'}\nedit: {{modes: [abstain]}}\n")
    with pytest.raises(RecipeError, match="abstain section"):
        load_recipe(recipe)
    # the abstention comparison: after abstain, its own key; needs the abstain section and the facts task
    recipe.write_text(f"model: {{id: {lm.folder}}}\noutput: {workdir / 'run'}\nabstain: {{}}\n"
                      f"abstention: {{random_sets: 2}}\n")
    stages = active_stages(load_recipe(recipe))
    assert stages[stages.index("abstain") + 1] == "abstention"
    assert stage_settings(load_recipe(recipe), "abstention")["abstention"]["random_sets"] == 2
    from editor.pipeline.run import RunContext, abstain_neurons

    ctx = RunContext(load_recipe(recipe), recipe, workdir / "run")
    assert abstain_neurons(ctx) == str(workdir / "run" / "locate" / "neurons.json")
    recipe.write_text(f"model: {{id: {lm.folder}}}\noutput: {workdir / 'run'}\nabstain: {{neuron_set: x5}}\n")
    ctx = RunContext(load_recipe(recipe), recipe, workdir / "run")
    assert abstain_neurons(ctx) == f"{workdir / 'run' / 'locate' / 'neurons_path.json'}#x5"  # a named path set
    recipe.write_text(f"model: {{id: {lm.folder}}}\noutput: {workdir / 'run'}\nabstention: {{}}\n")
    with pytest.raises(RecipeError, match="give the abstain section too"):
        load_recipe(recipe)
    recipe.write_text(f"model: {{id: {lm.folder}}}\noutput: {workdir / 'run'}\nabstain: {{}}\n"
                      f"abstention: {{tasks: [hneurons_nonexist]}}\n")
    with pytest.raises(RecipeError, match="must include hneurons_facts"):
        load_recipe(recipe)


def test_a_killed_command_resumes_to_the_same_edit(planted, planted_runs, workdir):
    """`hneurons edit --mode abstain` SIGKILLed once its first epoch is saved, then run again: the edit of the
    uninterrupted run (the planted fixture's, trained in this process with the same settings)."""
    from cli_processes import kill_when

    lm, collect = planted
    neurons = workdir / "neurons-kill.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": l, "index": j} for l, j in H]}))
    out = workdir / "killed"
    argv = ["edit", "--mode", "abstain", "--model", lm.folder, "--neurons", str(neurons), "--responses", str(collect),
            "--out", str(out), "--device", "cpu", "--kl-weight", "0", "--epochs", str(FAST["epochs"]), "--lr",
            str(FAST["lr"]), "--batch-size", "8", "--patience", "0"]
    assert kill_when(argv, lambda: (out / "training" / "state.pt").is_file()) is None, "finished before the kill"
    assert not (out / EDIT_MANIFEST).exists()
    assert cli_main(argv) == 0
    manifest = json.loads((out / EDIT_MANIFEST).read_text())
    assert 1 <= manifest["abstain"]["training"]["resumed_from_epoch"] < FAST["epochs"]
    x, y = load_file(str(out / ABSTAIN_DELTA)), load_file(str(planted_runs["H"][0] / ABSTAIN_DELTA))
    assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_a_bfloat16_model_trains_and_is_written_in_bfloat16(workdir):
    """bfloat16, the dtype of the GPU path, here on the CPU: the float32 deltas train on a bfloat16 model, the
    checkpoint is written in bfloat16 with only the neurons' down columns changed (every other tensor
    bit-identical), and both forms passed the verification against the in-memory trained model before being
    kept; the loaded model is left unchanged."""
    tok = tiny_tokenizer(chat=False)
    folder = workdir / "src-bf16"
    tiny_model("llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    lm = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert lm.model.dtype == torch.bfloat16
    collect = write_collect(workdir / "collect-bf16", lm, sizes=(8, 4, 2))
    before = state(lm.model)
    neurons = [(0, 3), (1, 5), (1, 40)]
    out, manifest = abstain_edit(lm, neurons, workdir / "bf16", collect, progress=False,
                                 settings=AbstainSettings(epochs=2, lr=5e-2, kl_max_prompts=4, strengths=[1.0]))
    assert all(torch.equal(before[k], v) for k, v in state(lm.model).items())
    assert manifest["abstain"]["training"]["history"][0]["train_loss"] > 0
    src = load_file(str(folder / "model.safetensors"))
    written = load_file(str(out / "model" / "model.safetensors"))
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    changed = {name for name in src if not torch.equal(src[name].to(torch.bfloat16), written[name])}
    assert changed == {f"{lm.arch.layers}.{layer}.{lm.arch.down_proj}.weight" for layer in (0, 1)}
    for layer in (0, 1):
        name = f"{lm.arch.layers}.{layer}.{lm.arch.down_proj}.weight"
        columns = (src[name].to(torch.bfloat16) != written[name]).any(dim=0).nonzero().flatten().tolist()
        assert set(columns) <= {j for l, j in neurons if l == layer} and columns
    assert manifest["verification"]["weights"]["passed"] and manifest["verification"]["lora"]["passed"]
