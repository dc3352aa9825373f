"""Meta-reinforcement learning: task families of environments, policies, rollouts.

* :mod:`fewshot.rl.envs`: the family interface, vectorised in torch; built in:
  :mod:`~fewshot.rl.navigation` (2D navigation, Finn et al., 2017, arXiv:1703.03400),
  :mod:`~fewshot.rl.bandit` and :mod:`~fewshot.rl.mdp` (Bernoulli bandits and random
  tabular MDPs, Duan et al., 2016, RL², arXiv:1611.02779).
* :mod:`fewshot.rl.gym`: any task behind the Gymnasium ``Env`` API, and a user's
  Gymnasium environments as a family (needs ``pip install 'fewshot[rl]'``).
* :mod:`fewshot.rl.tasks`: seeded task suites, the sampler the trainer and evaluation use.
* :mod:`fewshot.rl.rollouts` and :mod:`fewshot.rl.policies`: rollouts, the linear
  feature baseline, REINFORCE, Gaussian and categorical policies.

MAML for policies is the method ``maml-rl`` (:mod:`fewshot.methods.maml_rl`).
"""

from .bandit import BernoulliBandit
from .envs import EnvFamily, VectorEnv
from .mdp import TabularMDP
from .navigation import Navigation2D
from .rollouts import LinearFeatureBaseline, Rollouts, advantages, discounted_returns, policy_gradient_loss, rollout
from .tasks import ENV_FAMILIES, EnvTaskSampler, RLTask, sampler_class

__all__ = ["BernoulliBandit", "ENV_FAMILIES", "EnvFamily", "EnvTaskSampler", "LinearFeatureBaseline",
           "Navigation2D", "RLTask", "Rollouts", "TabularMDP", "VectorEnv", "advantages", "discounted_returns",
           "policy_gradient_loss", "rollout", "sampler_class"]
