"""The algorithms of one run, which never touch the store: models, loss, the step and the loop, fastai's
schedule, inference and TTA, checkpoints, progress hooks, lr-find, the device."""
