"""The ``hneurons`` lm-eval model class against lm-eval's own ``hf`` class, and the eval results cache.

The class replaces two of ``hf``'s loops (prompt-shared log-likelihoods, compacting greedy decoding); these tests
run both classes on the same requests and require the same numbers (to float rounding) and the same texts, on
tiny random models of two architectures (llama; gemma3 with its sliding-window layers)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from tinymodels import tiny_model, tiny_tokenizer

from editor.collect.sampler import newline_token_ids
from editor.evaluate.lm_eval_model import HneuronsLM, _common_prefix


def _pair(model_type: str):
    model = tiny_model(model_type, seed=3)
    tok = tiny_tokenizer()
    return HFLM(pretrained=model, tokenizer=tok, batch_size=3), HneuronsLM(pretrained=model, tokenizer=tok, batch_size=3)


def _requests(tok) -> list:
    """Contexts with 1-4 choices: multi-token choices sharing a prefix, one-token choices, a lone choice,
    contexts of different lengths in one batch, and two requests with the same context and continuation."""
    contexts = ["What is the capital of France?", "Question: What is the symbol of gold? Answer:",
                "abc", "The currency of Japan is the yen. Lome is the capital of Togo. Respond with the answer only."]
    choices = [[" The capital of France is Paris.", " The capital of France is Lome.", " I don't know."],
               [" A", " Au", " B", " Au"],
               [" d"],
               [" yen", " the yen, I'm not sure", " There is no such country."]]
    out = []
    for ctx, conts in zip(contexts, choices):
        for cont in conts:
            c, t = tok.encode(ctx, add_special_tokens=False), tok.encode(cont, add_special_tokens=False)
            out.append(((ctx, cont), c, t))
    return out


@pytest.mark.parametrize("model_type", ["llama", "gemma3"])
def test_prompt_shared_log_likelihoods_equal_hf_and_run_fewer_tokens(model_type):
    hf, ours = _pair(model_type)
    requests = _requests(ours.tokenizer)
    assert any(len(t) == 1 for _, _, t in requests) and any(len(t) > 3 for _, _, t in requests)
    theirs = hf._loglikelihood_tokens(requests, disable_tqdm=True)
    mine = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    assert len(mine) == len(theirs) == len(requests)
    np.testing.assert_allclose([m[0] for m in mine], [t[0] for t in theirs], atol=1e-4, rtol=0)
    assert [m[1] for m in mine] == [t[1] for t in theirs]
    per_choice = sum(len(c) + len(t) - 1 for _, c, t in requests)
    assert ours.forward_tokens < per_choice  # each context once, shared choice prefixes once


SYSTEM = "<|system|> You are a careful assistant. Answer with the answer only. <|user|> "


@pytest.mark.parametrize("model_type", ["llama", "gemma3"])
def test_a_system_turn_every_prompt_starts_with_is_run_once_and_changes_no_number(model_type, monkeypatch):
    """Chat-template prompts share their system turn: on full-attention caches the class runs it once per
    batch (editor.collect.sampler.prompt_pass) and its log-likelihoods and texts stay hf's; sliding-window
    caches (gemma3) run every prompt whole."""
    from editor.collect import sampler

    hf, ours = _pair(model_type)
    system = ours.tok_encode(SYSTEM)
    requests = [((SYSTEM + c, t), system + ctx, toks) for (c, t), ctx, toks in _requests(ours.tokenizer)]
    mine = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    np.testing.assert_allclose([m[0] for m in mine], [t[0] for t in hf._loglikelihood_tokens(requests, True)],
                               atol=1e-4, rtol=0)
    shared_tokens, ours.forward_tokens = ours.forward_tokens, 0
    monkeypatch.setattr(sampler, "MIN_SHARED_PREFIX", 10**6)  # the same class with the prefix pass switched off
    plain = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    np.testing.assert_allclose([m[0] for m in plain], [m[0] for m in mine], atol=1e-4, rtol=0)
    system, batches = len(ours.tok_encode(SYSTEM)), 2  # 4 contexts in batches of 3
    expected = ours.forward_tokens - (4 - batches) * system if model_type == "llama" else ours.forward_tokens
    assert shared_tokens == expected
    monkeypatch.undo()
    kwargs = {"until": [], "max_gen_toks": 9, "do_sample": False}
    prompts = [SYSTEM + p for p in ["What is the capital of France?", "Hi", "abc d", "The currency of Japan is"]]
    generate = [Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(prompts)]
    assert ours.generate_until(generate, disable_tqdm=True) == hf.generate_until(generate, disable_tqdm=True)


def test_prompt_sharing_can_be_turned_off_and_then_is_hf():
    hf, _ = _pair("llama")
    plain = HneuronsLM(pretrained=hf.model, tokenizer=hf.tokenizer, batch_size=3, prefix_sharing="False")
    requests = _requests(hf.tokenizer)
    assert plain._loglikelihood_tokens(requests, disable_tqdm=True) == hf._loglikelihood_tokens(requests,
                                                                                                disable_tqdm=True)


def test_common_prefix_leaves_every_continuation_a_token():
    assert _common_prefix([[1, 2, 3], [1, 2, 4]]) == [1, 2]
    assert _common_prefix([[1, 2], [1, 2, 3]]) == [1]
    assert _common_prefix([[5, 6, 7]]) == [5, 6]
    assert _common_prefix([[5], [5]]) == []


@pytest.mark.parametrize("model_type", ["llama", "gemma3"])
@pytest.mark.parametrize("gen_batch_size", [64, 2])
def test_compacting_greedy_generation_equals_hf(model_type, gen_batch_size):
    """One batch for all prompts, and (gen_batch_size 2) a batch the next prompts join as rows finish."""
    hf, ours = _pair(model_type)
    ours.gen_batch_size = gen_batch_size
    prompts = ["What is the capital of France?", "Hi", "Question: What is the symbol of gold? Answer:", "abc d",
               "The currency of Japan is"]
    for kwargs in ({"until": [], "max_gen_toks": 9, "do_sample": False},
                   {"until": ["e", "."], "max_gen_toks": 12, "do_sample": False}):
        requests = [Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(prompts)]
        theirs = hf.generate_until(requests, disable_tqdm=True)
        mine = ours.generate_until(requests, disable_tqdm=True)
        assert mine == theirs
        assert any(t for t in theirs)  # the random model does write something


@pytest.mark.parametrize("model_type", ["llama", "gemma3"])
def test_requests_of_several_limits_and_stops_share_one_stream_and_equal_hf(model_type):
    """Tasks of different max_gen_toks and until in one generate_until call (lm-eval sends every task's
    requests together): one decoding stream, each row to its own limit and cut at its own stops, as hf."""
    hf, ours = _pair(model_type)
    ours.gen_batch_size = 3
    prompts = ["What is the capital of France?", "Hi", "Question: What is the symbol of gold? Answer:", "abc d",
               "The currency of Japan is", "Write", "One two three"]
    kinds = [{"until": [], "max_gen_toks": 5}, {"until": ["e", "."], "max_gen_toks": 11},
             {"until": [], "max_gen_toks": 8}]
    requests = [Instance("generate_until", {}, (p, {**kinds[i % 3], "do_sample": False}), i)
                for i, p in enumerate(prompts)]
    theirs = hf.generate_until(requests, disable_tqdm=True)
    assert ours.generate_until(requests, disable_tqdm=True) == theirs
    assert len({len(hf.tok_encode(t)) for t in theirs}) > 1


def test_first_line_documents_stop_at_a_newline_and_judge_the_same_line_as_hf():
    """Base-model prompting marks documents ``stop_at_newline`` (eval/hneurons/utils.py): the class ends those
    rows at their first newline token; hf's class writes on, and the first line (what the judges read) is equal."""
    hf, ours = _pair("llama")
    prompts = ["What is the capital of France?", "Hi", "Question: What is the symbol of gold?\nAnswer:", "abc d"]
    kwargs = {"until": [], "max_gen_toks": 24, "do_sample": False}
    requests = [Instance("generate_until", {"stop_at_newline": True}, (p, dict(kwargs)), i)
                for i, p in enumerate(prompts)]
    written = [t for text in hf.generate_until(requests, disable_tqdm=True) for t in hf.tok_encode(text)]
    common = max(set(written), key=written.count)
    newline = min(newline_token_ids(ours.tokenizer))
    with torch.no_grad():  # the random model writes a newline wherever it wrote its most common token
        ours.model.lm_head.weight[newline] = 1.5 * ours.model.lm_head.weight[common]
    theirs = hf.generate_until(requests, disable_tqdm=True)
    mine = ours.generate_until(requests, disable_tqdm=True)
    assert any("\n" in t for t in theirs)
    assert mine == [t.split("\n", 1)[0] for t in theirs]
    assert not any("\n" in t for t in mine)


def test_generation_config_penalties_fall_back_to_hf():
    hf, ours = _pair("llama")
    assert ours._plain_greedy()
    ours.model.generation_config.repetition_penalty = 1.3
    try:
        assert not ours._plain_greedy()
        requests = [Instance("generate_until", {}, ("What is the capital", {"until": [], "max_gen_toks": 8,
                                                                           "do_sample": False}), 0)]
        assert ours.generate_until(requests, disable_tqdm=True) == hf.generate_until(requests, disable_tqdm=True)
    finally:
        ours.model.generation_config.repetition_penalty = 1.0


# ==================================================================================== the results cache
def test_base_results_are_reused_across_output_folders_and_never_for_other_weights(tmp_path, caplog,
                                                                                   monkeypatch):
    """The unedited model's lm-eval run is stored in the results cache and copied into a second output folder
    without running lm-eval; a checkpoint with one changed down-projection column at the same path (the cheap
    strided fingerprint can miss such a column in a large model; the key hashes every weight) misses it."""
    from test_evaluate import write_task_folder

    from editor.evaluate.lm_eval_run import run_lm_eval
    from editor.evaluate.settings import EvalSettings
    from editor.evaluate.variants import Variant
    from editor.model.loading import load_model

    monkeypatch.setenv("HNEURONS_RESULTS_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    tiny_model("llama", seed=1).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    tasks = write_task_folder(tmp_path / "tasks")
    settings = EvalSettings.of(tasks=["tiny_mc", "tiny_gen"], include_paths=[tasks], batch_size=4, kl=False)
    lm = load_model(str(ckpt), device="cpu")
    first = run_lm_eval(Variant("base", lm), settings, tmp_path / "a")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    caplog.set_level(logging.INFO, logger="editor.evaluate.lm_eval_run")
    second = run_lm_eval(Variant("base", lm), settings, tmp_path / "b")
    assert "results cache" in caplog.text and "running lm-eval" not in caplog.text
    assert second.results["results"] == first.results["results"]
    assert (tmp_path / "b" / "samples_tiny_mc.jsonl").read_bytes() == (tmp_path / "a" / "samples_tiny_mc.jsonl").read_bytes()

    edited = load_model(str(ckpt), device="cpu")
    with torch.no_grad():
        edited.model.model.layers[0].mlp.down_proj.weight[:, 1] *= 0.5
    assert edited.weights_sha256() != lm.weights_sha256()
    caplog.clear()
    run_lm_eval(Variant("base", edited), settings, tmp_path / "c")
    assert "running lm-eval" in caplog.text
    assert len(list((tmp_path / "cache").iterdir())) == 2

    off = settings.model_copy(update={"results_cache": False})
    caplog.clear()
    run_lm_eval(Variant("base", lm), off, tmp_path / "d")
    assert "running lm-eval" in caplog.text
