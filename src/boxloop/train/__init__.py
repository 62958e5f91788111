"""Training one detector: its config, fit(), the optimiser step, checkpoints, datasets, torchrun.

Owns: config (TrainConfig), fit (the one step loop, validation, best checkpoint, exact resume),
step (optimiser and one step), checkpoints, data (samples, datasets, augmentation), ddp (fit on N
torchrun processes), run (train_detector: one process or N). May import: the root modules,
detectors/, predict/ (validation predictions), metrics/. Knows nothing of projects, rounds or the store.
"""
