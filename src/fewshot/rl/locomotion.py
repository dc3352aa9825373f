"""Half-cheetah locomotion task families (Finn et al., 2017, arXiv:1703.03400, section 5.3), an
optional extra: ``pip install 'fewshot[locomotion]'`` (Gymnasium's MuJoCo environments;
the ``mujoco`` wheel ships its simulator).

Both wrap Gymnasium's ``HalfCheetah-v5`` (17-d observations, 6-d actions in [-1, 1],
``dt`` 0.05 s) and replace its reward, as the authors' and ProMP's (Rothfuss et al.,
2018, arXiv:1810.06784) code do, with a control cost of ``0.05 |a|²``:

* ``half-cheetah-direction``: the task is a direction ``d ∈ {-1, +1}`` drawn with equal
  probability; reward ``d · v_x - 0.05 |a|²`` (run forward or backward);
* ``half-cheetah-velocity``: the task is a target speed ``v*`` uniform in [0, 2];
  reward ``-|v_x - v*| - 0.05 |a|²``.

Episodes last ``horizon`` steps (200, as Finn et al.). They are stepped in a Python loop
through :class:`fewshot.rl.gym.GymnasiumFamily`. :func:`register_locomotion` adds both
to the task-family registry, so ``--env half-cheetah-direction`` trains on them.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .gym import GymnasiumFamily, gymnasium

HORIZON = 200
CONTROL_COST = 0.05
VELOCITY_RANGE = (0.0, 2.0)


def available() -> str | None:
    """``None`` where the MuJoCo environments can run, else why not (one line)."""
    if gymnasium is None:
        return "gymnasium is not installed (pip install 'fewshot[locomotion]')"
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return "the mujoco package is not installed (pip install 'fewshot[locomotion]')"
    return None


if gymnasium is not None:
    class TaskReward(gymnasium.Wrapper):
        """``HalfCheetah-v5`` with a task's reward (see the module docstring)."""

        def __init__(self, kind: str, value: float):
            super().__init__(gymnasium.make("HalfCheetah-v5").unwrapped)
            self.kind, self.value = kind, float(value)

        def step(self, action):
            obs, _, terminated, truncated, info = self.env.step(action)
            velocity, control = float(info["x_velocity"]), CONTROL_COST * float(np.sum(np.square(action)))
            progress = self.value * velocity if self.kind == "direction" else -abs(velocity - self.value)
            return obs, progress - control, terminated, truncated, info


def _family(kind: str, sample, horizon: int) -> GymnasiumFamily:
    problem = available()
    if problem is not None:
        raise ConfigError(f"half-cheetah-{kind} needs Gymnasium's MuJoCo environments: {problem}")
    return GymnasiumFamily(f"half-cheetah-{kind}", lambda params: TaskReward(kind, float(params[0])), sample,
                           horizon)


def half_cheetah_direction(horizon: int = HORIZON) -> GymnasiumFamily:
    """Run forward or backward (see the module docstring)."""
    return _family("direction", lambda rng: np.array([rng.choice([-1.0, 1.0])]), horizon)


def half_cheetah_velocity(horizon: int = HORIZON) -> GymnasiumFamily:
    """Run at a target speed (see the module docstring)."""
    return _family("velocity", lambda rng: np.array([rng.uniform(*VELOCITY_RANGE)]), horizon)


def register_locomotion(horizon: int = HORIZON) -> list[str]:
    """Add both families to :data:`fewshot.data.tasks.TASK_FAMILIES`; returns their names."""
    from ..data.tasks import TASK_FAMILIES  # the data layer's registry (it imports this package)
    from .tasks import sampler_class

    names = []
    for family in (half_cheetah_direction(horizon), half_cheetah_velocity(horizon)):
        if family.name not in TASK_FAMILIES:
            TASK_FAMILIES.register(family.name, sampler_class(family, hidden=[100, 100]))
        names.append(family.name)
    return names


__all__ = ["available", "half_cheetah_direction", "half_cheetah_velocity", "register_locomotion"]
