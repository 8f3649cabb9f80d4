"""Moving the learner's weights into the rollout engine (the learner's side)."""
