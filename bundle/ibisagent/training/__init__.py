"""Training: the click-tuned segmentation decoder (and, later, trajectories and policies)."""
