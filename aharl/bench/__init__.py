"""Benchmarks that print figures: rollout backends side by side, and the GRPO step against TRL."""
