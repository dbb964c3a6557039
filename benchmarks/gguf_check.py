"""GGUF edits, measured: sizes, verification numbers per storage type, write time and memory, and a real
runtime (llama.cpp through llama-cpp-python) on the patched files. Writes benchmarks/gguf_check.json.

For each embedded model (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M) and alpha (0, 0.5), a fixed
random set of 40 FFN neurons (seed 0; the measured SmolLM2 recipe locates 40 H-Neurons) is written with
every storage type the source allows (source, Q8_0, F16, F32) and read back with gguf and transformers'
GGUF loader: the quantization error D (max abs logit difference vs run-time scaling, verification
prompts), the edit's own effect E, D / E and the type's tolerance, whether it passes, the file size, and
the time and peak memory (tracemalloc: Python and numpy allocations) of writing. Then ``hneurons edit
--mode gguf`` itself (auto) is timed with the model already loaded: what the mode adds to a run.

The llama.cpp check (skipped with a note when llama_cpp cannot be imported): the auto file at alpha 0 is
loaded in llama.cpp, which must generate text, and whose last-token ("first generated token") logits on
the verification prompts (the same token ids as transformers) must match transformers' reading of the
same file: top-1 token equal on every prompt and max abs difference within RUNTIME_TOLERANCE times the
two runtimes' difference on the unedited source file (llama.cpp quantizes activations to 8 bits for its
quantized matrix products and transformers dequantizes the weights to float32, so they never agree
exactly; the patched file must be read as faithfully as the source). The edit's effect in llama.cpp
(patched vs source file) is reported next to the one transformers measures.

llama-cpp-python installs from its source distribution (several minutes of compiling; never in the tests):

    pip download llama-cpp-python --no-binary :all: --no-deps -d /tmp/llama-sdist
    CMAKE_ARGS="-DLLAVA_BUILD=OFF" pip install --no-deps --target /tmp/llamacpp-py /tmp/llama-sdist/llama_cpp_python-*.tar.gz
    pip install --target /tmp/llamacpp-py diskcache
    PYTHONPATH=/tmp/llamacpp-py python benchmarks/gguf_check.py            # both models, about 10 minutes
    PYTHONPATH=/tmp/llamacpp-py python benchmarks/gguf_check.py --quick    # SmolLM2, alpha 0 only

``--converter PATH/convert_hf_to_gguf.py`` also writes the GGUF of a safetensors source (SmolLM2's float32
checkpoint, as hneurons converted it) through llama.cpp's converter, as f32 and q8_0 (the converter needs
``sentencepiece`` importable, e.g. ``pip install --target /tmp/conv-deps sentencepiece`` on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from editor.edit import gguf as G  # noqa: E402
from editor.edit.settings import VERIFY_PROMPTS  # noqa: E402
from editor.edit.stage import edit_model  # noqa: E402
from editor.edit.verify import Reference, max_abs_diff, prompt_logits  # noqa: E402
from editor.errors import VerificationError  # noqa: E402
from editor.model.loading import EMBEDDED, load_model  # noqa: E402
from editor.model.neuron_set import NeuronSet  # noqa: E402

MODELS = ("smollm2-135m-instruct", "gemma3-270m")
ALPHAS = (0.0, 0.5)
NEURONS = 40
RUNTIME_TOLERANCE = 1.5  # llama.cpp vs transformers on the patched file, x their difference on the source file
GENERATE = ("The capital of France is", "Question: What is the chemical symbol of gold?\nAnswer:")


def neuron_set(lm) -> NeuronSet:
    rng = random.Random(0)
    pairs = set()
    while len(pairs) < NEURONS:
        pairs.add((rng.randrange(lm.num_layers), rng.randrange(lm.d_ff)))
    return NeuronSet.from_pairs(sorted(pairs))


def timed_write(src, out: Path, edits, keys) -> dict:
    """Write once more alone, for its time and peak traced memory."""
    tracemalloc.start()
    start = time.perf_counter()
    G.write_patched_gguf(src, out, edits, G.edit_metadata(keys, edits))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"write_seconds": round(seconds, 2), "write_peak_traced_mb": round(peak / 2**20, 1)}


def measure_types(lm, src, nset, alpha: float, work: Path) -> list[dict]:
    scales = nset.scales(alpha)
    reference = Reference.compute(lm, scales, list(VERIFY_PROMPTS))
    effect = max_abs_diff(reference.base, reference.scaled)
    types = G.source_types(src, sorted(scales))
    choices = (["source"] if all(G.can_write(t) for t in types.values()) else []) + list(G.EXPLICIT)
    keys = G.base_keys("benchmark", nset.sha256, len(nset), {"default": alpha, "min": alpha, "max": alpha}, None)
    rows = []
    for choice in choices:
        out = work / f"{choice}.gguf"
        edits = G.plan_edits(src, scales, choice, lm.d_ff)
        trial = G.try_type(lm.model, lm.arch, reference, src, out, edits, G.edit_metadata(keys, edits), choice)
        loader = max_abs_diff(reference.scaled, prompt_logits(G.transformers_gguf_model(out, torch.device("cpu")),
                                                              reference.inputs))
        row = {"alpha": alpha, **trial.describe(effect), "transformers_max_abs_diff": loader,
               "edit_effect_max_abs": effect, "size_bytes": out.stat().st_size,
               "size_vs_source": out.stat().st_size / src.path.stat().st_size,
               "tensors_rewritten": len(edits),
               "worst_value_error_over_bound": max(r["max_error_over_bound"]
                                                   for r in trial.tensors["tensors_rewritten"].values())}
        row.update(timed_write(src, out, edits, keys))
        print(f"  alpha {alpha:g} {choice:6s} {'+'.join(trial.types):10s} D {trial.max_abs_diff:.3g} (loader "
              f"{loader:.3g}) E {effect:.3g} D/E {trial.max_abs_diff / effect:.3f} tol {trial.tolerance:.3g} "
              f"{'pass' if trial.passed else 'FAIL'} size {row['size_vs_source']:.3f}x write {row['write_seconds']} s "
              f"{row['write_peak_traced_mb']} MB", flush=True)
        rows.append(row)
        out.unlink()
    return rows


def full_edit(lm, nset, work: Path) -> tuple[dict, Path]:
    """`hneurons edit --mode gguf` (auto, alpha 0) with the model loaded: what the mode adds to a run."""
    start = time.perf_counter()
    try:
        result = edit_model(lm, nset, 0.0, "gguf", work / "auto", overwrite=True)
    except VerificationError as exc:
        return {"error": str(exc), "seconds": round(time.perf_counter() - start, 1)}, None
    ver = result.verification
    summary = {"seconds": round(time.perf_counter() - start, 1), "gguf_type": ver["gguf_type"],
               "stored_types": ver["stored_dtype"], "tried": ver["tried"], "max_abs_diff": ver["max_abs_diff"],
               "edit_effect_max_abs": ver["edit_effect_max_abs"], "tolerance": ver["tolerance"],
               "size_bytes": result.manifest["written"]["size_bytes"]}
    return summary, result.out / result.manifest["written"]["gguf_file"]


# ------------------------------------------------------------------------------------------ llama.cpp
def llama_last_logits(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[len(ids) - 1], dtype=np.float32))


def transformers_last_logits(path: Path, prompts_ids: list[list[int]]) -> list[torch.Tensor]:
    model = G.transformers_gguf_model(path, torch.device("cpu"))
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0, -1].float() for ids in prompts_ids]


def llama_cpp_check(lm, source: Path, patched: Path) -> dict:
    try:
        import llama_cpp
    except ImportError as exc:
        return {"skipped": f"llama_cpp cannot be imported ({exc}); see this script's docstring"}
    ids = [lm.tokenizer(p)["input_ids"] for p in VERIFY_PROMPTS]
    hf = transformers_last_logits(patched, ids)
    hf_source = transformers_last_logits(source, ids)
    threads = max(1, (os.cpu_count() or 1))

    def runtime(path: Path):
        return llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=threads,
                               seed=0)

    llm = runtime(patched)
    rt = [llama_last_logits(llm, x) for x in ids]
    texts = {p: llm(p, max_tokens=16, temperature=0.0)["choices"][0]["text"] for p in GENERATE}
    del llm
    llm_source = runtime(source)
    rt_source = [llama_last_logits(llm_source, x) for x in ids]
    src_texts = {p: llm_source(p, max_tokens=16, temperature=0.0)["choices"][0]["text"] for p in GENERATE}
    del llm_source
    diffs = [float((a - b).abs().max()) for a, b in zip(rt, hf)]
    source_diffs = [float((a - b).abs().max()) for a, b in zip(rt_source, hf_source)]
    ranges = [float(b.max() - b.min()) for b in hf]
    top1 = [int(a.argmax()) == int(b.argmax()) for a, b in zip(rt, hf)]
    # llama.cpp reads the patched file as faithfully as the source file: the two runtimes disagree on it no
    # more than RUNTIME_TOLERANCE x their disagreement on the unedited source (llama.cpp's own arithmetic).
    bound = RUNTIME_TOLERANCE * max(source_diffs)
    effect_rt = [a - b for a, b in zip(rt, rt_source)]
    effect_hf = [a - b for a, b in zip(hf, hf_source)]
    return {
        "llama_cpp_python": llama_cpp.__version__, "file": patched.name,
        "generates": all(t.strip() for t in texts.values()), "generated": texts, "generated_by_source": src_texts,
        "first_token_max_abs_diff_vs_transformers": diffs,
        "source_first_token_max_abs_diff_vs_transformers": source_diffs, "logit_range": ranges,
        "tolerance": bound, "top1_agrees": top1,
        "edit_effect_llama_cpp": max(float(e.abs().max()) for e in effect_rt),
        "edit_effect_transformers": max(float(e.abs().max()) for e in effect_hf),
        "edit_effect_difference": max(float((a - b).abs().max()) for a, b in zip(effect_rt, effect_hf)),
        "passed": max(diffs) <= bound and all(top1) and all(t.strip() for t in texts.values())}


def converter_check(converter: str, work: Path) -> dict:
    """A safetensors source through llama.cpp's converter: SmolLM2's float32 checkpoint, f32 and q8_0."""
    import shutil

    from editor.model.checkpoint import local_checkpoint

    folder = work / "SmolLM2-135M-Instruct"
    cached = local_checkpoint(MODELS[0]).folder
    shutil.copytree(cached, folder, ignore=shutil.ignore_patterns("hneurons_source.json"))
    lm = load_model(str(folder), device="cpu")
    nset = neuron_set(lm)
    out = {}
    for kind in ("F32", "Q8_0"):
        start = time.perf_counter()
        result = edit_model(lm, nset, 0.0, "gguf", work / f"st-{kind}", gguf_type=kind, gguf_converter=converter,
                            force=True)
        ver = result.verification
        out[kind] = {"seconds": round(time.perf_counter() - start, 1), "size_bytes": result.manifest["written"]["size_bytes"],
                     "quantization_error_max_abs": ver["quantization_error_max_abs"],
                     "edit_effect_max_abs": ver["edit_effect_max_abs"], "tolerance": ver["tolerance"],
                     "conversion_max_abs_diff": ver["conversion_max_abs_diff"], "max_abs_diff": ver["max_abs_diff"]}
        print(f"  converter {kind}: {out[kind]}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, alpha 0 only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "gguf_check.json"))
    parser.add_argument("--converter", metavar="PATH", help="llama.cpp's convert_hf_to_gguf.py (safetensors source)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    models = MODELS[:1] if args.quick else MODELS
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "neurons": f"{NEURONS} random FFN neurons, seed 0", "models": {}}
    for alias in models:
        print(f"{alias}:", flush=True)
        lm = load_model(alias, device="cpu")
        source = EMBEDDED[alias].gguf_path()
        src = G.open_gguf(source)
        nset = neuron_set(lm)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            rows = [r for alpha in (ALPHAS[:1] if args.quick else ALPHAS)
                    for r in measure_types(lm, src, nset, alpha, work)]
            edit, patched = full_edit(lm, nset, work)
            print(f"  hneurons edit --mode gguf (auto, alpha 0): {edit}", flush=True)
            runtime = llama_cpp_check(lm, source, patched) if patched else {"skipped": "no file"}
            print(f"  llama.cpp: {runtime}", flush=True)
        report["models"][alias] = {"source": {"file": source.name, "size_bytes": source.stat().st_size},
                                   "types": rows, "edit_auto_alpha0": edit, "llama_cpp": runtime}
    if args.converter:
        print("safetensors source:", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            report["safetensors_source"] = converter_check(args.converter, Path(tmp))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
