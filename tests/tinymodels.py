"""Tiny random models and a tiny tokenizer for unit tests (no downloads, built in milliseconds)."""

from __future__ import annotations

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 300
_COMMON = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=128, vocab_size=VOCAB,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

# Every registry entry, and the extra settings its config class needs to be tiny.
TINY_TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "phi",
              "gpt2", "gpt_neox", "olmo", "olmo2", "starcoder2"]


def tiny_config(model_type: str, **overrides):
    if model_type == "gemma3":
        text = {k: v for k, v in _COMMON.items() if k not in ("pad_token_id", "bos_token_id", "eos_token_id")}
        text.update(overrides)
        cfg = CONFIG_MAPPING["gemma3"](
            text_config=text,
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14),
            mm_tokens_per_image=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
        return cfg
    cfg = CONFIG_MAPPING[model_type]()
    settings = dict(_COMMON)
    settings.update(overrides)
    for key, value in settings.items():
        setattr(cfg, key, value)
    if model_type == "gpt2":
        cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_inner, cfg.n_positions = 32, 2, 4, 48, 128
    if model_type in ("gpt_neox",):
        cfg.rotary_pct = 0.25
    return cfg


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    # Random init is small; larger weights make activations (and so any mistake) visible in logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model.eval()


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Question: What is the symbol of gold? Answer: Au",
    "I don't know. I'm not sure. There is no such country. It does not exist.",
    "The currency of Japan is the yen. Lome is the capital of Togo. Respond with the answer only.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-()",
]


def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens (ids 0-3), trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", unk_token="<|unk|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def write_capital_questions(path, n: int, split: str = "train"):
    """A local question file of ``n`` made-up capital questions (gold answer "Paris"), as the CLI reads one."""
    import json
    from pathlib import Path

    path = Path(path)
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is the capital of land {i}?",
                                        "answers": ["Paris"], "split": split}) + "\n" for i in range(n)))
    return path


def write_collect_folder(folder, identity: dict, sizes=(12, 6, 6), hallucinated=lambda i: i % 2) -> None:
    """A finished collect folder as `hneurons collect` writes it (records with a representative answer; token
    ids the tiny tokenizer knows), ``sizes`` records in train / validation / test."""
    import json
    from pathlib import Path

    import numpy as np

    g = np.random.default_rng(0)
    records = []
    for split, n in zip(("train", "validation", "test"), sizes):
        for i in range(n):
            prompt, answer = g.integers(10, 290, size=6).tolist(), g.integers(10, 290, size=3).tolist()
            records.append({"id": f"{split}{i}", "split": split, "relation": "r", "fabricated": False,
                            "selected": True, "hallucinated": int(hallucinated(i)), "consistency": "wrong",
                            "representative": {"input_ids": prompt + answer, "prompt_len": 6, "response_start": 6,
                                               "response_end": 9, "answer_start": 6, "answer_end": 9}})
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "collect.json").write_text(json.dumps({"format": "hneurons.collect/1", "model": identity, "data": {},
                                                     "sampling": {}, "prompt": {}, "questions_sha256": "x"}))
