"""Experiments: traffic split between routing strategies, by a stable hash.

A job's arm depends only on the experiment's name and the job id (or its customer), never on the
process, the time or the order of arrival: a re-run, or the same customer tomorrow, lands in the
same arm, and any worker can recompute it.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from ladder.messages import Job

_SCALE = float(1 << 64)


def bucket(salt: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by `salt` and `key` (blake2b: Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


class Arm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    strategy: str
    share: float


class Experiment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Traffic of the jobs in scope split between arms by share; the first arm is the control."""

    name: str
    arms: list[Arm]
    split_by: Literal["job", "customer"] = "job"
    features: list[str] = []  # empty: every feature
    customers: list[str] = []  # empty: every customer
    enabled: bool = True

    def covers(self, job: Job) -> bool:
        return (
            self.enabled
            and (not self.features or job.feature in self.features)
            and (not self.customers or job.customer in self.customers)
        )

    def arm_for(self, job: Job) -> Arm:
        point = bucket(self.name, job.customer if self.split_by == "customer" else job.id)
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if point < edge:
                return arm
        return self.arms[-1]  # shares summing to 1 - 1e-12 must not leave a gap at the top


class Assignment(msgspec.Struct, frozen=True):
    strategy: str
    experiment: str = ""
    arm: str = ""


def assign(experiments: list[Experiment], default_strategy: str, job: Job) -> Assignment:
    """The first enabled experiment whose scope covers the job decides its strategy."""
    for experiment in experiments:
        if experiment.covers(job):
            arm = experiment.arm_for(job)
            return Assignment(arm.strategy, experiment.name, arm.name)
    return Assignment(default_strategy)


def experiment_problem(experiment: Experiment, strategies: set[str]) -> str | None:
    """What is wrong with an experiment of the policies file, naming the field; None when fine."""
    where = f"experiments.{experiment.name}"
    if len(experiment.arms) < 2:
        return f"{where}.arms: an experiment needs at least two arms"
    names = [a.name for a in experiment.arms]
    if len(set(names)) != len(names):
        return f"{where}.arms: duplicate arm names in {names}"
    for arm in experiment.arms:
        if not 0.0 < arm.share <= 1.0:
            return f"{where}.arms.{arm.name}.share: {arm.share} must be above 0 and at most 1"
        if arm.strategy not in strategies:
            known = ", ".join(sorted(strategies))
            return f"{where}.arms.{arm.name}.strategy: unknown strategy '{arm.strategy}' (known: {known})"
    total = sum(a.share for a in experiment.arms)
    if abs(total - 1.0) > 1e-6:
        return f"{where}.arms: shares add up to {total:g}, not 1"
    return None
