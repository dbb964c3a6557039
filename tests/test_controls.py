"""Matched random-neuron controls: every random set has the H-Neuron set's per-layer counts exactly, avoids the
set, differs per seed and is re-created from its seed; the default in eval, the sweep, the dose-response and
locate's / origin's baselines."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from editor.evaluate.settings import DoseSettings, EvalSettings, SweepSettings
from editor.evaluate.variants import control_variants, random_control
from editor.locate.stage import random_columns
from editor.model.neuron_set import NeuronSet, matched_random_pairs

# An uneven set: 1, 4, 0 and 7 neurons in layers 0..3 of a 4 x 20 model.
PAIRS = [(0, 3)] + [(1, j) for j in (0, 1, 2, 19)] + [(3, j) for j in range(5, 12)]


def test_random_sets_have_the_sets_per_layer_counts_exactly_and_differ_per_seed():
    nset = NeuronSet.from_pairs(PAIRS)
    draws = [random_control(nset, num_layers=4, d_ff=20, seed=s) for s in range(50)]
    for control in draws:
        assert control.per_layer() == nset.per_layer() == {0: 1, 1: 4, 3: 7}
        assert len(set(control.neurons)) == len(nset) and not set(control.neurons) & set(nset.neurons)
    assert len({tuple(sorted(c.neurons)) for c in draws}) == 50  # distinct per seed
    assert random_control(nset, 4, 20, seed=7).neurons == draws[7].neurons  # a function of the seed alone
    # Within a layer every free neuron is drawn about equally often (layer 3: 7 of 13 free neurons).
    counts = Counter(j for s in range(2000) for l, j in random_control(nset, 4, 20, seed=s).neurons if l == 3)
    assert set(counts) == set(range(20)) - set(range(5, 12))
    assert np.allclose(np.array(list(counts.values())) / 2000, 7 / 13, atol=0.05)


def test_matched_is_the_default_everywhere():
    assert EvalSettings().match_layers and SweepSettings().match_layers and DoseSettings().match_layers
    assert EvalSettings.of(match_layers=False).match_layers is False  # the uniform draw stays available
    nset = NeuronSet.from_pairs(PAIRS)

    class Model:  # control_variants reads only these from the loaded model
        num_layers, d_ff = 4, 20

    for variant in control_variants(Model(), nset, nset.alphas(0.0), range(3)):
        assert variant.neurons.per_layer() == nset.per_layer() and variant.match_layers


def test_locate_and_origin_baseline_columns_are_matched_per_layer():
    d_ff = 20
    h_cols = torch.tensor(sorted(l * d_ff + j for l, j in PAIRS))
    layer_counts = Counter((h_cols // d_ff).tolist())
    seen = set()
    for seed in range(30):
        cols = random_columns(4 * d_ff, len(h_cols), h_cols, seed, d_ff)
        assert Counter((cols // d_ff).tolist()) == layer_counts
        assert not set(cols.tolist()) & set(h_cols.tolist()) and len(set(cols.tolist())) == len(h_cols)
        seen.add(tuple(cols.tolist()))
        # the same neurons as the eval / sweep control of that seed
        assert sorted(l * d_ff + j for l, j in matched_random_pairs(PAIRS, d_ff, seed)) == cols.tolist()
    assert len(seen) == 30
