"""Training the MLLM policy: dataset export, the model as trained, TRL SFT and GRPO recipes, LoRA merge."""
