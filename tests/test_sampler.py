"""The compacting decoder: greedy equals transformers' generate; sampling warps equal generate's."""

from __future__ import annotations

import pytest
import torch

from editor.sampler import DecodeSettings, decode, warp
from tinymodels import tiny_model


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
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

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
