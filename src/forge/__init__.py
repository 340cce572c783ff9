"""Forge: run AI coding agents in isolated workspaces and stream what they do."""

__version__ = "0.1.0"
