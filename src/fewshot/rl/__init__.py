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
* :mod:`fewshot.rl.trpo`: TRPO's constrained step (conjugate gradient on Fisher-vector
  products, KL-checked line search), MAML-RL's ``outer="trpo"``.
* :mod:`fewshot.rl.recurrent`: the GRU policy of RL² whose memory spans a trial, trial
  rollouts and GAE.

MAML for policies is the method ``maml-rl`` (:mod:`fewshot.methods.maml_rl`); RL² is
``rl2`` (:mod:`fewshot.methods.rl2`).
"""

from .bandit import BernoulliBandit
from .envs import EnvFamily, VectorEnv
from .mdp import TabularMDP
from .navigation import Navigation2D
from .recurrent import GRUPolicy, Trials, gae, trial_rollout
from .rollouts import LinearFeatureBaseline, Rollouts, advantages, discounted_returns, policy_gradient_loss, rollout
from .tasks import ENV_FAMILIES, EnvTaskSampler, RLTask, sampler_class
from .trpo import TRPOStep, conjugate_gradient, fisher_vector_product, trpo_step

__all__ = ["BernoulliBandit", "ENV_FAMILIES", "EnvFamily", "EnvTaskSampler", "GRUPolicy", "LinearFeatureBaseline",
           "Navigation2D", "RLTask", "Rollouts", "TRPOStep", "TabularMDP", "Trials", "VectorEnv", "advantages",
           "conjugate_gradient", "discounted_returns", "fisher_vector_product", "gae", "policy_gradient_loss",
           "rollout", "sampler_class", "trial_rollout", "trpo_step"]
