"""Rollouts, pure: the state machine that moves a deployment from one variant or pool to another (``machine``),
the gates it checks (``gates``), the golden-prompt comparison (``quality``) and whether the new side fits beside
the old (``capacity``).

Where it sits: ``spec/rollout.py`` (the document) -> here (decisions as values) -> the runtime, which saves the
state, measures, and applies the actions (Ray controller and router; Kubernetes). Nothing here measures, sleeps or
talks to a cluster.
"""
