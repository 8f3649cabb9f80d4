"""aharl: a GRPO trainer on Ray, vLLM and DeepSpeed."""

__version__ = "0.1.0"
