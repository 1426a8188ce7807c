"""Training: shared pieces here (trajectories, rewards, embedding cache, staging, schedule, click sampling, the
click environment), one room per trainer: `tool/` (the click decoder), `lite/` (IBIS-lite), `mllm/` (the MLLM)."""
