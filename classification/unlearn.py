"""Unlearn part of a classifier's training data: ``accelerate launch -m classification.unlearn``.

Follows the diffusers training-example skeleton: parse -> Accelerator -> seed -> data and
models -> method.prepare (trimming etc.) -> prepare -> loop with accumulate -> checkpoint-N
-> resume -> export -> metrics -> end_training.

Example (offline, seconds on a CPU):
    accelerate launch --cpu -m classification.unlearn --method scissorhands \
        --forget random --forget_fraction 0.1 --output_dir runs/digits-scissorhands
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from classification import references
from erasure.batches import TensorBatches, subset
from erasure.bounds import check_positive, check_training
from erasure.tensor_files import check_tensor_file
from classification.data import load_dataset, split_forget
from classification.engine import make_optimizer
from erasure.loop import steps_per_epoch, unlearn
from classification.objective import ClassificationObjective
from classification.report import evaluate, write_results
from erasure import jobconfig
from erasure.config import MethodConfig
from erasure.launch import finish, make_accelerator
from erasure.methods import build_method, validate_method
from erasure.exports import publish_export, staging_folder
from erasure.output import OutputDir, check_finite, save_model_atomic
from erasure.replicas import check_replicas
from erasure.resume import checkpointer, resolve_resume, start_or_resume

logger = logging.getLogger("classification.unlearn")


@dataclass
class ClassificationJobConfig:
    """The job's own options (the method's are in :class:`MethodConfig`)."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "digits_cnn"
    forget: str = "random"
    forget_fraction: float = 0.1
    forget_classes: tuple[int, ...] = ()
    original_model: str | None = None  # a .safetensors of the trained model; trained (cached) if unset
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.05
    cache_dir: str | None = None
    output_dir: str = "runs/classification"
    overwrite_output_dir: bool = False
    num_train_epochs: int = 5
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str | None = None
    checkpointing_steps: int | None = None
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    compare_to_retrain: bool = True
    relearn_max_epochs: int = 10
    report_to: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_training(self)
        check_positive("pretrain_lr", self.pretrain_lr)
        self.forget_classes = tuple(int(c) for c in self.forget_classes)
        for name in ("num_train_epochs", "train_batch_size", "gradient_accumulation_steps", "pretrain_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.checkpointing_steps is not None and self.checkpointing_steps < 1:
            raise ValueError(f"checkpointing_steps={self.checkpointing_steps} must be >= 1 (or unset)")
        if self.original_model is not None and not Path(self.original_model).is_file():
            raise FileNotFoundError(f"original_model={self.original_model}: no such file (a .safetensors state dict)")
        if self.original_model is not None:  # header only, before any work (the weights load after prepare)
            if Path(self.original_model).suffix != ".safetensors":
                raise ValueError(f"original_model={self.original_model}: only .safetensors weights are loaded "
                                 "(pickled checkpoints can run code)")
            check_tensor_file(self.original_model, "original_model")


def main(argv: list[str] | None = None) -> dict:
    job, method_config = jobconfig.parse((ClassificationJobConfig, MethodConfig), argv, __doc__)
    with OutputDir(job.output_dir, job.overwrite_output_dir, job.resume_from_checkpoint) as output:
        return run(job, method_config, output)


def run(job: ClassificationJobConfig, method_config: MethodConfig, output: OutputDir) -> dict:
    """The job after its flags are parsed: data, unlearning, evaluation and export."""
    splits = load_dataset(job.dataset, job.data_dir, seed=job.seed)  # validates dataset + files
    forget_idx, retain_idx = split_forget(splits.train_y, job.forget, job.forget_fraction, job.forget_classes, job.seed)
    objective = ClassificationObjective(splits.num_classes, seed=job.seed)
    validate_method(method_config)
    method = build_method(method_config, objective)

    accelerator = make_accelerator(gradient_accumulation_steps=job.gradient_accumulation_steps,
                                   mixed_precision=job.mixed_precision, log_with=job.report_to,
                                   output_dir=str(output.path))
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_seed(job.seed)

    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    batches = lambda idx, seed, x=splits.train_x, y=splits.train_y: TensorBatches(
        x, y, idx, job.train_batch_size, True, seed, world, rank, device)
    forget = batches(forget_idx, job.seed + 1)
    drawn = subset(retain_idx, method_config.retain_fraction, job.seed)
    retain = batches(drawn, job.seed + 2)
    if method_config.retain_dro:  # retain_dro's groups: the classes the retain batches hold
        method.hold_retain_groups(splits.train_y, indices=drawn)
    steps_per_epoch(method, forget, retain, job.gradient_accumulation_steps)  # fails before anything is written
    output.prepare(accelerator)

    if accelerator.is_main_process:  # train (or find) the original once, then every rank reads it
        references.original_path(job, splits)
    accelerator.wait_for_everyone()
    model = references.load_original(job, splits).to(device)

    resume_dir = resolve_resume(output.path, job.resume_from_checkpoint)
    started = time.perf_counter()
    model_ddp = accelerator.prepare(model)
    optimizer = accelerator.prepare(make_optimizer(
        [p for p in model.parameters() if p.requires_grad], job.optimizer, job.learning_rate, job.momentum, job.weight_decay))
    summary, start_step = start_or_resume(accelerator, model_ddp, method, forget, retain, resume_dir)
    if accelerator.is_main_process and job.report_to:
        accelerator.init_trackers("scissorhands-classification",
                                  config=jobconfig.tracker_config(jobconfig.to_dict(job, method_config)))
    on_step = checkpointer(accelerator, output.path, job.checkpointing_steps, job.checkpoints_total_limit, method, summary)
    unlearn(accelerator, model_ddp, method, optimizer, forget, retain, job.num_train_epochs, start_step,
            job.max_grad_norm, on_step)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    replicas = check_replicas(model_ddp, accelerator, "after training")
    results = {}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model_ddp).eval()
        check_finite(model)
        results = evaluate(job, method_config, splits, forget_idx, retain_idx, model, seconds, summary)
        results["replicas_after_training"] = replicas
        if method.group_weight_table() is not None:
            results["retain_group_weights"] = method.group_weight_table()
        staging = staging_folder(output.path)  # the model and its results are replaced together
        save_model_atomic(model, staging / "model.safetensors")
        write_results(staging, jobconfig.to_dict(job, method_config), results)
        publish_export(output.path, staging, key="model.safetensors")
        logger.info("wrote %s", output.path)
    finish(accelerator)
    return results


if __name__ == "__main__":
    jobconfig.run_cli(main)
