"""fusedsched: fused optimizers for PyTorch with the learning-rate schedule inside the kernel."""
