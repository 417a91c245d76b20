"""Training: optimizers and learning-rate schedules (`optim`), and the training loops."""
