"""Whole volumes: read a series, NIfTI or npz; segment a structure through every slice; write it back."""
