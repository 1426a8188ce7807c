"""Weights we train and ship (installed as the package `ibisagent.models`); each file has a model card beside it."""
