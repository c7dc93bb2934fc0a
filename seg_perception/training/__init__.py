"""Training and fine-tuning (``seg-perception train``): data, label mapping, the training loop."""
