"""evoplast: discover local plasticity rules with meta-learned feedback, by evolution strategies.

The core (``config``, ``genome``, ``network``, ``rules``, ``learners``, ``lifetime``, ``tasks``,
``evaluation``) is pure tensor code and imports neither Ray nor MLflow; ``evolution`` drives EvoTorch
and Ray, ``tracking`` talks to MLflow.
"""

__version__ = "0.1.0"
