"""Fine-tuning reduced ViTs: the torchrun entry point (train/main.py) and its parts."""
