"""A competition folder -> ids, labels and vocab; splits and folds; decoded images and their cache;
batches; augmentation; the embedded Fashion-MNIST competition."""
