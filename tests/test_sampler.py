"""The compacting decoder: greedy equals transformers' generate; sampling warps equal generate's."""

from __future__ import annotations

import pytest
import torch
from tinymodels import tiny_model

from editor.collect.sampler import DecodeSettings, decode, warp


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text", "phi3", "qwen2"])
def test_greedy_decode_equals_generate(model_type):
    model = tiny_model(model_type)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (3, 9, 6, 12)]
    free = decode(model, prompts, DecodeSettings(max_new_tokens=12), stop_ids=set(), pad_id=0)
    # stop tokens taken from the free runs: some rows end early, others run on (compaction mid-way)
    stop = {free[0][0][2], free[2][0][5]} - set(free[1][0])
    got = decode(model, prompts, DecodeSettings(max_new_tokens=12), stop_ids=stop, pad_id=0)
    for prompt, (tokens, ended) in zip(prompts, got):
        ref = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, eos_token_id=sorted(stop), pad_token_id=0)
        new = ref[0, len(prompt):].tolist()
        expected = []
        for tok in new:
            if tok in stop:
                break
            expected.append(tok)
        assert tokens == expected
        assert ended == (len(expected) < 12 or any(t in stop for t in new))
    assert any(ended for _, ended in got) and len({len(t) for t, _ in got}) > 1


def test_warp_matches_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
    settings = DecodeSettings(sample=True, temperature=0.7, top_k=50, top_p=0.9)
    ref = logits.clone()
    for w in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.9)):
        ref = w(None, ref)
    ours = warp(logits, settings)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_sampling_is_seeded():
    model = tiny_model("llama")
    prompts = [[10, 11, 12], [20, 21, 22, 23]]
    s = DecodeSettings(max_new_tokens=8, sample=True, temperature=1.0, top_k=50, top_p=0.9)
    a = decode(model, prompts, s, stop_ids={2}, pad_id=0, seed=3)
    b = decode(model, prompts, s, stop_ids={2}, pad_id=0, seed=3)
    c = decode(model, prompts, s, stop_ids={2}, pad_id=0, seed=4)
    assert a == b and a != c


def test_continuous_batching_rows_that_join_mid_way_decode_as_alone():
    """decode_continuous: rows join a running batch as others finish (their prompt cache padded to the
    batch's width, masked gaps in between); each request must decode exactly as it would alone."""
    from editor.collect.sampler import decode_continuous, prefill, supports_continuous

    model = tiny_model("llama")
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (4, 13, 7, 9, 3)]
    settings = DecodeSettings(max_new_tokens=10)  # greedy: every request is comparable with decode()
    alone = [decode(model, [p], settings, stop_ids=set(), pad_id=0)[0][0] for p in prompts]
    stop = {alone[0][3], alone[2][6]}  # some requests end early, so others join a running batch
    expected = [decode(model, [p], settings, stop_ids=stop, pad_id=0)[0] for p in prompts]
    state = prefill(model, prompts, pad_id=0)
    assert supports_continuous(state)
    queue = [4, 1, 3, 0, 2, 1]  # sampled requests (here greedy too), one prompt twice
    finished: list[tuple[int, list[int], bool, bool]] = []

    def refill(free: int) -> list[int]:
        taken, queue[:] = queue[:free], queue[free:]
        return taken

    n = decode_continuous(model, state, settings, refill=refill, max_rows=2, stop_ids=stop,
                          on_finish=lambda i, toks, ended, sampled: finished.append((i, toks, ended, sampled)),
                          greedy=[2, 0])
    assert n == 6 and len(finished) == 8
    assert [f[3] for f in finished].count(False) == 2
    for prompt, tokens, ended, _ in finished:
        assert (tokens, ended) == expected[prompt], f"request for prompt {prompt} decoded differently"


def test_continuous_sampling_is_seeded():
    from editor.collect.sampler import decode_continuous, prefill

    model = tiny_model("llama")
    prompts = [[10, 11, 12], [20, 21, 22, 23], [5, 6]]
    settings = DecodeSettings(max_new_tokens=8, sample=True, temperature=1.0, top_k=50, top_p=0.9)

    def run(seed: int) -> list:
        queue, got = [0, 1, 2, 0, 1, 2], []

        def refill(free):
            taken, queue[:] = queue[:free], queue[free:]
            return taken

        decode_continuous(model, prefill(model, prompts, 0), settings, refill=refill, max_rows=4, stop_ids={2},
                          on_finish=lambda i, toks, ended, sampled: got.append((i, toks)), seed=seed)
        return got

    assert run(3) == run(3) and run(3) != run(4)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_decode_many_equals_decoding_each_prompt_alone(model_type):
    """decode_many: more prompts than rows; the next prompts join (llama: their prompt pass as they join) while
    rows that hit a stop token leave, and every prompt decodes as it would alone. gemma3's sliding-window
    cache cannot take rows mid-way, so it decodes in consecutive batches, with the same results."""
    from editor.collect.sampler import decode_many, model_supports_continuous

    model = tiny_model(model_type)
    assert model_supports_continuous(model) == (model_type == "llama")
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (14, 12, 11, 9, 8, 6, 5, 3)]
    settings = DecodeSettings(max_new_tokens=10)
    free = [decode(model, [p], settings, stop_ids=set(), pad_id=0)[0][0] for p in prompts]
    stop = {free[0][2], free[3][5], free[5][1]}  # rows end at different steps, so rows join a running batch
    alone = [decode(model, [p], settings, stop_ids=stop, pad_id=0)[0] for p in prompts]
    assert len({len(tokens) for tokens, _ in alone}) > 2
    done = []
    got = decode_many(model, prompts, settings, max_rows=3, stop_ids=stop, pad_id=0, on_done=done.append)
    assert got == alone
    assert sum(done) == len(prompts)
