"""Training the segmentation tool: LiteMedSAM's decoder fine-tuned for clicks (`ibis train-tool`)."""
