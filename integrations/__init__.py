"""Thin adapters from training frameworks to :class:`greentrack.Tracker`.

Each imports its framework lazily; ``import greentrack.integrations`` alone loads nothing.
"""
