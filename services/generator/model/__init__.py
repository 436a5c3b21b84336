"""Magenta RT's depthformer LLM in JAX: configs, the model, its t5x checkpoint converter,
the chunk algorithm's token helpers and the compiled 800-step sampling loop."""
