"""The training loop: DeepSpeed forward/backward/step, evaluation, logging, checkpoints, exits.

DeepSpeed owns the optimizer step, gradient accumulation boundaries, loss scaling, clipping
and the LR schedule; this loop only feeds micro-batches and decides when to log, evaluate,
save and stop. Losses are per token over the whole step (mtds.train.reduction). Host/device
syncs: two small all-reduces per iteration (the step's target counts; stop flags: signal,
time limit, non-finite loss — so every rank stops at the same step, before a bad step is
applied) plus the log steps.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass

import torch

from mtds.ckpt import save_load as checkpoint
from mtds.data.loader import ResumableBatchSampler, build_loader, fixed_eval_batches, loader_batches
from mtds.errors import TrainingStopped
from mtds.train.metrics import Metrics, Throughput, format_eta, memory_stats
from mtds.train.reduction import (Totals, data_parallel_group, evaluation_means, loss_of_parts, step_target_counts,
                                  sum_over_ranks)
from mtds.parallel.sizes import ParallelSizes


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0


class Trainer:
    def __init__(self, cfg, engine, datasets, resolved, forward, count_targets, metrics: Metrics, *,
                 parallel: ParallelSizes, rank, train_iters, flops_per_token, peak_tflops, before_backward=None,
                 summarize=None, log=print, downstream=None):
        """`forward(model, batch, device) -> (loss sums, metric sums)` is the task's forward step and
        `count_targets(batch) -> {part: n}` its target count (mtds.train.reduction: per-token losses);
        the loop never looks inside a batch, so every kind shares it. The kind's optional hooks come the same
        way (mtds/kind_contract.py): `before_backward(engine)`, the family's, is called before every
        backward (MoE: the aux loss's gradient scale); `summarize(means) -> metrics`, the task's, turns
        averaged parts ("_"-prefixed metrics) into the metrics it logs (classification: per-class
        counts -> macro-F1 over every sample, not a mean of per-micro-batch F1s)."""
        self.cfg, self.engine, self.resolved, self.forward = cfg, engine, resolved, forward
        self.train_ds, self.valid_ds, _ = datasets
        self.metrics, self.log = metrics, log
        self._summarize = summarize
        self.parallel = parallel
        self.rank = rank
        self.downstream = downstream  # training.downstream_evals: a mtds.train.downstream.Downstream, or None
        self.dp_rank, self.dp_size = parallel.data_rank(rank), parallel.data
        self.dp_group = data_parallel_group()
        self.count_targets = count_targets
        self.step_lr = engine.get_lr()[0]  # the LR of the latest step (logged as train/lr)
        self.last_val_loss: float | None = None  # for the end-of-run summary
        self.train_iters = train_iters
        self.micro = engine.train_micro_batch_size_per_gpu()
        self.accum = engine.gradient_accumulation_steps()
        self.global_batch = self.micro * self.accum * self.dp_size
        self.seq = cfg.seq_length
        self.flops_per_token = flops_per_token
        self.peak = peak_tflops
        self.device = engine.device
        self._before_backward = before_backward
        self.state = TrainState()
        self.ema = None  # the weights' moving average (training.ema_decay, mtds/train/ema.py)
        if cfg.training.ema_decay is not None:
            from mtds.train.ema import WeightEMA

            self.ema = WeightEMA(engine.module, cfg.training.ema_decay)
        self._signal = 0  # number of the first stop signal received (0: none)
        self._stop_request: str | None = None
        self._skipped_in_row = 0
        self._loss_ema: float | None = None
        self._data_wait = 0.0  # host seconds blocked on the data loader since the last log
        self.start_time = time.time()

    # -- state -----------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return asdict(self.state)

    def resume(self, ckpt_dir: str) -> None:
        saved = checkpoint.load(self.engine, ckpt_dir, self.resolved, log=self.log, ema=self.ema)
        self.state = TrainState(**{k: saved[k] for k in asdict(self.state)})
        self.log(f"resumed from {ckpt_dir} at iteration {self.state.iteration}, "
                 f"{self.state.consumed_samples} samples consumed")

    def save(self) -> None:
        checkpoint.save(self.engine, self.cfg.training.run_dir, self.trainer_state(), self.resolved,
                        self.cfg.training.keep_last, log=self.log, ema=self.ema)

    # -- loop ------------------------------------------------------------------------------
    def _on_stop_signal(self, signum, frame):
        """SIGTERM (SLURM, the launcher) or a first Ctrl-C (SIGINT): every rank saves at the same
        step and exits 0. A second Ctrl-C gets Python's default handler back: it stops at once."""
        self._signal = self._signal or signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.log("Ctrl-C: saving at the end of this step and exiting (Ctrl-C again to stop at once, unsaved)")

    def _stop_flags(self, loss: torch.Tensor) -> tuple[int, bool, bool]:
        """All-reduced (max) flags: (stop signal number or 0, time limit reached, loss not finite)."""
        limit = self.cfg.training.exit_duration_mins
        over_time = limit is not None and (time.time() - self.start_time) / 60 >= limit
        flags = torch.stack([
            torch.tensor(float(self._signal), device=self.device),  # max over ranks: SIGTERM (15) > SIGINT (2)
            torch.tensor(float(over_time), device=self.device),
            (~torch.isfinite(loss.detach())).float(),
        ])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        sig, late, bad = flags.tolist()
        return int(sig), bool(late), bool(bad)

    def train_step(self, batches) -> tuple[dict[str, torch.Tensor], Totals]:
        """One optimizer step = `accum` micro-batches. Returns this rank's share of each loss part
        (summed over the data-parallel ranks it is the step's per-token mean; mtds.train.reduction)
        and the step's metric totals."""
        micro_batches = []
        waited = time.perf_counter()
        for _ in range(self.accum):  # the whole step first: its target counts weigh every micro-batch
            micro_batches.append(next(batches))  # blocks only if the loader workers fell behind
        self._data_wait += time.perf_counter() - waited
        counts = step_target_counts(self.count_targets, micro_batches, self.device, self.dp_group)
        shares: dict[str, torch.Tensor] = {}
        metrics = Totals()
        for micro_step, batch in enumerate(micro_batches):
            sums, batch_metrics = self.forward(self.engine, batch, self.device)
            parts = {p: s / counts[p] for p, s in sums.items()}  # this micro-batch's part of the step's mean
            loss = sum(parts.values())
            if self._before_backward is not None:
                self._before_backward(self.engine)
            # DeepSpeed divides a backward's loss by the accumulation steps (not with scale_wrt_gas=False)
            # and averages gradients over the data-parallel ranks: the loss is already a share of the
            # whole step's mean, so the rank average is undone by the factor dp.
            self.engine.backward(loss * self.dp_size, scale_wrt_gas=False)
            for p, v in parts.items():
                shares[p] = shares.get(p, 0) + v.detach()
            metrics.add_metrics(batch_metrics)
            if micro_step < self.accum - 1:
                self.engine.step()  # not a boundary: DeepSpeed only accumulates
        sig, late, bad = self._stop_flags(sum(shares.values()))
        if bad:
            raise TrainingStopped(
                f"non-finite training loss at iteration {self.state.iteration + 1}; the optimizer step was not "
                "applied and nothing was saved. Lower the LR, raise warmup, or use bf16; resume from the last checkpoint."
            )
        skipped_before = self.engine.skipped_steps
        self.step_lr = self.engine.get_lr()[0]  # the LR this step uses (the schedule advances in step())
        self.engine.step()  # the boundary: optimizer step, LR schedule, zero grads
        skipped = self.engine.skipped_steps > skipped_before
        if self.ema is not None and not skipped:
            self.ema.update()
        self._check_overflow_streak(skipped)
        # All-reduced: a rank that got no signal itself stops with the others, at the same step.
        self._stop_request = signal.Signals(sig).name if sig else ("time limit" if late else None)
        return shares, metrics

    def _check_overflow_streak(self, skipped: bool) -> None:
        """DeepSpeed skips a step whose gradients are not finite (fp16 overflow, and under ZeRO
        in any precision; in fp16 it also lowers the loss scale). A long run of skips means
        training cannot recover, so stop with advice."""
        self._skipped_in_row = self._skipped_in_row + 1 if skipped else 0
        limit = self.cfg.training.max_skipped_steps_in_row
        if self._skipped_in_row >= limit:
            raise TrainingStopped(
                f"{limit} optimizer steps in a row skipped for non-finite gradients (iteration "
                f"{self.state.iteration + 1}); lower the LR, raise warmup, in fp16 raise min_loss_scale or "
                "use bf16; resume from the last checkpoint"
            )

    def fit(self) -> TrainState:
        previous = {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        sampler = ResumableBatchSampler(len(self.train_ds), self.state.consumed_samples, self.micro,
                                        self.dp_rank, self.dp_size)
        loader = build_loader(self.train_ds, sampler, self.cfg.data.num_workers, self.cfg.data.seed)
        try:
            with loader_batches(loader) as batches:  # its workers stop however the loop ends
                return self._train(batches)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _train(self, batches) -> TrainState:
        t = self.cfg.training
        if self.state.iteration == 0:
            self.evaluate()  # the step-0 validation loss: the baseline the curve falls from
        clock = Throughput()
        window_parts, window_metrics, window_iters = {}, Totals(), 0
        while self.state.iteration < self.train_iters:
            shares, metrics = self.train_step(batches)
            self.state.iteration += 1
            self.state.consumed_samples += self.global_batch
            self.state.consumed_tokens += self.global_batch * self.seq
            for p, v in shares.items():
                window_parts[p] = window_parts.get(p, 0) + v
            for name in metrics.sums:
                window_metrics.add(name, metrics.sums[name], metrics.counts[name])
            window_iters += 1
            it = self.state.iteration
            if it % t.log_interval == 0 or it == self.train_iters:
                self._log(window_parts, window_metrics, window_iters, clock.window())
                window_parts, window_metrics, window_iters = {}, Totals(), 0
            self.metrics.advance(it)
            if it % t.eval_interval == 0 or it == self.train_iters:
                self.evaluate()
            if self.downstream is not None and self.downstream.due(it, self.train_iters):
                self.downstream.run(self.engine, it, self.state.consumed_tokens, self.rank, self.dp_rank, self.dp_size,
                                    self.dp_group, self.metrics, self.resolved)
            if t.exit_interval and it % t.exit_interval == 0 and it != self.train_iters:
                self._stop_request = f"exit_interval={t.exit_interval}"
            if self._stop_request:
                self.log(f"{self._stop_request}: saving at iteration {it} and exiting")
                self.save()
                return self.state
            if t.save_interval and it % t.save_interval == 0 and it != self.train_iters:
                self.save()
        self.save()
        return self.state

    def summary(self) -> str:
        """The end-of-run line: iterations, wall time, tokens, the last validation loss."""
        minutes = (time.time() - self.start_time) / 60
        val = f", validation loss {self.last_val_loss:.4f}" if self.last_val_loss is not None else ""
        return (f"done: {self.state.iteration} iterations in {minutes:.1f} min, "
                f"{self.state.consumed_tokens:,} tokens{val}; checkpoints in {self.cfg.training.run_dir}/checkpoints")

    # -- logging and evaluation ------------------------------------------------------------
    def _optimizer_stats(self) -> dict[str, float]:
        e = self.engine
        stats = {"train/lr": self.step_lr, "train/skipped_steps": float(e.skipped_steps)}
        norm = e.get_global_grad_norm()
        if norm is not None:
            stats["train/grad_norm"] = float(norm)
        if e.fp16_enabled():
            opt = e.optimizer
            scale = getattr(opt, "cur_scale", None) or getattr(opt, "loss_scale", None)
            if scale is not None:
                stats["train/loss_scale"] = float(scale)
        return stats

    def _log(self, parts: dict, metrics: Totals, iters: int, seconds: float) -> None:
        """`parts`: this rank's shares of each loss part summed over the window's steps; the logged
        loss is the mean over those steps of each step's per-token loss."""
        names = sorted(parts)
        part_means = dict(zip(names, sum_over_ranks(torch.stack([parts[p] for p in names]), self.dp_group) / iters))
        loss, extra = loss_of_parts(part_means)
        extra.update(metrics.means(self.dp_group))
        extra = self._summarize(extra) if self._summarize is not None else extra
        tokens_per_sec = iters * self.global_batch * self.seq / seconds
        tflops = self.flops_per_token * tokens_per_sec / self.parallel.world / 1e12  # per device
        it = self.state.iteration
        values = {"train/loss": loss.item(), **{f"train/{k}": v.item() for k, v in extra.items()},
                  **self._optimizer_stats(),
                  "throughput/tokens_per_sec": tokens_per_sec,
                  "throughput/tflops_per_device": tflops,
                  "throughput/step_seconds": seconds / iters,
                  "throughput/data_wait_ms": self._data_wait / iters * 1e3,
                  "data/consumed_samples": float(self.state.consumed_samples),
                  "data/consumed_tokens": float(self.state.consumed_tokens),
                  **memory_stats()}
        if self.peak:
            values["throughput/mfu"] = tflops / self.peak
        self._warn_on_spike(values["train/loss"], it)
        self.metrics.scalars(values, it, self.state.consumed_tokens)
        eta = (self.train_iters - it) * seconds / iters
        line = (f"iter {it:>6}/{self.train_iters} | loss {values['train/loss']:.4f} | "
                + "".join(f"{k} {v.item():.4f} | " for k, v in extra.items())
                + f"lr {values['train/lr']:.3e} | grad_norm {values.get('train/grad_norm', float('nan')):.3f} | ")
        if "train/loss_scale" in values:
            line += f"loss_scale {values['train/loss_scale']:.0f} | "
        self._data_wait = 0.0
        line += (f"skipped {int(values['train/skipped_steps'])} | data {values['throughput/data_wait_ms']:.1f} ms | "
                 f"{tokens_per_sec:,.0f} tok/s | "
                 f"{tflops:.2f} TFLOP/s/dev | ")
        if self.peak:
            line += f"MFU {values['throughput/mfu']:.1%} | "
        line += f"ETA {format_eta(eta)}"
        self.metrics.print(line)
        self.metrics.advance(it, f"loss {values['train/loss']:.3f}")

    def _warn_on_spike(self, loss: float, iteration: int) -> None:
        factor = self.cfg.training.loss_spike_factor
        if factor and self._loss_ema is not None and loss > factor * self._loss_ema:
            self.metrics.print(f"warning: loss spike at iteration {iteration}: {loss:.4f} > {factor} x running mean "
                               f"{self._loss_ema:.4f}")
        self._loss_ema = loss if self._loss_ema is None else 0.9 * self._loss_ema + 0.1 * loss

    @torch.no_grad()
    def evaluate(self) -> float | None:
        loader = fixed_eval_batches(self.valid_ds, self.cfg.training.eval_iters, self.micro, self.dp_rank,
                                    self.dp_size)
        if loader is None or len(loader.batch_sampler) == 0:
            return None
        self.engine.eval()
        val_loss_t, extra, _ = evaluation_means(self.engine, loader, self.forward, self.count_targets, self.device,
                                                self.dp_group)
        self.engine.train()
        val_loss = self.last_val_loss = val_loss_t.item()
        extra = self._summarize(extra) if self._summarize is not None else extra
        keys = list(extra)
        values = {"val/loss": val_loss, "val/ppl": math.exp(min(val_loss, 50.0)),
                  **{f"val/{k}": v.item() for k, v in extra.items()}}
        self.metrics.scalars(values, self.state.iteration, self.state.consumed_tokens)
        self.metrics.print(f"validation at iter {self.state.iteration} | loss {val_loss:.4f} | "
                           f"ppl {values['val/ppl']:.2f}"
                           + "".join(f" | {k} {values[f'val/{k}']:.4f}" for k in keys))
        return val_loss
