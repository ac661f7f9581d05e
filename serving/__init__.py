"""Inference, the lowest layer: base-model resolution, the local engine and the client.

It imports nothing of brandbot's other packages.
"""
