"""Anderson acceleration study: deterministic and minibatch problems vs tuned baselines."""
