"""How long a run will take on the probing device, from what the probe timed.

The Kaggle question is whether a spec fits a 12-hour session (or the 30-hour weekly quota). A run is
its training steps, a validation pass after every epoch, and TTA (one plain and n augmented passes)
over the test and the held-out images; the probe times one training step of the real size and a
plain and an augmented prediction pass per image, on the same device. Torch-free and pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    """What a probe trial measured on its device."""

    step_seconds: float  # one optimizer step over an effective batch, every layer trainable
    predict_seconds_per_image: float  # a plain (evaluation) pass
    augmented_seconds_per_image: float  # a pass with the training augmentation (TTA, frozen steps)


@dataclass(frozen=True)
class RunShape:
    """What a run does, in images and passes."""

    train_images: int
    valid_images: int
    test_images: int
    batch_size: int
    epochs: int  # unfrozen epochs (all of them without fine-tuning)
    frozen_epochs: int  # fastai's fine_tune: epochs with the body frozen, before the others
    tta_n: int  # augmented passes; one plain pass besides


def run_seconds(timings: Timings, shape: RunShape) -> float:
    """Training + validation + TTA, in seconds.

    A frozen epoch costs as much as an unfrozen one: fastai's freeze keeps the body's norm layers
    training (train_bn), so the backward pass still runs through the whole body (measured on lite0:
    146 s frozen, 132 s unfrozen, for the same 25 steps). Training drops the last partial batch
    (drop_last), as the run does; every epoch ends with a validation pass.
    """
    epochs = shape.epochs + shape.frozen_epochs
    train = epochs * (shape.train_images // shape.batch_size) * timings.step_seconds
    validation = epochs * shape.valid_images * timings.predict_seconds_per_image
    tta_per_image = timings.predict_seconds_per_image + shape.tta_n * timings.augmented_seconds_per_image
    tta = (shape.test_images + shape.valid_images) * tta_per_image
    return train + validation + tta
