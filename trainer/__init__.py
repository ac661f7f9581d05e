"""The ML library: example cleaning, dataset building, LoRA training, evaluation, promotion.

Pure: it takes examples and settings and returns adapters and metrics. It knows no database
and no chat, and imports only ``serving`` of our packages.
"""
