"""Running the models of a comparison: each run trained and measured, in this process or a process of its own.

:func:`measure` trains one run and gives the fields of its row that depend on the run (metrics, times,
speeds, peak memory); :func:`train_runs` runs a comparison's runs one after another or ``jobs`` side by
side, each in a ``spawn`` process (its own peak memory; a crash or an out-of-memory kill stays contained).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from ..data import Samples
from ..files import write_text_atomic
from ..reports.comparison import METRICS
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import TrainConfig, autocast_dtype
from .frameworks import train
from .rundir import RunDir
from .workers import log_like_parent, logging_of_this_process, running_task, threads_per_job, watch_parent

__all__ = ["RunningChildren", "failure_row", "measure", "peak_rss_mib", "run_in_process", "run_isolated", "train_runs"]

logger = logging.getLogger(__name__)

INFERENCE_MIN_SECONDS = 0.5  # keep timing batches until this much time has passed ...
INFERENCE_MAX_BATCHES = 100  # ... or this many batches


def measure(config: TrainConfig, splits: dict[str, Samples], peak_rss: bool) -> dict[str, Any]:
    """Train one model and time its inference; the fields of its row that depend on the run."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(config, splits=splits)
    speeds = [h["images_per_second"] for h in result.history if h.get("images_per_second")]
    row: dict[str, Any] = {k: result.metrics.get(k) for key in METRICS for k in (key, f"{key}_ci")}
    row.update(
        status="ok",
        error=None,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        train_images_per_second=statistics.median(speeds) if speeds else None,
        inference_images_per_second=_torch_speed(config, result.run_dir)
        if config.framework == "torch"
        else _keras_speed(config, result.run_dir),
        peak_memory_mib=None,
        warnings=list(result.metrics.get("warnings") or []),
    )
    if cuda:
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    elif peak_rss:
        row["peak_memory_mib"] = peak_rss_mib()
    return row


@torch.inference_mode()
def _torch_speed(config: TrainConfig, run_dir: Path) -> float:
    """Images/s of the best checkpoint on one fixed batch, eval mode, the training precision."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = autocast_dtype(config.precision, device)
    channels_last = config.channels_last if config.channels_last is not None else amp_dtype is not None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model_from_checkpoint(load_checkpoint(RunDir(run_dir).best("torch")))
    model.to(device, memory_format=memory_format).eval()
    size = config.image_size
    x = torch.randn(config.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device, memory_format=memory_format)

    def forward() -> None:
        if amp_dtype is None:
            model(x)
        else:
            with torch.autocast(device.type, dtype=amp_dtype):
                model(x)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    forward()  # warm-up: allocator, cuDNN algorithm choice, lazy initialisation
    sync()
    batches, start = 0, time.perf_counter()
    while True:
        forward()
        batches += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= INFERENCE_MIN_SECONDS or batches >= INFERENCE_MAX_BATCHES:
            return batches * config.batch_size / elapsed


def _keras_speed(config: TrainConfig, run_dir: Path) -> float:
    """Images/s of a Keras-trained run's best.keras, timed like :func:`_torch_speed`."""
    from ..keras_backend import use_backend_for_reading

    use_backend_for_reading(RunDir(run_dir).best("keras"))  # runs trained in other processes: Keras not loaded yet
    from .keras_fit import keras_inference_speed

    return keras_inference_speed(run_dir, config.batch_size, config.image_size, INFERENCE_MIN_SECONDS)


def peak_rss_mib() -> float:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def failure_row(error: BaseException | str) -> dict[str, Any]:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"status": "failed", "error": " ".join(str(message).split())}  # one line, for the table


def run_in_process(config: TrainConfig, splits: dict[str, Samples]) -> dict[str, Any]:
    try:
        return measure(config, splits, peak_rss=False)
    except Exception as error:  # one model's failure must not stop the comparison
        logger.exception(f"compare: {config.model} failed while training")
        return failure_row(error)


def _child(
    config: TrainConfig,
    splits: dict[str, Samples],
    result_path: str,
    threads: int,
    logging_setup: tuple[int, bool],
    parent_pid: int,
) -> None:
    """Entry point of the spawned process: train, then write the measured row as JSON."""
    watch_parent(parent_pid)  # a killed parent takes this run down (it saves first)
    log_like_parent(*logging_setup)
    torch.set_num_threads(threads)
    baseline = peak_rss_mib()  # the interpreter, PyTorch and resnexus, before any training
    try:
        with running_task():
            row = measure(config, splits, peak_rss=True)
    except KeyboardInterrupt as stopped:  # stopped by the parent, saved: no row, no traceback
        sys.exit(getattr(stopped, "exit_code", 130))
    except Exception as error:  # reported in the row; the parent reads it
        logger.exception(f"compare: {config.model} failed while training")
        row = failure_row(error)
    row["baseline_memory_mib"] = baseline
    write_text_atomic(result_path, json.dumps(row))


class RunningChildren:
    """The training processes running now, so that Ctrl-C in the parent stops every one of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[multiprocessing.process.BaseProcess] = set()
        self.stopping = False

    def start(self, process: multiprocessing.process.BaseProcess) -> bool:
        with self.lock:
            if self.stopping:
                return False
            process.start()
            self.live.add(process)
            return True

    def done(self, process: multiprocessing.process.BaseProcess) -> None:
        with self.lock:
            self.live.discard(process)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.live:
                process.terminate()


def run_isolated(
    config: TrainConfig, splits: dict[str, Samples], threads: int | None = None, children: RunningChildren | None = None
) -> dict[str, Any]:
    """One model in a fresh ``spawn`` process: its own peak memory, and a crash stays contained."""
    ctx = multiprocessing.get_context("spawn")
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)  # a fold run's model folder may not exist yet
    fd, result_path = tempfile.mkstemp(prefix=".compare-", suffix=".json", dir=Path(config.out).parent)
    os.close(fd)
    try:
        threads = threads or torch.get_num_threads()
        args = (config, splits, result_path, threads, logging_of_this_process(), os.getpid())
        process = ctx.Process(target=_child, args=args, name=f"compare-{Path(config.out).name}")
        if children is None:
            process.start()
        elif not children.start(process):
            return failure_row("not started: the comparison was stopped")
        try:
            process.join()
        except BaseException:  # Ctrl-C: do not leave the child training on its own
            process.terminate()
            process.join()
            raise
        finally:
            if children is not None:
                children.done(process)
        try:
            return json.loads(Path(result_path).read_text())
        except (OSError, ValueError):  # missing or empty: the child died before writing its row
            return failure_row(
                f"training process exited with code {process.exitcode} without a result "
                "(killed, e.g. out of memory? its output above may say why)"
            )
    finally:
        Path(result_path).unlink(missing_ok=True)


def train_runs(
    todo: Sequence[tuple[tuple[str, str], TrainConfig]],
    runs: dict[str, dict[str, Samples]],
    isolate: bool,
    jobs: int,
    log: Any,
) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """``((model, fold run tag), measured row)`` for each run of ``todo``, as each finishes: one after
    another, or ``jobs`` isolated processes at once (threads here only wait for them).

    Not workers.run_side_by_side's process pool: a pool's worker trains run after run, so its peak
    memory would not be one run's, and a run killed for memory would break the pool for the rest."""
    if jobs == 1:
        run = run_isolated if isolate else run_in_process
        for i, ((name, tag), config) in enumerate(todo, 1):
            log(f"compare [{i}/{len(todo)}]{f' fold run {tag}' if tag else ''}: {name} -> {config.out}")
            yield (name, tag), run(config, runs[tag])
        return
    threads = threads_per_job(jobs)
    log(f"compare: {len(todo)} runs, {jobs} side by side with {threads} thread(s) each")
    children = RunningChildren()
    with ThreadPoolExecutor(jobs, thread_name_prefix="compare") as pool:
        futures = {
            pool.submit(run_isolated, config, runs[key[1]], threads, children): (key, config) for key, config in todo
        }
        try:
            for i, future in enumerate(as_completed(futures), 1):
                (name, tag), config = futures[future]
                log(f"compare [{i}/{len(todo)}] finished{f' fold run {tag}' if tag else ''}: {name} -> {config.out}")
                yield (name, tag), future.result()
        except BaseException:  # Ctrl-C or a failure here: no run goes on training on its own
            children.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
