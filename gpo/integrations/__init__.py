"""Bridges from gpo to other training libraries.

Each bridge lives in its own module and imports its library only there, so ``import gpo`` (and
this package) never loads an optional dependency: ``gpo.integrations.trl`` needs ``gpo[trl]``.
"""
