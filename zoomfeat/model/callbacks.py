"""Step callbacks: how a sampler shows its state to observers (recorders, progress bars, previews).

Every iterative algorithm of zoomfeat (DDIM/PLMS here; the joint large-image sampler, its
constraint iterations, super-resolution, seam post-processing, condition inversion and the CDM in
:mod:`zoomfeat.generation`) takes ``callback: StepCallback | None`` and calls
``callback(step, t, state)`` once at the end of each step, as diffusers' pipelines call
``callback_on_step_end(pipe, step, timestep, callback_kwargs)``. The algorithm computes nothing
for its observers: the state holds the tensors the step computed anyway, and an observer that
wants more (another noise term, a decoded preview) computes it from the state.

Observers must not modify the tensors they are shown; keep references (they are not reused by
the sampler) or ``clone()`` them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Protocol

import torch

from zoomfeat.runtime.errors import ConfigError


@dataclass(frozen=True)
class StepState:
    """What one step of a sampler computed.

    Attributes:
        stage: which loop emitted it (``"ddim"``, ``"plms"``, ``"joint"``, ``"constraint"``,
            ``"superres"``, ``"post"``, ``"inversion"``, ``"cdm"``, ``"decode"``); each sampler's docstring
            lists its stages and the ``tensors`` they carry.
        latents: the state after the step (x_{t-1} of a denoising step; the optimised grid of an
            inversion step).
        x0hat: the step's estimate of the clean sample, when the step computed one.
        eps: the noise prediction the step used, when it has one.
        noise: the fresh noise z the step drew, when it drew one.
        tensors: further named intermediates of the stage.
        outer: the position of this step in the enclosing loops, e.g. ``{"step": 3,
            "first_tile": 16}`` for a constraint iteration of the joint sampler's step 3 on the
            tile chunk that starts at tile 16; empty for a top-level loop.
    """

    stage: str
    latents: torch.Tensor
    x0hat: torch.Tensor | None = None
    eps: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    outer: Mapping[str, int] = field(default_factory=dict)


class StepCallback(Protocol):
    """``callback(step, t, state)``: called at the end of every step of a sampler.

    ``step`` counts from 0 in the order the steps run; ``t`` is the step's timestep as the sampler
    indexes its schedule (the UNet's timestep; the respaced index for the CDM; the inner
    iteration's parent timestep for constraint iterations).
    """

    def __call__(self, step: int, t: int, state: StepState) -> None: ...


def within(callback: StepCallback | None, **outer: int) -> StepCallback | None:
    """``callback`` with ``outer`` added to every state's ``outer`` (None stays None).

    Nested loops use it: the joint sampler hands its constraint iterations
    ``within(callback, step=s, first_tile=start)``.
    """
    if callback is None:
        return None
    cb = callback

    def nested(step: int, t: int, state: StepState) -> None:
        cb(step, t, replace(state, outer={**outer, **state.outer}))

    return nested


def chain(*callbacks: StepCallback | None) -> StepCallback | None:
    """One callback calling each given one in order (None entries skipped; None if none remain)."""
    cbs = [c for c in callbacks if c is not None]
    if not cbs:
        return None

    def all_of(step: int, t: int, state: StepState) -> None:
        for c in cbs:
            c(step, t, state)

    return all_of


@dataclass
class Record:
    """One observed step."""

    step: int
    t: int
    state: StepState


class Recorder:
    """A callback that keeps every state it sees, by stage (tests, debugging, notebooks).

    >>> rec = Recorder()
    >>> model.sample(context, steps=5, callback=rec)          # doctest: +SKIP
    >>> torch.stack(rec.get("ddim", "x0hat"))                 # doctest: +SKIP
    """

    def __init__(self, stages: Iterable[str] | None = None):
        self.stages = None if stages is None else frozenset(stages)
        self.records: list[Record] = []

    def __call__(self, step: int, t: int, state: StepState) -> None:
        if self.stages is None or state.stage in self.stages:
            self.records.append(Record(step, t, state))

    def states(self, stage: str, **outer: int) -> list[StepState]:
        """The states of ``stage`` in the order seen, those whose ``outer`` matches ``outer``."""
        return [
            r.state
            for r in self.records
            if r.state.stage == stage and all(r.state.outer.get(k) == v for k, v in outer.items())
        ]

    def get(self, stage: str, name: str, **outer: int) -> list[torch.Tensor]:
        """One tensor per state of ``stage``: a field (``latents``, ``x0hat``, ``eps``, ``noise``)
        or an entry of ``tensors``."""
        out = []
        for s in self.states(stage, **outer):
            v = s.tensors[name] if name in s.tensors else getattr(s, name, None)
            if not isinstance(v, torch.Tensor):
                raise KeyError(f"stage {stage!r} step has no tensor {name!r}")
            out.append(v)
        return out


class ProgressBar:
    """A tqdm bar advanced by the steps of one stage: ``with ProgressBar(50, "PLMS") as bar:``.

    Use it as the sampler's callback (or :func:`chain` it with others); ``stage=None`` counts
    every step of any stage.
    """

    def __init__(self, total: int, desc: str, stage: str | None = None, disable: bool = False):
        from tqdm.auto import tqdm

        if total < 0:
            raise ConfigError(f"a progress bar needs a total >= 0, got {total}")
        self.stage = stage
        self.n = 0  # steps seen (also when the bar is disabled)
        self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, disable=disable)

    def __call__(self, step: int, t: int, state: StepState) -> None:
        if self.stage is None or state.stage == self.stage:
            self.n += 1
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: the plain-function form of :class:`StepCallback`, for annotations that want a Callable
StepFn = Callable[[int, int, StepState], None]

__all__ = ["ProgressBar", "Record", "Recorder", "StepCallback", "StepFn", "StepState", "chain", "within"]
