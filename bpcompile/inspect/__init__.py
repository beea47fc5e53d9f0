"""Seeing the derivative: standalone generated modules, graph pictures, δ equations and
reports (docs/inspection.md). Sits above the backends, like compiled.py."""
