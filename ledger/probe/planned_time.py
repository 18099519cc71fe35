"""A planned run's time on this device, from the probe's recorded timings (the formula is
`time_estimate`'s) and the time to decode its images the first time: `train --dry-run`'s estimate
and the order `--jobs` hands runs out in."""

from __future__ import annotations

from ledger.probe.spec_probe import recorded_trial

def estimated_seconds(spec, store, plan, device, competition, jobs: int = 1) -> float | None:
    """A planned run's time on `device` from its probe's timings (ledger.probe.time_estimate); None when no probe
    with timings is on record for its factor on this device."""
    from ledger.probe.time_estimate import RunShape, Timings, run_seconds
    from ledger.runs.training_run import split_of

    probed = recorded_trial(store, spec, plan.model, device, plan.accum, jobs) if plan.accum else None
    if probed is None or probed.step_seconds is None:
        return None
    train_idx, valid_idx = split_of(plan, competition)
    model = plan.model
    shape = RunShape(train_images=len(train_idx), valid_images=len(valid_idx), test_images=len(competition.test_ids),
                     batch_size=model.batch_size, epochs=model.epochs,
                     frozen_epochs=model.freeze_epochs if model.finetune else 0, tta_n=plan.tta.n)
    timings = Timings(probed.step_seconds, probed.predict_seconds_per_image, probed.augmented_seconds_per_image)
    return run_seconds(timings, shape)


def decoding_seconds(competition, model, cache_dir, sample: int = 64) -> float:
    """The time to decode a model entry's train and test images at its item size, as the first run of
    the entry will (the cache serves later runs and commands): nothing when they are cached, else the
    time load_images takes over a sample of them, scaled to all of them."""
    import time

    from ledger.data.images import is_cached, load_images

    paths = (tuple(competition.train_paths), tuple(competition.test_paths))
    if all(is_cached(p, model.item_size, model.resize, cache_dir) for p in paths if p):
        return 0.0
    chosen = tuple(competition.train_paths[:sample])
    started = time.perf_counter()
    load_images(chosen, model.item_size, model.resize, cache_dir=None)
    return (time.perf_counter() - started) / max(1, len(chosen)) * sum(len(p) for p in paths)
