"""Evaluation: accuracy and format compliance of a policy, and the before/after report."""
