"""Serving on Triton Inference Server: the server process, its environment, and the gRPC tool and policy."""
