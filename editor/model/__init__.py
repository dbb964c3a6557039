"""Models as hneurons sees them: the architecture registry (where each family keeps its FFN), loading from
Hub ids, folders, GGUF files and embedded aliases, safetensors checkpoints read without loading them,
forward hooks on the down-projections, neuron sets, and batch sizes from free GPU memory."""
