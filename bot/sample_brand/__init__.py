"""The sample brand (Kettle & Kite): fictional package data for demos and tests."""
