"""fewshot: learn new tasks from a few examples.

Meta-learning, transfer learning and model selection, all judged by one evaluation
protocol: fixed, seeded suites of N-way K-shot episodes, accuracy ± 95% CI.
"""

__version__ = "0.1.0"
