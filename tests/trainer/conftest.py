"""The trainer tests' SmolLM2 training run (``sample_copy_run``) lives in tests/conftest.py:
the vLLM tests deploy its adapter too."""
