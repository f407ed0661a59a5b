"""Stepfile text → typed instructions. Imports nothing of the builder."""
