"""Learning-rate schedules: warm-up + cosine, and warmup-stable-decay with its two cooldown
shapes, checked against values worked out by hand; WSD settings refused when they cannot work."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from isoflop.errors import UserError
from isoflop.optimization import learning_rate_at
from isoflop.study_config import StudyConfig, TrainConfig
from train_support import tiny_spec

PEAK = 1e-3
FLOOR = 0.1  # min_lr_fraction


def schedule_spec(schedule: str, shape: str = "1-sqrt", cooldown_start_step: int | None = 6):
    """10 steps, 2 of warm-up, peak 1e-3, floor 0.1 x peak; WSD cooling down from step 6."""
    spec = tiny_spec(steps=10, schedule=schedule, cooldown_shape=shape, min_lr_fraction=FLOOR)
    return replace(spec, learning_rate=PEAK, warmup_steps=2, steps=10,
                   cooldown_start_step=cooldown_start_step if schedule == "wsd" else None)


def rates(spec) -> list[float]:
    return [learning_rate_at(step, spec) for step in range(spec.steps)]


def test_wsd_warms_up_holds_the_peak_then_cools_down_as_1_minus_sqrt() -> None:
    # cooldown steps 6..9 are progress 1/4, 2/4, 3/4, 1: factor 1 - sqrt(progress)
    factors = [1 - math.sqrt(0.25), 1 - math.sqrt(0.5), 1 - math.sqrt(0.75), 0.0]
    expected = [PEAK / 2, PEAK, PEAK, PEAK, PEAK, PEAK] + [PEAK * (FLOOR + (1 - FLOOR) * f) for f in factors]
    assert rates(schedule_spec("wsd")) == pytest.approx(expected, rel=1e-12)
    assert rates(schedule_spec("wsd"))[-1] == pytest.approx(FLOOR * PEAK)


def test_linear_cooldown() -> None:
    expected = [PEAK / 2] + [PEAK] * 5 + [PEAK * (FLOOR + (1 - FLOOR) * f) for f in (0.75, 0.5, 0.25, 0.0)]
    assert rates(schedule_spec("wsd", "linear")) == pytest.approx(expected, rel=1e-12)


def test_a_trunk_holds_the_peak_to_its_end_and_a_branch_follows_it_up_to_its_fork() -> None:
    trunk = schedule_spec("wsd", cooldown_start_step=None)
    assert rates(trunk) == pytest.approx([PEAK / 2] + [PEAK] * 9, rel=1e-12)
    branch = replace(schedule_spec("wsd"), steps=14, cooldown_start_step=9)
    assert rates(branch)[:9] == rates(trunk)[:9]
    assert rates(branch)[9] < PEAK and rates(branch)[-1] == pytest.approx(FLOOR * PEAK)


def test_cosine_is_unchanged() -> None:
    spec = schedule_spec("cosine")
    # after warm-up, progress (step - 2) / 7 over steps 2..9: cos(0) = 1 at step 2, cos(pi) = -1 at step 9
    assert learning_rate_at(2, spec) == pytest.approx(PEAK)
    middle = PEAK * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * 3 / 7)))
    assert learning_rate_at(5, spec) == pytest.approx(middle)
    assert learning_rate_at(9, spec) == pytest.approx(FLOOR * PEAK)


def test_cooldown_steps_are_the_fraction_of_the_run_rounded() -> None:
    train = TrainConfig(schedule="wsd")
    assert [train.cooldown_steps(steps) for steps in (1, 3, 10, 1035, 2164)] == [1, 1, 2, 207, 433]


@pytest.mark.parametrize("values, field", [
    ({"schedule": "step"}, "train.schedule"),
    ({"schedule": "wsd", "cooldown_shape": "cubic"}, "train.cooldown_shape"),
    ({"schedule": "wsd", "cooldown_fraction": 0.0}, "train.cooldown_fraction"),
    ({"schedule": "wsd", "cooldown_fraction": 1.5}, "train.cooldown_fraction"),
    ({"schedule": "wsd", "warmup_fraction": 0.5, "cooldown_fraction": 0.6}, "train.cooldown_fraction"),
    ({"eval_every_tokens": -1}, "train.eval_every_tokens"),
])
def test_impossible_schedules_are_refused(values: dict, field: str) -> None:
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        TrainConfig(**values)


def test_cooldown_branches_need_the_wsd_schedule() -> None:
    with pytest.raises(UserError, match="set train.schedule=wsd"):
        StudyConfig(name="s", budgets=[1e12], methods={"dense": {"family": "dense"}}, strategy="cooldown_branches")


def test_settings_a_run_does_not_use_are_not_written_to_run_json() -> None:
    cosine = tiny_spec(steps=10).to_dict()
    assert not {"schedule", "cooldown_fraction", "cooldown_shape", "eval_every_tokens"} & set(cosine["train"])
    assert not {"cooldown_start_step", "fork_steps", "trunk_id"} & set(cosine)
    wsd = tiny_spec(steps=10, schedule="wsd")
    assert wsd.to_dict()["train"]["schedule"] == "wsd" and wsd.to_dict()["cooldown_start_step"] == 8
    assert type(wsd).from_dict(wsd.to_dict()) == wsd
