"""Fake backends: real HTTP servers with fixed answers (never a patched client method)."""
