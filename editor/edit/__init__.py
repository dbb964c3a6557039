"""The edit stage: a neuron set and its alphas written as a patched checkpoint (in memory or streamed
shard by shard), or as an exact PEFT IA3 / LoRA adapter, each verified against run-time scaling before
it is kept."""
