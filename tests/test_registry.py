"""Foundation: registry entries, neuron capture and run-time scaling on a tiny model of every architecture."""

from __future__ import annotations

import pytest
import torch
from tinymodels import TINY_TYPES, tiny_config, tiny_model

from editor.errors import UnsupportedArchitectureError
from editor.model.hooks import (
    capture_down_inputs,
    column_norms,
    decoder_layers,
    down_columns,
    down_proj_modules,
    get_submodule,
    group_by_layer,
    scale_columns_,
    scaled_neurons,
)
from editor.model.registry import ARCHITECTURES, architecture_hash, get_arch, supported_types

REQUIRED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "phi",
            "gpt2", "gpt_neox", "olmo", "olmo2", "starcoder2"}


def test_registry_covers_required_architectures():
    assert REQUIRED <= set(ARCHITECTURES)
    assert set(TINY_TYPES) == set(ARCHITECTURES), "every registry entry needs a tiny-model test"


def _manual_down_input(model, arch, layer_idx, x):
    """act(gate(x)) * up(x) for gated MLPs, act(fc1(x)) otherwise, computed from the modules directly."""
    layer = decoder_layers(model, arch)[layer_idx]
    act = get_submodule(layer, arch.act)
    up = get_submodule(layer, arch.up_proj)
    if arch.fused_gate_up:
        gate, up_out = up(x).chunk(2, dim=-1)
        return act(gate) * up_out
    if arch.gate_proj:
        return act(get_submodule(layer, arch.gate_proj)(x)) * up(x)
    return act(up(x))


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_captured_input_is_the_real_down_proj_input(model_type):
    model = tiny_model(model_type)
    arch = get_arch(model.config)
    ids = torch.randint(4, 300, (2, 7))
    mlp_inputs = {}
    handles = []
    for i, layer in enumerate(decoder_layers(model, arch)):
        mlp = get_submodule(layer, arch.down_proj.rsplit(".", 1)[0])
        handles.append(mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_inputs.__setitem__(i, a[0].detach())))
    with torch.no_grad(), capture_down_inputs(model) as captured:
        model(input_ids=ids)
    for h in handles:
        h.remove()
    assert sorted(captured) == list(range(arch.num_layers(model.config)))
    for i, z in captured.items():
        assert z.shape == (2, 7, arch.d_ff(model.config))
        with torch.no_grad():
            expected = _manual_down_input(model, arch, i, mlp_inputs[i])
        torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)
    # hooks are gone after the block
    assert all(not m._forward_pre_hooks for m in down_proj_modules(model, arch))


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_runtime_scaling_equals_weight_scaling(model_type):
    model = tiny_model(model_type)
    arch = get_arch(model.config)
    d_ff = arch.d_ff(model.config)
    neurons = [(0, 3), (0, 17), (1, 0), (1, d_ff - 1)]
    ids = torch.randint(4, 300, (2, 9))
    for alpha in (0.0, 0.5, 2.5):
        scales = group_by_layer(neurons, alpha)
        with torch.no_grad():
            base = model(input_ids=ids).logits
            with scaled_neurons(model, scales):
                hooked = model(input_ids=ids).logits
            edited = tiny_model(model_type)  # same seed, same weights
            modules = down_proj_modules(edited, arch)
            for layer, s in scales.items():
                scale_columns_(modules[layer].weight, arch, s.index, s.alpha)
            rewritten = edited(input_ids=ids).logits
        assert (hooked - rewritten).abs().max().item() < 1e-5
        if alpha != 1.0:
            assert (hooked - base).abs().max().item() > 1e-4, "the scaled neurons must change the logits"
    # hooks removed: the model is back to its original outputs
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_column_access_matches_layout(model_type):
    model = tiny_model(model_type)
    arch = get_arch(model.config)
    w = down_proj_modules(model, arch)[0].weight
    cols = down_columns(w, arch, [5, 7])
    hidden = model.config.hidden_size if model_type != "gpt2" else model.config.n_embd
    assert cols.shape == (hidden, 2)
    expected = w[[5, 7], :].T if arch.conv1d else w[:, [5, 7]]
    torch.testing.assert_close(cols, expected)
    norms = column_norms(w, arch)
    assert norms.shape == (arch.d_ff(model.config),)
    torch.testing.assert_close(norms[5], cols[:, 0].norm())


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe"])
def test_moe_architectures_are_refused_with_the_supported_list(model_type):
    from transformers import CONFIG_MAPPING

    with pytest.raises(UnsupportedArchitectureError) as err:
        get_arch(CONFIG_MAPPING[model_type]())
    message = str(err.value)
    assert model_type in message and "mixture-of-experts" in message
    assert "llama" in message and "gpt2" in message


def test_unknown_architecture_is_refused_with_the_supported_list():
    from transformers import CONFIG_MAPPING

    with pytest.raises(UnsupportedArchitectureError) as err:
        get_arch(CONFIG_MAPPING["bloom"]())
    assert "'bloom'" in str(err.value)
    assert all(t in str(err.value) for t in supported_types())


def test_architecture_hash_ignores_weights_but_not_shape():
    assert architecture_hash(tiny_config("llama")) == architecture_hash(tiny_config("llama"))
    assert architecture_hash(tiny_config("llama")) != architecture_hash(tiny_config("llama", intermediate_size=64))
    assert architecture_hash(tiny_config("llama")) != architecture_hash(tiny_config("mistral"))
