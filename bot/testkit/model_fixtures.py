"""pytest fixtures for models: a tiny LLaMA-architecture model built from a config (fast)."""
