"""Write a Llama-3.1-shaped safetensors checkpoint without downloading one.

``--size 8b`` writes Llama-3.1-8B's exact configuration (32 layers, hidden 4096, d_ff 14336, vocabulary
128,256, 8,030,261,248 parameters) as random bfloat16 weights in sharded safetensors with an index,
about 16 GB, streamed tensor by tensor in 64 MB blocks (the writer holds one block, never a tensor).
``--size 70b --header-only`` writes Llama-3.1-70B's configuration, index and shard *headers* only (each
shard file ends where its tensor data would begin: a few hundred kB in all) for the code paths that read
headers and nothing else (``hneurons inspect``, neuron-set checks against a checkpoint).

The weights are random bfloat16 values of magnitude 2^-10 .. 2^-2 with random signs (norm weights are
1.0): realistic bit patterns for copying, hashing and rescaling, not a model that says anything. The
tensors, their names, shapes, order and the shard layout (at most 5 GB per shard, as ``save_pretrained``)
are those of a transformers Llama checkpoint, so every hneurons code path that reads checkpoints treats
it as the real one. No tokenizer is written.

    python benchmarks/make_big_checkpoint.py --size 8b --out /tmp/llama-8b             # ~16 GB
    python benchmarks/make_big_checkpoint.py --size 70b --header-only --out /tmp/llama-70b-headers
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

INDEX = "model.safetensors.index.json"  # editor.formats.SAFETENSORS_INDEX (kept import-free: a standalone script)

_COMMON = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}
# meta-llama/Llama-3.1-8B-Instruct and -70B-Instruct, config.json
CONFIGS = {
    "8b": {**_COMMON, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32},
    "70b": {**_COMMON, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64},
}
MAX_SHARD_BYTES = 5 * 10**9  # save_pretrained's default "5GB"
BLOCK = 32 * 2**20  # values per written block (64 MB of bfloat16)
_BF16_ONE = 0x3F80


def tensor_specs(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a transformers LlamaForCausalLM, in state-dict order."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        specs += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                  (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                  (p + "mlp.down_proj.weight", (h, f)), (p + "input_layernorm.weight", (h,)),
                  (p + "post_attention_layernorm.weight", (h,))]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return specs


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def plan_shards(specs, max_bytes: int = MAX_SHARD_BYTES) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy shards in state-dict order, each at most ``max_bytes`` of bfloat16 (save_pretrained's rule)."""
    shards, current, size = [], [], 0
    for name, shape in specs:
        nbytes = 2 * _numel(shape)
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    return shards


def _header(tensors) -> tuple[bytes, list[tuple[str, tuple[int, ...]]]]:
    """The safetensors header (8-byte length + JSON, padded to 8 bytes) and the tensors in file order."""
    ordered = sorted(tensors)  # safetensors orders tensors of one dtype by name
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in ordered:
        nbytes = 2 * _numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text, ordered


def _write_values(handle, name: str, numel: int, rng: np.random.Generator) -> None:
    if name.endswith("norm.weight"):
        handle.write(np.full(numel, _BF16_ONE, dtype=np.uint16).tobytes())
        return
    for start in range(0, numel, BLOCK):
        bits = rng.integers(0, 1 << 16, size=min(BLOCK, numel - start), dtype=np.uint16)
        exponent = ((bits >> 7) & 0x7) + 117  # 2^-10 .. 2^-3 (times the mantissa's 1.0 .. 2.0)
        handle.write(((bits & 0x807F) | (exponent << 7)).astype(np.uint16).tobytes())


def write_checkpoint(out: str | Path, size: str = "8b", *, header_only: bool = False, seed: int = 0,
                     max_shard_bytes: int = MAX_SHARD_BYTES, progress: bool = False) -> dict:
    """Write the checkpoint (or its headers) into ``out``; returns a summary (bytes, shards, tensors)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    config = CONFIGS[size]
    shards = plan_shards(tensor_specs(config), max_shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    rng = np.random.default_rng(seed)
    weight_map, total, started = {}, 0, time.perf_counter()
    for shard_name, tensors in zip(names, shards):
        header, ordered = _header(tensors)
        with open(out / shard_name, "wb") as handle:
            handle.write(header)
            for name, shape in ordered:
                if not header_only:
                    _write_values(handle, name, _numel(shape), rng)
                weight_map[name] = shard_name
                total += 2 * _numel(shape)
        if progress:
            print(f"{shard_name}: {len(ordered)} tensors ({time.perf_counter() - started:.0f} s)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps({**config, "transformers_version": "4.43.0"}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 128000, "eos_token_id": config["eos_token_id"], "do_sample": True, "temperature": 0.6,
         "top_p": 0.9}, indent=2) + "\n")
    params = sum(_numel(shape) for _, shape in tensor_specs(config))
    return {"folder": str(out), "size": size, "header_only": header_only, "parameters": params,
            "tensor_bytes": total, "shards": len(shards), "tensors": len(weight_map),
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(CONFIGS), default="8b")
    parser.add_argument("--out", required=True, help="folder to create (must not exist)")
    parser.add_argument("--header-only", action="store_true", help="index and shard headers, no tensor data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_checkpoint(args.out, args.size, header_only=args.header_only, seed=args.seed,
                                      progress=True), indent=2))


if __name__ == "__main__":
    main()
