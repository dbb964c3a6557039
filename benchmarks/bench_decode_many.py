"""Benchmark: the eval's greedy generation with continuous batching (decode_many) vs consecutive compacting batches.

The same prompts (the bundled behaviour tasks' first ``--items`` prompts each, in SmolLM2's chat template, longest
first as the lm-eval class orders them), the same greedy settings (128 new tokens, end-of-turn stop), one run:

* ``batches``: :func:`editor.collect.sampler.decode` on consecutive batches of ``--rows`` prompts (the eval's
  generation before continuous batching: finished rows leave, the batch is never refilled);
* ``continuous``: :func:`editor.collect.sampler.decode_many` with at most ``--rows`` rows, the next prompts joining
  (their prompt pass run as they join) as rows finish.

Prints (and writes to ``--out``, default benchmarks/results-decode-many.json) the seconds of each, their
ratio and how many generated token sequences are equal.

    python benchmarks/bench_decode_many.py --items 24 --rows 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, REPO, machine  # noqa: E402

FILES = ("false_premise.jsonl", "misleading_context.jsonl", "sycophancy.jsonl")


def prompts(tokenizer, items: int) -> list[list[int]]:
    out = []
    for name in FILES:
        rows = [json.loads(line) for line in (REPO / "eval" / "hneurons" / "data" / name).read_text().splitlines()
                if line.strip()][:items]
        for row in rows:
            text = row.get("prompt") or row["question"]
            out.append(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=False))
    return sorted(out, key=len, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=24, help="prompts per behaviour task")
    parser.add_argument("--rows", type=int, default=64, help="decoder batch (the eval's gen_batch_size)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results-decode-many.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from editor.collect.sampler import DecodeSettings, decode, decode_many
    from editor.model.loading import load_model

    lm = load_model(MODEL, device="cpu")
    ids = prompts(lm.tokenizer, args.items)
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens)
    stop = {int(lm.tokenizer.eos_token_id)}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else int(lm.tokenizer.eos_token_id)
    start = time.perf_counter()
    batches = []
    for i in range(0, len(ids), args.rows):
        batches += decode(lm.model, ids[i:i + args.rows], settings, stop_ids=stop, pad_id=pad)
    t_batches = time.perf_counter() - start
    start = time.perf_counter()
    continuous = decode_many(lm.model, ids, settings, max_rows=args.rows, stop_ids=stop, pad_id=pad)
    t_continuous = time.perf_counter() - start
    lengths = [len(t) for t, _ in batches]
    result = {"benchmark": "decode_many", "machine": machine(), "prompts": len(ids), "rows": args.rows,
              "max_new_tokens": args.max_new_tokens, "generated_tokens": sum(lengths),
              "answers_at_max_tokens": sum(n >= args.max_new_tokens for n in lengths),
              "batches_seconds": round(t_batches, 1), "continuous_seconds": round(t_continuous, 1),
              "speedup": round(t_batches / t_continuous, 2),
              "same_tokens": sum(a == b for a, b in zip(batches, continuous))}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
