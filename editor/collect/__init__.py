"""The collect stage: sample answers to factual questions, judge them, keep the consistently right and
consistently wrong ones (``responses.jsonl``, ``collect.json``). Generation runs on hneurons' compacting
batched decoder (``sampler``) or, optionally, on vLLM."""
