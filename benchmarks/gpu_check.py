"""One prepared check of distill on a CUDA machine: the real CLI on a synthetic CIFAR-10.

Writes a small synthetic CIFAR-10 in the real on-disk "python version" format (class-dependent
stripes and tints under noise, so it is learnable but not trivial), then runs
`python -m distill.cli.train` as a user would, in fresh processes:

1. `gpu`: resnet56 teacher (trained a few epochs, cached) -> resnet20 student, `trainer=gpu`
   (bf16-mixed), KD, channel pruning (channel_l1) and QAT (qat_int8) as in the default recipe,
   export on (ONNX and onnxruntime run on CPU).
2. `ddp1`: the same with `trainer=ddp trainer.accelerator=gpu trainer.devices=1` (one GPU, so a
   one-process DDP: NCCL process group, DDP-wrapped student), reusing the cached teacher.
3. `cpu`: the same student fit on the machine's CPU cores (`trainer=cpu threads=<cores>`), a
   few batches per epoch only, for the GPU/CPU throughput ratio (optional, skipped when the
   time budget is short).

A callback added through the config (`+callbacks.probe._target_=gpu_check.Probe`) records in
each training process the train-only time and images of every epoch, whether autocast was on
in the student's forward and in which dtype, and the peak CUDA memory. Everything goes to
`--out`: gpu_check.json, gpu_check.md (the table, also printed) and runs.log (every run's
output).

    python benchmarks/gpu_check.py --out /tmp/gpu_check              # on the GPU machine
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke      # tiny, 1 thread, no GPU
    python benchmarks/gpu_check.py --extra quantization=qat_int7 --loader-check --skip cpu

`--extra` adds an override to every run; `--loader-check` adds a `gpu_w8` run (8 loader
workers, no export) to see whether the fit is bound by the data loader.

On the device machine (no hydra-core, omegaconf, antlr4 or torch-pruning there) carry their
wheels in `.whl/` (antlr4-python3-runtime 4.9.3 is an sdist on PyPI: `pip wheel` it here) and
run `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` first, then this script
with PYTHONPATH=/tmp/site:$PWD. wandb is not needed: the runs use logger=csv.

Not a test: a measurement script, run by hand on a machine with a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PROBE_ENV = "GPU_CHECK_PROBE"


# -- the probe: runs inside the training process ----------------------------------------------


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class Probe(pl.Callback):
    """Train-only seconds and images per epoch, autocast state, peak CUDA memory.

    Writes its findings as JSON to the path in $GPU_CHECK_PROBE after fit and after test.
    """

    def __init__(self) -> None:
        self.path = os.environ.get(PROBE_ENV)
        self.facts: dict[str, Any] = {"epochs": []}
        self._hook: Any = None
        self._t0: float | None = None
        self._t_end: float | None = None
        self._images = 0
        self._batches = 0
        # Lightning's teardown moves the module to the CPU before on_fit_end: keep the device.
        self._device: torch.device | None = None

    def _write(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.facts, indent=1, default=str))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = self._device = pl_module.device
        facts = self.facts
        facts.update(
            device=str(device),
            strategy=type(trainer.strategy).__name__,
            precision=str(trainer.precision),
            precision_plugin=type(trainer.precision_plugin).__name__,
            world_size=trainer.world_size,
            num_devices=trainer.num_devices,
            student_wrapped_as=type(trainer.strategy.model).__name__
            if trainer.strategy.model is not None
            else None,
            torch_threads=torch.get_num_threads(),
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            process_group=(
                torch.distributed.get_backend() if torch.distributed.is_initialized() else None
            ),
        )
        for callback in trainer.callbacks:
            if type(callback).__name__ == "QuantizationCallback":
                facts["qat_start_epoch"] = getattr(callback, "start_epoch", None)
                facts["observer_freeze_epoch"] = getattr(callback, "observer_freeze_epoch", None)
        if device.type == "cuda":
            facts["gpu"] = torch.cuda.get_device_name(device)
            facts["peak_mem_before_fit_bytes"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        student = getattr(pl_module, "student", pl_module)
        self._hook = student.register_forward_hook(self._on_student_forward)

    def _on_student_forward(self, module: Any, inputs: Any, output: Any) -> None:
        if not module.training or "autocast" in self.facts:
            return
        first = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
        self.facts["autocast"] = {
            "cuda_enabled": torch.is_autocast_enabled("cuda"),
            "cuda_dtype": str(torch.get_autocast_dtype("cuda")),
            "cpu_enabled": torch.is_autocast_enabled("cpu"),
            "input_dtype": str(getattr(first, "dtype", None)),
            "output_dtype": str(getattr(output, "dtype", None)),
        }
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        self._t0, self._t_end, self._images, self._batches = time.perf_counter(), None, 0, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._images += len(batch[0])
        self._batches += 1

    def _close_epoch(self, pl_module: pl.LightningModule) -> None:
        if self._t0 is not None and self._t_end is None:
            _sync(pl_module)
            self._t_end = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._close_epoch(pl_module)  # the train batches of this epoch are done

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(pl_module)
        if self._t0 is None or self._t_end is None:
            return
        self.facts["epochs"].append(
            {
                "epoch": trainer.current_epoch,
                "images": self._images,
                "batches": self._batches,
                "seconds": self._t_end - self._t0,
            }
        )
        self._t0 = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        device = self._device
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
            self.facts["peak_mem_fit_bytes"] = torch.cuda.max_memory_allocated(device)
            self.facts["peak_reserved_fit_bytes"] = torch.cuda.max_memory_reserved(device)
            torch.cuda.reset_peak_memory_stats(device)
        self._write()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            self.facts["peak_mem_test_bytes"] = torch.cuda.max_memory_allocated(pl_module.device)
        self._write()


# -- the synthetic data set --------------------------------------------------------------------


def synthetic_cifar10(n: int, seed: int) -> tuple[Any, Any]:
    """uint8 (n, 3, 32, 32) images and labels: class c has stripes of frequency 2 + c // 2
    cycles per image, horizontal for even c and vertical for odd c (so a left-right flip and
    a shifted crop keep the class), a class-specific colour tint, a random phase and amplitude,
    and Gaussian noise. Hard enough not to saturate: logistic regression on the images'
    row/column spectra and mean colours gets about 93% of the test set (5000 train images)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).uniform(-1.0, 1.0, size=(10, 3))
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    freq = (2 + labels // 2).astype(np.float32)[:, None, None]
    coord = np.where((labels % 2 == 0)[:, None, None], yy[None], xx[None])
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    wave = np.sin(2 * np.pi * freq * coord / 32.0 + phase)  # (n, 32, 32)
    amplitude = rng.uniform(5.0, 40.0, size=(n, 1, 1, 1)).astype(np.float32)
    weights = 0.6 + 0.4 * np.abs(palette[labels])[:, :, None, None]  # per-channel stripe gain
    tint = 8.0 * palette[labels][:, :, None, None]
    noise = rng.normal(0.0, 60.0, size=(n, 3, 32, 32)).astype(np.float32)
    images = 128.0 + amplitude * weights * wave[:, None] + tint + noise
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_data(root: Path, n_train: int, n_test: int) -> Path:
    if str(REPO) not in sys.path:  # the project need not be installed
        sys.path.insert(0, str(REPO))
    from distill.data.cifar_format import write_cifar_batches

    train_x, train_y = synthetic_cifar10(n_train, seed=0)
    test_x, test_y = synthetic_cifar10(n_test, seed=1)
    return write_cifar_batches(root, "cifar10", train_x, train_y, test_x, test_y)


# -- running the CLI ---------------------------------------------------------------------------

# Lines worth reading in a run's output: warnings (Lightning prints them as `file.py:N: msg`),
# errors, and what it says about precision and the process group.
WARNING_PATTERN = re.compile(
    r"warn|error|traceback|exception|refus|fail|\.py:\d+: |bfloat16|tensor cores|nccl|gloo",
    re.IGNORECASE,
)


def run_cli(
    name: str,
    overrides: list[str],
    work: Path,
    env: dict[str, str],
    timeout_s: float,
    log: Any,
) -> dict[str, Any]:
    """`python -m distill.cli.train OVERRIDES` in its own process group; what it left."""
    run_dir = work / "runs" / name
    probe_path = work / f"probe_{name}.json"
    command = [
        sys.executable,
        "-m",
        "distill.cli.train",
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    result: dict[str, Any] = {
        "name": name,
        "command": " ".join(command[1:]),
        "run_dir": str(run_dir),
    }
    log.write(f"\n===== {name}: {' '.join(command)}\n")
    log.flush()
    print(f"[gpu_check] {name}: starting (timeout {timeout_s:.0f} s)", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=work,
        env={**env, PROBE_ENV: str(probe_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
        result["returncode"] = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        result["returncode"] = None
        result["error"] = f"timed out after {timeout_s:.0f} s (killed)"
    result["wall_s"] = round(time.perf_counter() - started, 2)
    output = output or ""
    log.write(output)
    log.flush()
    lines = [line.strip() for line in output.splitlines()]
    flagged: list[str] = []
    for line in lines:
        if WARNING_PATTERN.search(line) and line[:300] not in flagged:
            flagged.append(line[:300])
    result["flagged_lines"] = flagged[:60]
    if result.get("returncode") not in (0, None):
        result["error"] = f"exit code {result['returncode']}; last lines: {lines[-25:]}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        result["summary"] = json.loads(summary_path.read_text())
    if probe_path.is_file():
        result["probe"] = json.loads(probe_path.read_text())
    print(
        f"[gpu_check] {name}: rc={result.get('returncode')} in {result['wall_s']} s"
        + (f" ERROR {result['error'][:2000]}" if "error" in result else ""),
        flush=True,
    )
    return result


def throughput(result: dict[str, Any]) -> dict[str, Any]:
    """Images per second of the student's train batches (validation excluded), float epochs
    after the first (warm-up) and QAT epochs apart; and over the whole fit_s."""
    probe = result.get("probe") or {}
    epochs = probe.get("epochs") or []
    qat_start = probe.get("qat_start_epoch")

    def rate(rows: list[dict[str, Any]]) -> float | None:
        seconds = sum(row["seconds"] for row in rows)
        return round(sum(row["images"] for row in rows) / seconds, 1) if seconds > 0 else None

    is_qat = [qat_start is not None and row["epoch"] >= qat_start for row in epochs]
    float_rows = [row for row, qat in zip(epochs, is_qat, strict=True) if not qat]
    qat_rows = [row for row, qat in zip(epochs, is_qat, strict=True) if qat]
    facts: dict[str, Any] = {
        "first_epoch_img_s": rate(epochs[:1]),
        "float_img_s": rate(float_rows[1:] or float_rows),
        "qat_img_s": rate(qat_rows),
    }
    timing = (result.get("summary") or {}).get("timing") or {}
    images = sum(row["images"] for row in epochs)
    if timing.get("fit_s") and images:
        facts["fit_img_s_incl_val"] = round(images / timing["fit_s"], 1)
    return facts


def headline(result: dict[str, Any]) -> dict[str, Any]:
    summary = result.get("summary") or {}
    probe = result.get("probe") or {}
    artifacts = summary.get("artifacts") or {}

    def acc(section: dict[str, Any] | None) -> float | None:
        return (section or {}).get("test_acc")

    timing = {k: v for k, v in (summary.get("timing") or {}).items() if k != "teacher_cache"}
    return {
        "name": result["name"],
        "ok": result.get("returncode") == 0 and bool(summary),
        "error": result.get("error"),
        "wall_s": result.get("wall_s"),
        "timing": timing,
        "teacher_origin": (summary.get("teacher") or {}).get("origin"),
        "teacher_acc": acc(summary.get("teacher")),
        "student_acc": acc(summary.get("student")),
        "agreement": (summary.get("student") or {}).get("agreement"),
        "onnx_fp32_acc": acc(artifacts.get("onnx_fp32")),
        "onnx_int8_acc": acc(artifacts.get("onnx_int8")),
        "sparsity": (summary.get("sparsity") or {}).get("global"),
        "slim_params": (artifacts.get("slim") or {}).get("params"),
        "throughput": throughput(result),
        "peak_mem_fit_gib": _gib(probe.get("peak_mem_fit_bytes")),
        "peak_mem_teacher_gib": _gib(probe.get("peak_mem_before_fit_bytes")),
        "autocast": probe.get("autocast"),
        "strategy": probe.get("strategy"),
        "precision": probe.get("precision"),
        "process_group": probe.get("process_group"),
        "student_wrapped_as": probe.get("student_wrapped_as"),
        "flagged_lines": len(result.get("flagged_lines") or []),
    }


def _gib(value: Any) -> float | None:
    return round(value / 2**30, 3) if isinstance(value, int | float) else None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"## distill GPU check ({meta.get('gpu') or meta.get('mode')}; "
        f"{meta['train_images']} train / {meta['test_images']} test synthetic CIFAR-10 images)",
        "",
        "| run | ok | teacher_s | fit_s | test_s | export_s | total_s | process wall s "
        "| img/s float | img/s QAT | img/s 1st epoch | teacher acc | student acc | int8 acc "
        "| fp32 onnx acc | sparsity | peak GPU GiB (fit) | autocast in student fwd |",
        "|" + "---|" * 18,
    ]
    for row in rows:
        timing = row["timing"]
        tp = row["throughput"]
        autocast = row.get("autocast") or {}
        ac = (
            f"cuda={autocast.get('cuda_enabled')} {autocast.get('cuda_dtype')}, "
            f"out {autocast.get('output_dtype')}"
            if autocast
            else "-"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    row["name"],
                    "yes" if row["ok"] else "NO",
                    _fmt(timing.get("teacher_s")),
                    _fmt(timing.get("fit_s")),
                    _fmt(timing.get("test_s")),
                    _fmt(timing.get("export_s")),
                    _fmt(timing.get("total_s")),
                    _fmt(row.get("wall_s")),
                    _fmt(tp.get("float_img_s")),
                    _fmt(tp.get("qat_img_s")),
                    _fmt(tp.get("first_epoch_img_s")),
                    _fmt(row.get("teacher_acc")),
                    _fmt(row.get("student_acc")),
                    _fmt(row.get("onnx_int8_acc")),
                    _fmt(row.get("onnx_fp32_acc")),
                    _fmt(row.get("sparsity")),
                    _fmt(row.get("peak_mem_fit_gib")),
                    ac,
                ]
            )
            + " |"
        )
    ratios = meta.get("ratios") or {}
    if ratios:
        lines += ["", "GPU/CPU train-batch throughput: " + json.dumps(ratios)]
    for row in rows:
        if row.get("error"):
            lines += ["", f"**{row['name']} failed**: {row['error'][:3000]}"]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, CPU, 1 thread")
    parser.add_argument("--train", type=int, default=None, help="synthetic training images")
    parser.add_argument("--test", type=int, default=None, help="synthetic test images")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs")
    parser.add_argument(
        "--budget-s", type=float, default=330.0, help="stop starting runs after this many s"
    )
    parser.add_argument("--skip", default="", help="comma list of runs to skip: ddp1,cpu")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--extra", action="append", default=[], help="an override added to every run"
    )
    parser.add_argument(
        "--loader-check",
        action="store_true",
        help="also the gpu run with data.num_workers=8 and no export (is the fit loader-bound?)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    smoke = args.cpu_smoke
    n_train = args.train or (320 if smoke else 5000)
    n_test = args.test or (128 if smoke else 1000)
    teacher_epochs = args.teacher_epochs or (1 if smoke else 4)
    epochs = args.epochs or (3 if smoke else 8)
    skip = {name for name in args.skip.split(",") if name}
    cores = os.cpu_count() or 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="distill_gpu_check_"))

    meta: dict[str, Any] = {
        "mode": "cpu-smoke" if smoke else "gpu",
        "train_images": n_train,
        "test_images": n_test,
        "teacher_epochs": teacher_epochs,
        "student_epochs": epochs,
        "cpu_cores": cores,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "lightning": pl.__version__,
    }
    for module in ("hydra", "omegaconf", "torch_pruning", "onnxruntime", "onnx", "wandb"):
        try:
            meta[module] = __import__(module).__version__
        except Exception as error:  # absent packages are a finding, not a failure
            meta[module] = f"absent ({type(error).__name__})"
    meta["overrides_added"] = args.extra
    try:  # onnxruntime's int8 kernels saturate on x86 CPUs without VNNI (README: qat_int7)
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
        meta["cpu_vnni_flags"] = sorted(flag for flag in flags if "vnni" in flag)
        meta["cpu_avx512"] = any(flag.startswith("avx512") for flag in flags)
        model = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        meta["cpu_model"] = model[0] if model else None
    except (OSError, StopIteration):
        pass
    gpu = shutil.which("nvidia-smi")
    if gpu:
        query = subprocess.run(
            [gpu, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        meta["gpu"] = query.stdout.strip() or query.stderr.strip()

    data_started = time.perf_counter()
    write_data(work / "data", n_train, n_test)
    meta["data_write_s"] = round(time.perf_counter() - data_started, 2)

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DISTILL_", "WANDB_", PROBE_ENV))
    }
    pythonpath = [str(REPO), str(BENCH)]
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
        DISTILL_DATA_DIR=str(work / "data"),
        DISTILL_CACHE_DIR=str(work / "cache"),
        DISTILL_LOG_DIR=str(work / "outputs"),
        WANDB_MODE="disabled",
        HYDRA_FULL_ERROR="1",
    )
    if smoke:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    # The default recipe's compression (channel_l1 + qat_int8) on a CIFAR pair; only the
    # schedule is shortened to fit the few epochs: prune from epoch 1 in 3 AGP steps, QAT from
    # 0.67 of the epochs, observers frozen at 0.92 (the defaults).
    common = [
        "data=cifar10",
        "teacher=resnet56",
        "student=resnet20",
        "logger=csv",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "+callbacks.probe._target_=gpu_check.Probe",
        # This script's own callback: a target outside the allowlist, trusted here.
        "trusted_targets=[gpu_check]",
        f"teacher.train.max_epochs={teacher_epochs}",
        f"trainer.max_epochs={epochs}",
        "pruning.schedule.start=1",
        "pruning.schedule.num_updates=3",
        "export_latency_repeats=5",
        *args.extra,
    ]
    if smoke:
        common += ["data.batch_size=64", "data.num_workers=0", "threads=1"]
        accel = ["trainer=cpu"]
        ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1"]
    else:
        accel = ["trainer=gpu"]
        # Same precision as trainer=gpu, so the teacher's cache key matches and it is reused.
        ddp = [
            "trainer=ddp",
            "trainer.accelerator=gpu",
            "trainer.devices=1",
            "trainer.precision=bf16-mixed",
        ]

    results: list[dict[str, Any]] = []
    budget = args.budget_s

    def remaining() -> float:
        return budget - (time.perf_counter() - started)

    with open(args.out / "runs.log", "w") as log:
        first = run_cli(
            "gpu" if not smoke else "cpu_main",
            [*common, *accel],
            work,
            env,
            max(remaining(), 30),
            log,
        )
        results.append(first)
        if "ddp1" not in skip and remaining() > 60:
            results.append(
                run_cli("ddp1", [*common, *ddp], work, env, max(remaining() - 20, 30), log)
            )
        elif "ddp1" not in skip:
            results.append({"name": "ddp1", "error": "skipped: time budget spent"})
        if args.loader_check:
            if remaining() > 50:
                workers = [*common, *accel, "data.num_workers=8", "export=false"]
                results.append(
                    run_cli("gpu_w8", workers, work, env, max(remaining() - 20, 30), log)
                )
            else:
                results.append({"name": "gpu_w8", "error": "skipped: time budget spent"})
        teacher_ckpt = ((first.get("summary") or {}).get("teacher") or {}).get("checkpoint")
        if "cpu" not in skip:
            if remaining() < 45:
                results.append({"name": "cpu", "error": "skipped: time budget spent"})
            elif not teacher_ckpt:
                results.append({"name": "cpu", "error": "skipped: no teacher from the gpu run"})
            else:
                path = Path(teacher_ckpt["path"])
                if not path.is_absolute():
                    path = Path(first["run_dir"]) / path
                # Few batches per epoch (throughput only), same epochs so QAT starts alike.
                cpu = [
                    "trainer=cpu",
                    f"threads={1 if smoke else cores}",
                    f"teacher.checkpoint={path}",
                    "+trainer.limit_train_batches=5",
                    "+trainer.limit_val_batches=2",
                    "export=false",
                ]
                results.append(
                    run_cli("cpu", [*common, *cpu], work, env, max(remaining() - 5, 30), log)
                )

    rows = [
        headline(result)
        if "command" in result
        else {
            "name": result["name"],
            "ok": False,
            "error": result["error"],
            "timing": {},
            "throughput": {},
        }
        for result in results
    ]
    by_name = {row["name"]: row for row in rows}
    gpu_tp = (by_name.get("gpu") or {}).get("throughput") or {}
    cpu_tp = (by_name.get("cpu") or {}).get("throughput") or {}
    ratios = {}
    for key in ("float_img_s", "qat_img_s"):
        if gpu_tp.get(key) and cpu_tp.get(key):
            ratios[f"gpu_over_cpu_{key}"] = round(gpu_tp[key] / cpu_tp[key], 2)
    meta["ratios"] = ratios
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    table = markdown(rows, meta)
    report = {"meta": meta, "rows": rows, "runs": results}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(table)
    print(table, flush=True)
    print(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"[gpu_check] work directory kept: {work}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
