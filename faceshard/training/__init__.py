"""Training on the cache: small MINTIME/Megatron-style models, the epoch loop, the loader benchmark."""
