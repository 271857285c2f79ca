"""InfiniteVL engine: config, model, state, checkpoints, processor and sessions. Never imports Qt."""
