"""Rewrite passes: each is a function from output nodes to new output nodes."""
