"""Validation rollouts of an IBIS-lite checkpoint, as `ibis train-lite` scores its epochs.

    python scripts/validate_lite.py models/lite_policy.pt [--per-source 20] [--max-turns 20] [--tool SPEC]

Prints the overall score (mean of referring and reasoning final IoU over
sources) and per-source figures; the model cards' validation numbers come
from here or from the training log.
"""

import argparse
from pathlib import Path


from ibisagent.evaluation import load_queries, read_manifest, select_pairs
from ibisagent.policies.lite import load_lite_checkpoint
from ibisagent.policies.query_encoder import QueryEncoder
from ibisagent.tools.factory import build_tool
from ibisagent.training.click_env import load_episodes
from ibisagent.training.embedding_cache import EmbeddingCache
from ibisagent.training.lite.rollouts import validate_policy, validation_queries

parser = argparse.ArgumentParser()
parser.add_argument("checkpoint")
parser.add_argument("--manifest", default="../shared/data/med2d/manifest.csv")
parser.add_argument("--queries", default="../shared/data/med2d/queries.json")
parser.add_argument("--per-source", type=int, default=20)
parser.add_argument("--max-turns", type=int, default=20)
parser.add_argument("--cache-dir", default="~/.cache/ibisagent/embeddings")
parser.add_argument("--tool", default="lite-medsam", help="e.g. lite-medsam-decoder:runs/click_tuning/best_decoder.pt")
args = parser.parse_args()

tool = build_tool(args.tool, backend="torch")  # the rollouts call the torch decoder
cache = EmbeddingCache(Path(args.cache_dir).expanduser(), tool)
queries = load_queries(args.queries)
encoder = QueryEncoder()
network, _ = load_lite_checkpoint(args.checkpoint)
episodes = load_episodes(select_pairs(read_manifest(args.manifest, "val"), args.per_source), network.config.frame_size)
vectors = validation_queries(episodes, queries, encoder)
metrics = validate_policy(network, episodes, cache, tool.decoder, vectors, args.max_turns)
print(" ".join(f"{k} {v:.3f}" for k, v in metrics["overall"].items()))
for source, values in metrics["by_source"].items():
    print(source, " ".join(f"{k} {v:.3f}" for k, v in values.items()))
