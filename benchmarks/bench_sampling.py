"""Benchmark: hneurons' batched sampler (the collect stage) vs one question at a time with `generate`.

The same questions (bundled facts, train split, a relation-balanced subset) and the same settings (the
default recipe's: greedy answer + k samples, temperature, top-p, top-k, max new tokens) go through

* ``hneurons``: :func:`editor.collect.stage.collect` (chunks of ``batch_size`` questions; the compacting
  decoder of editor/collect/sampler.py, where finished rows leave the batch and the KV cache), with the early
  stop off (every question gets all k samples, like the baselines) and on (the default);
* ``hf_batched``: transformers' ``generate`` on the same batches (left padding, no compaction: every row
  runs until the longest row of its batch ends);
* ``loop``: ``generate`` one question at a time: a greedy call, then one call with
  ``num_return_sequences=k`` (``loop_per_question``) or k calls of one sample (``loop_per_generation``).

Tokens/s = generated tokens (response tokens up to the end of turn, padding never counted) / wall time.
The ratios say what batching (hf_batched / loop) and what compaction (hneurons / hf_batched) each give.
The early stop's saving is the fraction of generations it skipped (and of wall time).

    python benchmarks/bench_sampling.py --questions 32
    python benchmarks/bench_sampling.py --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace

import torch
from common import MODEL, recipe_sampling, timed


def questions(n: int, seed: int = 0):
    from editor.collect.stage import gather_questions

    qs, _ = gather_questions(["bundled:facts"], ["train"], n, seed=seed)
    return qs


def sampling_settings(sampling: dict, early_stop: bool = True):
    from editor.collect.settings import CollectSettings

    return CollectSettings(samples=sampling["samples"], temperature=sampling["temperature"],
                            top_p=sampling["top_p"], top_k=sampling["top_k"],
                            max_new_tokens=sampling["max_new_tokens"], seed=sampling["seed"],
                            early_stop=early_stop, batch_size=sampling["batch_size"])


def _stops(lm) -> list[int]:
    from editor.data.prompting import stop_token_ids

    stops = set(stop_token_ids(lm.tokenizer, lm.model.generation_config))
    stops.add(lm.tokenizer.pad_token_id)
    return sorted(stops)


def _count_new_tokens(rows: torch.Tensor, stops: set[int]) -> int:
    """Response tokens of generate's output rows: up to (not including) the first stop or pad token."""
    total = 0
    for row in rows.tolist():
        for tok in row:
            if tok in stops:
                break
            total += 1
    return total


def _hf_generate(lm, prompt_ids: list[list[int]], settings, sample: bool, n_return: int = 1) -> int:
    from editor.collect.sampler import left_pad

    stops = _stops(lm)
    ids, mask = left_pad(prompt_ids, lm.tokenizer.pad_token_id, next(lm.model.parameters()).device)
    kwargs = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k) \
        if sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                            eos_token_id=stops, pad_token_id=lm.tokenizer.pad_token_id,
                            num_return_sequences=n_return, **kwargs)
    return _count_new_tokens(out[:, ids.shape[1]:], set(stops))


def _prompts(lm, qs) -> list[list[int]]:
    from editor.data.prompting import build_prompt

    return [build_prompt(lm.tokenizer, q.question).input_ids for q in qs]


@torch.no_grad()
def hf_batched(lm, qs, settings) -> dict:
    """transformers' generate on collect's batches: per chunk, a greedy batch, then the chunk's k samples
    per question in rows of ``batch_size`` (the early stop off)."""
    torch.manual_seed(settings.seed)
    prompts, bs, k = _prompts(lm, qs), settings.batch_size, settings.samples

    def work():
        tokens = generations = 0
        for c in range(0, len(prompts), bs):
            chunk = prompts[c:c + bs]
            tokens += _hf_generate(lm, chunk, settings, sample=False)
            rows = [p for p in chunk for _ in range(k)]
            for r in range(0, len(rows), bs):
                tokens += _hf_generate(lm, rows[r:r + bs], settings, sample=True)
            generations += len(chunk) * (k + 1)
        return tokens, generations

    (tokens, generations), seconds = timed(work)
    return {"seconds": seconds, "generated_tokens": tokens, "generations": generations,
            "tokens_per_s": tokens / seconds}


@torch.no_grad()
def loop(lm, qs, settings, per_question: bool = True) -> dict:
    """One question at a time: a greedy call, then k samples (one call of k, or k calls of one)."""
    torch.manual_seed(settings.seed)
    prompts, k = _prompts(lm, qs), settings.samples

    def work():
        tokens = 0
        for prompt in prompts:
            tokens += _hf_generate(lm, [prompt], settings, sample=False)
            if per_question:
                tokens += _hf_generate(lm, [prompt], settings, sample=True, n_return=k)
            else:
                for _ in range(k):
                    tokens += _hf_generate(lm, [prompt], settings, sample=True)
        return tokens

    tokens, seconds = timed(work)
    return {"seconds": seconds, "generated_tokens": tokens, "generations": len(prompts) * (k + 1),
            "tokens_per_s": tokens / seconds}


def hneurons(lm, qs, settings) -> dict:
    """The collect stage itself (judging and the chunk files included), into a temporary folder."""
    from editor.collect.stage import collect

    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        result, seconds = timed(lambda: collect(lm, qs, tmp, settings=settings, progress=False))
    g = result.manifest["generations"]
    return {"seconds": seconds, "generated_tokens": g["generated_tokens"], "generations": g["generations"],
            "generations_without_early_stop": g["generations_without_early_stop"],
            "early_stop_saving": result.manifest["early_stop_saving"],
            "tokens_per_s": g["generated_tokens"] / seconds, "seconds_per_question": seconds / len(qs)}


def run(lm=None, n_questions: int = 32, sampling: dict | None = None, loops=("per_question", "per_generation"),
        verbose: bool = True) -> dict:
    """All paths on the same ``n_questions`` questions; returns figures and ratios (module docstring)."""
    from editor.model.loading import load_model

    lm = lm or load_model(MODEL, device="cpu")
    sampling = sampling or recipe_sampling()
    qs = questions(n_questions)
    no_stop = sampling_settings(sampling, early_stop=False)
    paths = {}
    paths["hneurons"] = hneurons(lm, qs, no_stop)
    paths["hneurons_early_stop"] = hneurons(lm, qs, replace(no_stop, early_stop=True))
    paths["hf_batched"] = hf_batched(lm, qs, no_stop)
    for variant in loops:
        paths[f"loop_{variant}"] = loop(lm, qs, no_stop, per_question=variant == "per_question")
    base = paths.get("loop_per_question") or next(v for k, v in paths.items() if k.startswith("loop"))
    result = {
        "questions": n_questions, "settings": sampling, "paths": paths,
        "speedup_vs_loop": paths["hneurons"]["tokens_per_s"] / base["tokens_per_s"],
        "speedup_hf_batched_vs_loop": paths["hf_batched"]["tokens_per_s"] / base["tokens_per_s"],
        "speedup_compaction_vs_hf_batched": paths["hneurons"]["tokens_per_s"] / paths["hf_batched"]["tokens_per_s"],
        "early_stop_generations_saved": paths["hneurons_early_stop"]["early_stop_saving"],
        "early_stop_time_saved": 1 - paths["hneurons_early_stop"]["seconds"] / paths["hneurons"]["seconds"],
    }
    if "loop_per_generation" in paths:
        result["speedup_vs_loop_per_generation"] = (paths["hneurons"]["tokens_per_s"]
                                                    / paths["loop_per_generation"]["tokens_per_s"])
    result["target_met"] = result["speedup_vs_loop"] >= 4
    if verbose:
        print_table(result)
    return result


def scale(lm, sizes, sampling: dict | None = None) -> list[dict]:
    """The collect stage (early stop on: the default) at several question-set sizes."""
    sampling = sampling or recipe_sampling()
    settings = sampling_settings(sampling, early_stop=True)
    return [{"size": n, **hneurons(lm, questions(n), settings)} for n in sizes]


def print_table(r: dict) -> None:
    s = r["settings"]
    print(f"\nsampling: {r['questions']} questions x (greedy + {s['samples']} samples), T={s['temperature']}, "
          f"top-p {s['top_p']}, top-k {s['top_k']}, <= {s['max_new_tokens']} new tokens, batch {s['batch_size']}")
    print(f"{'path':<26}{'seconds':>9}{'generations':>13}{'tokens':>8}{'tokens/s':>10}")
    for name, p in r["paths"].items():
        print(f"{name:<26}{p['seconds']:>9.1f}{p['generations']:>13}{p['generated_tokens']:>8}{p['tokens_per_s']:>10.1f}")
    print(f"hneurons vs loop {r['speedup_vs_loop']:.1f}x (target >= 4x); hf batched vs loop "
          f"{r['speedup_hf_batched_vs_loop']:.1f}x; compaction vs hf batched {r['speedup_compaction_vs_hf_batched']:.2f}x; "
          f"early stop saved {r['early_stop_generations_saved']:.0%} of generations, {r['early_stop_time_saved']:.0%} of time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="8 questions, the per-question loop only")
    args = parser.parse_args()
    if args.quick:
        result = run(n_questions=8, loops=("per_question",))
    else:
        result = run(n_questions=args.questions)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
