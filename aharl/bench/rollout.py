"""``aharl bench rollout``: vLLM against plain HF ``generate`` on identical requests.

Both backends get the same prompts (token ids) and the same sampling settings
for every batch shape; each runs in its own process so that its peak memory
is its own. Per run: completion tokens/s (tokens up to and including EOS, no
padding), sequences/s, seconds per prompt group, peak memory.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from aharl.config import Config
from aharl.errors import AharlError
from aharl.rollout.backends import build_rollout_engine
from aharl.rollout.engine import SamplingSettings
from aharl.rollout.hf_engine import completion_length
from aharl.types import Prompt, RolloutGroup


@dataclass(frozen=True)
class Shape:
    """A batch of ``prompts`` prompts with ``n`` completions each."""

    prompts: int
    n: int

    @classmethod
    def parse(cls, text: str) -> "Shape":
        prompts, _, n = text.strip().lower().partition("x")
        if not (prompts.isdigit() and n.isdigit() and int(prompts) >= 1 and int(n) >= 1):
            raise AharlError(f"batch shape {text!r} is not PROMPTSxN; write e.g. --shapes 1x16,4x16")
        return cls(int(prompts), int(n))

    def __str__(self) -> str:
        return f"{self.prompts}x{self.n}"


@dataclass(frozen=True)
class Request:
    """Exactly what one timed (or warm-up) call gives a backend."""

    shape: Shape
    repeat: int  # -1 for the warm-up
    prompts: tuple[Prompt, ...]
    settings: SamplingSettings


@dataclass
class RunResult:
    backend: str
    shape: str
    repeat: int
    seconds: float
    sequences: int
    completion_tokens: int
    tokens_per_s: float
    sequences_per_s: float
    seconds_per_group: float
    peak_memory_bytes: int = 0


def plan_requests(
    prompts: Sequence[Prompt], shapes: Sequence[Shape], *, max_tokens: int, repeats: int, seed: int, ignore_eos: bool
) -> list[Request]:
    """The full list of calls, identical for every backend: a warm-up, then ``repeats`` per shape.

    Sampling is temperature 1, top_p 1 (the raw model distribution), and each
    repeat takes the next prompts and its own seed, so no run is a replay.
    """
    requests = [
        Request(
            shapes[0],
            -1,
            tuple(prompts[: shapes[0].prompts]),
            SamplingSettings(shapes[0].n, 1.0, 1.0, max_tokens, seed, ignore_eos),
        )
    ]
    cursor = 0
    for shape in shapes:
        for repeat in range(repeats):
            chosen = tuple(prompts[(cursor + i) % len(prompts)] for i in range(shape.prompts))
            cursor += shape.prompts
            requests.append(
                Request(
                    shape,
                    repeat,
                    chosen,
                    SamplingSettings(shape.n, 1.0, 1.0, max_tokens, seed + 1 + repeat, ignore_eos),
                )
            )
    return requests


def count_completion_tokens(groups: Sequence[RolloutGroup], eos_id: int | None, ignore_eos: bool = False) -> int:
    """Generated tokens up to and including each completion's first EOS; padding never counts."""
    return sum(completion_length(c.token_ids, eos_id, ignore_eos) for g in groups for c in g.completions)


def run_requests(backend: str, engine, requests: Sequence[Request], eos_id: int | None) -> list[RunResult]:
    """Time each request on ``engine`` (the warm-up is run, not reported)."""
    results = []
    for request in requests:
        started = time.perf_counter()
        groups = engine.generate(list(request.prompts), request.settings)
        seconds = time.perf_counter() - started
        if request.repeat < 0:
            continue
        tokens = count_completion_tokens(groups, eos_id, request.settings.ignore_eos)
        sequences = sum(len(g.completions) for g in groups)
        results.append(
            RunResult(
                backend,
                str(request.shape),
                request.repeat,
                seconds,
                sequences,
                tokens,
                tokens / seconds,
                sequences / seconds,
                seconds / len(groups),
            )
        )
    return results


# ---------------------------------------------------------------------------
# One process per backend


def _backend_main(backend: str, config: Config, device: str, requests: list[Request], queue) -> None:
    # A process group of its own: vLLM's engine processes join it, so the parent
    # can stop them all even after this process has exited (they outlive it).
    os.setpgid(0, 0)
    try:
        engine = build_rollout_engine(config, device, backend)
        queue.put(("ok", [asdict(r) for r in run_requests(backend, engine, requests, engine.eos_id)]))
        if hasattr(engine, "shutdown"):
            engine.shutdown()  # before os._exit below, or vLLM's shared memory stays in /dev/shm
    except Exception as exc:  # reported to the parent as one line
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        # Leave at once: a failed engine's exit handlers can wait on its
        # processes, which the parent reaps instead.
        queue.close()
        queue.join_thread()
        os._exit(1)
    # A normal exit after the engine's own shutdown: the interpreter's
    # finalizers release what vLLM created here (a semaphore that os._exit leaked).
    queue.close()
    queue.join_thread()


class PeakMemory:
    """Samples the resident memory of a process tree (and the GPU's used memory) until stopped."""

    def __init__(self, pid: int, gpu: bool) -> None:
        self.pid, self.gpu = pid, gpu
        self.peak_rss = 0
        self.peak_gpu = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        if self.gpu:
            import torch

            free, total = torch.cuda.mem_get_info()
            self._gpu_base = total - free
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak_rss = max(self.peak_rss, rss)
            except psutil.Error:
                pass
            if self.gpu:
                import torch

                free, total = torch.cuda.mem_get_info()
                self.peak_gpu = max(self.peak_gpu, total - free - self._gpu_base)
            self._stop.wait(0.1)


def run_backend(
    backend: str, config: Config, device: str, requests: list[Request], timeout_s: float = 3600
) -> list[RunResult]:
    """Run one backend in a fresh process; peak memory is that process tree's (or the GPU's)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_backend_main, args=(backend, config, device, requests, queue))
    process.start()
    with PeakMemory(process.pid, gpu=device == "cuda") as memory:
        try:
            status, payload = queue.get(timeout=timeout_s)
        finally:
            _reap(process)
    if status != "ok":
        raise AharlError(f"the {backend} backend failed: {payload}")
    peak = memory.peak_gpu if device == "cuda" else memory.peak_rss
    return [RunResult(**{**row, "peak_memory_bytes": peak}) for row in payload]


def _reap(process) -> None:
    """Stop a backend process and everything it started (vLLM's engine core and workers).

    The backend leads its own process group, which its engine processes
    inherit; the group is killed whole, so none is left behind even when the
    backend exited first (its children then belong to init, not to it).
    """
    process.join(timeout=10)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing of the group is left
    if process.is_alive():  # it never got to lead its group
        process.kill()
    process.join()


# ---------------------------------------------------------------------------
# Summaries


def summarise(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Median and min-max per backend and shape."""
    rows = []
    keys = sorted(
        {(r.backend, r.shape) for r in results}, key=lambda k: (Shape.parse(k[1]).prompts * Shape.parse(k[1]).n, k[0])
    )
    for backend, shape in keys:
        runs = [r for r in results if r.backend == backend and r.shape == shape]
        tps = [r.tokens_per_s for r in runs]
        rows.append(
            {
                "backend": backend,
                "shape": shape,
                "sequences": Shape.parse(shape).prompts * Shape.parse(shape).n,
                "runs": len(runs),
                "tokens_per_s": statistics.median(tps),
                "tokens_per_s_min": min(tps),
                "tokens_per_s_max": max(tps),
                "sequences_per_s": statistics.median(r.sequences_per_s for r in runs),
                "seconds_per_group": statistics.median(r.seconds_per_group for r in runs),
                "mean_completion_tokens": statistics.mean(r.completion_tokens / r.sequences for r in runs),
                "peak_memory_gib": max(r.peak_memory_bytes for r in runs) / 2**30,
            }
        )
    return rows


def ratios(rows: Sequence[dict[str, Any]], numerator: str = "vllm", denominator: str = "hf") -> dict[str, float]:
    """Median tokens/s of ``numerator`` over ``denominator``, per shape measured by both."""
    by = {(r["backend"], r["shape"]): r["tokens_per_s"] for r in rows}
    return {
        shape: by[(numerator, shape)] / by[(denominator, shape)]
        for (b, shape) in by
        if b == numerator and (denominator, shape) in by
    }


def markdown_table(rows: Sequence[dict[str, Any]], ratio: dict[str, float]) -> str:
    lines = [
        "| shape (prompts x n) | backend | tokens/s median (min-max) | sequences/s | s per group | tokens/completion | peak memory GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['backend']} | {r['tokens_per_s']:.1f} ({r['tokens_per_s_min']:.1f}-{r['tokens_per_s_max']:.1f}) "
            f"| {r['sequences_per_s']:.2f} | {r['seconds_per_group']:.2f} | {r['mean_completion_tokens']:.1f} | {r['peak_memory_gib']:.2f} |"
        )
    if ratio:
        lines += ["", "| shape | vLLM / HF tokens/s |", "|---|---|"]
        lines += [f"| {shape} | {value:.2f}x |" for shape, value in ratio.items()]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for backend in sorted({r["backend"] for r in rows}):
        mine = [r for r in rows if r["backend"] == backend]
        xs = [r["sequences"] for r in mine]
        ax.plot(xs, [r["tokens_per_s"] for r in mine], marker="o", label=backend)
        ax.fill_between(xs, [r["tokens_per_s_min"] for r in mine], [r["tokens_per_s_max"] for r in mine], alpha=0.2)
        for r in mine:
            ax.annotate(
                r["shape"], (r["sequences"], r["tokens_per_s"]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequences per call (prompts x completions)")
    ax.set_ylabel("completion tokens / s (median, min-max band)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Where it ran, and how close decoding came to the memory-bandwidth roofline

# Peak memory bandwidth in GB/s by device name (datasheets); override with --bandwidth-gbs.
GPU_BANDWIDTH_GBS = {
    "H200": 4800.0,
    "H100 80GB HBM3": 3350.0,  # SXM
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100": 1555.0,
    "RTX 4090": 1008.0,
    "RTX 3090": 936.0,
    "L40S": 864.0,
    "A10": 600.0,
    "L4": 300.0,
}


def environment(config: Config, device: str, args: Any) -> dict[str, Any]:
    import datetime
    import platform

    import torch
    import transformers

    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = None
    name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"
    )
    return {
        "date": datetime.date.today().isoformat(),
        "model": config.model.path,
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm_version,
        "max_tokens": args.max_tokens,
        "ignore_eos": args.ignore_eos,
        "repeats": args.repeats,
        "temperature": 1.0,
        "top_p": 1.0,
    }


def meta_line(meta: dict[str, Any]) -> str:
    return (
        f"{meta['date']}, {meta['device_name']}, model {meta['model']}, torch {meta['torch']}, vLLM {meta['vllm']}, "
        f"transformers {meta['transformers']}; temperature 1, top_p 1, {meta['max_tokens']} max tokens"
        f"{', ignore EOS' if meta['ignore_eos'] else ''}, {meta['repeats']} timed runs per shape after a warm-up"
    )


def weight_bytes(config: Config, device: str) -> int:
    """Bytes of parameters read per decode step (tied weights once), in the runtime dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aharl.device import rollout_dtype
    from aharl.modelhub import resolve_model_path

    model_config = AutoConfig.from_pretrained(resolve_model_path(config.model.path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters()) * rollout_dtype(config, device).itemsize


def roofline_share(
    rows: Sequence[dict[str, Any]], config: Config, device: str, bandwidth_gbs: float | None
) -> dict[str, Any] | None:
    """Achieved decode steps/s over ``bandwidth / weight bytes``, the bound when every step reads all weights.

    A decode step emits one token for each running sequence, so achieved
    steps/s is tokens/s divided by the sequences in the call (exact in the
    ignore-EOS mode, where all sequences run to the end). Reported on a GPU,
    or anywhere a bandwidth is given.
    """
    if bandwidth_gbs is None and device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        bandwidth_gbs = next((bw for key, bw in GPU_BANDWIDTH_GBS.items() if key in name), None)
    if bandwidth_gbs is None:
        return None
    per_step = weight_bytes(config, device)
    bound = bandwidth_gbs * 1e9 / per_step  # decode steps / s
    shares = {f"{r['backend']} {r['shape']}": (r["tokens_per_s"] / r["sequences"]) / bound for r in rows}
    return {"bandwidth_gbs": bandwidth_gbs, "weight_bytes": per_step, "bound_steps_per_s": bound, "share": shares}


def roofline_markdown(roofline: dict[str, Any] | None) -> str:
    if roofline is None:
        return ""
    lines = [
        "",
        f"Decode roofline: {roofline['weight_bytes'] / 1e9:.2f} GB of weights per step at {roofline['bandwidth_gbs']:.0f} GB/s "
        f"= {roofline['bound_steps_per_s']:.0f} steps/s at best.",
        "",
        "| backend shape | share of roofline |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.1%} |" for key, value in roofline["share"].items()]
    return "\n".join(lines) + "\n"
