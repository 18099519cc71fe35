"""The `pseudo:` section of a spec: which teacher spec's bag labels the test images, at which
confidence and loss weight. Checked against the teacher's own spec; how the labels are then drawn
without a leak is `runs/pseudo_labels.py`'s."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ledger.errors import SpecError
from ledger.spec.checks import Checker, resolve_path, spec_error
from ledger.spec.keys import REQUIRED, read, setting, spec_keys

_TOLERANCE = 1e-6  # a weight this close to 1 is 1


# The specs being read as teachers, outermost first, while their teachers are read.
_TEACHER_CHAIN: ContextVar[tuple[Path, ...]] = ContextVar("teacher_chain", default=())


@dataclass(frozen=True)
class PseudoSpec:
    teacher: Path = setting(REQUIRED, "str", "The teacher's spec file (same data, same fixed split): the done runs "
                            "of its current entries are the teacher bag.")
    threshold: float = setting(0.9, "float", "The teacher bag's top probability a test image needs.", min=0.0, max=1.0)
    weight: float = setting(1.0, "float", "Each pseudo-labelled image's share of the loss, a labelled image's "
                            "being 1.", above=0.0)


def parse_pseudo(file: Path, raw: Any, data, split, load_teacher: Callable[[Path], Any]) -> PseudoSpec | None:
    """The `pseudo:` section, checked against the teacher's spec (`load_teacher(path)` reads it, as
    `spec.load_spec` does): same data, same split."""
    if raw is None:
        return None
    c = Checker(file, "pseudo", raw)
    c.reject_unknown({f.name for f in spec_keys(PseudoSpec)})
    teacher = resolve_path(file, read(c, PseudoSpec, "teacher"))
    pseudo = PseudoSpec(teacher=teacher, threshold=read(c, PseudoSpec, "threshold", 0.9),
                        weight=read(c, PseudoSpec, "weight", 1.0))
    if not teacher.is_file():
        c.fail(f"{teacher}: spec file not found", "teacher")
    if teacher.resolve() == Path(file).resolve():
        c.fail("a spec cannot be its own teacher", "teacher")
    chain = _TEACHER_CHAIN.get() + (Path(file).resolve(),)
    if teacher.resolve() in chain:  # a -> b -> a would load each other until Python's recursion limit
        names = " -> ".join(p.name for p in chain[chain.index(teacher.resolve()):] + (teacher.resolve(),))
        c.fail(f"teachers form a cycle ({names}); a teacher must not learn from its student", "teacher")
    token = _TEACHER_CHAIN.set(chain)
    try:
        taught = load_teacher(teacher)
    except SpecError as error:
        c.fail(f"the teacher's spec is invalid ({error})", "teacher")
    finally:
        _TEACHER_CHAIN.reset(token)
    if taught.pseudo is not None:
        c.fail(f"{teacher} has pseudo-labels of its own; one round of pseudo-labelling is supported", "teacher")
    if (Path(taught.data.root).resolve(), taught.data.labels) != (Path(data.root).resolve(), data.labels):
        c.fail(f"{teacher} trains on {taught.data.root} ({taught.data.labels}), not this spec's data", "teacher")
    if data.extra_targets:
        c.fail("is not supported with data.extra_targets", "teacher")
    if split.folds is None and split.seed is None:
        c.fail("needs a fixed split (split.folds, or split.seed): a fresh random split per run has no teacher "
               "that held out the same images", "teacher")
    if taught.split != split:
        c.fail(f"{teacher} splits as {taught.split}, this spec as {split}: a student needs teacher runs that held "
               f"out its own validation images, so the splits must be the same", "teacher")
    return pseudo


def check_pseudo_models(file: Path, pseudo: PseudoSpec | None, models) -> None:
    """A weight other than 1 is carried by soft targets, which timm's Mixup cannot take."""
    if pseudo is None or abs(pseudo.weight - 1.0) < _TOLERANCE:
        return
    for i, model in enumerate(models):
        if model.mixup or model.cutmix:
            raise spec_error(file, "pseudo.weight", f"a weight other than 1 cannot be used with mixing "
                                                    f"(models[{i}].{'mixup' if model.mixup else 'cutmix'})")
