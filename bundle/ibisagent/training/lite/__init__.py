"""Training IBIS-lite: supervised states, rollouts (validation, DAgger), SFT + DAgger + GRPO (`ibis train-lite`)."""
