"""`mirasc train`: train a model around a compiled spec on a synthetic task, with the tools
researchers expect: AdamW with warm-up and cosine decay, gradient clipping, a progress bar,
periodic evaluation, `metrics.jsonl`, `config.json`, checkpoints that resume exactly, and
`curves.png`. Runs on the CPU or a GPU (`device`), in fp32 or bf16 autocast (`precision`), and
unchanged under `torchrun` (DDP: gloo on CPU, NCCL on GPUs, one GPU per local rank)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data
from .device import autocast, resolve_device, to_device
from .models import AttentionLayer, MemoryLM, ModelConfig


@dataclass
class TrainConfig:
    spec: str
    task: str = "mqar"
    model: str = "lm"
    steps: int = 300
    seq_len: int = 64
    pairs: int | None = None  # mqar: key-value pairs per sequence (default seq_len // 8)
    vocab: int | None = None  # mqar: vocabulary size (default max(256, 2 * seq_len + 2))
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 30
    clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    window: int = 32
    seed: int = 0
    out: str = "runs/train"
    device: str = "auto"  # auto (CUDA when a GPU is visible), cpu or cuda
    precision: str = "fp32"  # fp32, or bf16 autocast (parameters and memory state stay fp32)


def schedule(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def masked_metrics(logits, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over the positions that ask something."""
    logits = logits.float()  # the loss in fp32 under bf16 autocast too
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=data.IGNORE)
    mask = targets != data.IGNORE
    acc = (logits.argmax(-1)[mask] == targets[mask]).float().mean()
    return loss, acc


class Trainer:
    """One training run; `run()` trains from scratch or from `out/checkpoint.pt`. `layer_cls`
    replaces the token mixer `cfg.spec` names (a compiled spec or "attention") by any class with a
    memory layer's interface, `layer_cls(hidden, heads)` and `forward(x, state=None,
    use_cache=False)`: a benchmark trains an outside implementation with the same data,
    optimizer, schedule and evaluation."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, layer_cls=None):
        import mirasc

        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = resolve_device(cfg.device)
        self.in_precision()  # an unknown precision fails here, not after the first batch
        if self.world > 1:
            self.init_distributed()
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.task = data.task(cfg.task, cfg.seq_len, pairs=cfg.pairs, vocab=cfg.vocab)
        if layer_cls is None:
            layer_cls = (
                AttentionLayer if cfg.spec == "attention" else mirasc.compile(cfg.spec).Layer
            )
        self.model_cfg = ModelConfig(
            vocab=self.task.vocab,
            hidden=cfg.hidden,
            layers=cfg.layers,
            heads=cfg.heads,
            hybrid=cfg.model,
            window=cfg.window,
        )
        self.model = MemoryLM(layer_cls, self.model_cfg).to(self.device)
        self.step_model = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: schedule(s, cfg))
        # each rank draws its own batches; evaluation data is fixed and shared
        self.data_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        self.step = 0
        self.history: list[dict] = []
        if resume:
            self.load()

    def in_precision(self):
        """The context every forward pass runs in: bf16 autocast on the device, or nothing."""
        return autocast(self.device, self.cfg.precision)

    def init_distributed(self) -> None:
        """One process group per torchrun job: NCCL between GPUs (each process bound to the GPU
        of its LOCAL_RANK first, so that NCCL's buffers land there), gloo between CPU ranks."""
        if torch.distributed.is_initialized():
            return
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl", device_id=self.device)
        else:
            torch.distributed.init_process_group("gloo")

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self) -> None:
        if self.rank:
            return
        state = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "step": self.step,
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")

    def load(self) -> None:
        """Resume from `out/checkpoint.pt`, whichever device saved it: tensors load onto the CPU
        (the RNG states must be CPU tensors) and load_state_dict moves them to the model's and
        the optimizer's device."""
        state = torch.load(self.out / "checkpoint.pt", map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.step = state["step"]
        self.data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.history = state["history"]
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    # ---- training ------------------------------------------------------------------------
    @torch.no_grad()
    def complete(self, prompt: str, n: int) -> str:
        """Greedy continuation of `prompt` by the model (text task), decoded from its caches."""
        self.model.eval()
        ids = torch.tensor([data.text_encode(prompt)], device=self.device)
        with self.in_precision():
            out = self.model.generate(ids, n)[0, ids.shape[1] :]
        self.model.train()
        return data.text_decode(out.tolist())

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        g = torch.Generator().manual_seed(10**6 + self.cfg.seed)
        losses, accs = [], []
        self.model.eval()
        for _ in range(self.cfg.eval_batches):
            x, y = (to_device(t, self.device) for t in self.task.eval_batch(self.cfg.batch, g))
            with self.in_precision():
                loss, acc = masked_metrics(self.model(x), y)
            losses.append(loss.item())
            accs.append(acc.item())
        self.model.train()
        return sum(losses) / len(losses), sum(accs) / len(accs)

    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (ranks must stop together)."""
        ok = torch.isfinite(loss.detach()).float()
        if self.world > 1:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def diverged(self, bar) -> None:
        """Record a non-finite loss and stop: continuing would only train on NaN. The last
        checkpoint (from the last evaluation) is kept."""
        self.log({"step": self.step, "loss": None, "accuracy": 0.0, "diverged": True})
        if self.rank == 0:
            bar.write(
                f"step {self.step:6d}  the training loss is not finite: training diverged, "
                "stopping (metrics.jsonl records it; the last checkpoint is kept)"
            )

    def run(self, until: int | None = None) -> list[dict]:
        """Train to `cfg.steps` (or stop early after step `until`, as an interruption would)."""
        from tqdm import tqdm

        cfg = self.cfg
        last = cfg.steps if until is None else min(until, cfg.steps)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(
                json.dumps({"train": asdict(cfg), "model": self.model_cfg.to_dict()}, indent=2)
            )
            if self.step == 0:
                (self.out / "metrics.jsonl").write_text("")
        bar = tqdm(
            total=cfg.steps, initial=self.step, unit="step", disable=self.rank != 0, leave=True
        )
        if self.step == 0 and last > 0:  # where training starts from: chance, usually
            eval_loss, eval_acc = self.evaluate()
            self.log({"step": 0, "loss": eval_loss, "accuracy": eval_acc})
        tokens, start = 0, time.perf_counter()
        while self.step < last:
            x, y = (to_device(t, self.device) for t in self.task.batch(cfg.batch, self.data_rng))
            with self.in_precision():
                loss, acc = masked_metrics(self.step_model(x), y)
            if not self.finite(loss):
                self.diverged(bar)
                break
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            tokens += x.numel() * self.world
            rate = tokens / (time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.1%}", tok_s=f"{rate:.0f}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                eval_loss, eval_acc = self.evaluate()
                self.log(
                    {
                        "step": self.step,
                        "loss": eval_loss,
                        "accuracy": eval_acc,
                        "train_loss": loss.item(),
                        "lr": self.sched.get_last_lr()[0],
                        "tokens_per_s": rate,
                    }
                )
                if self.rank == 0:
                    bar.write(
                        f"step {self.step:6d}  eval loss {eval_loss:.3f}  accuracy {eval_acc:.1%}"
                    )
                self.save()
        bar.close()
        if self.rank == 0:
            plot(self.history, self.out / "curves.png", f"{Path(cfg.spec).stem} on {cfg.task}")
        return self.history


def plot(history: list[dict], path: Path, title: str) -> None:
    """Loss and accuracy against steps, side by side (a divergence is marked, not plotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stop = next((r["step"] for r in history if r.get("diverged")), None)
    history = [r for r in history if not r.get("diverged")]
    steps = [r["step"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(steps, [r["loss"] for r in history], marker="o")
    a.set(xlabel="step", ylabel="eval loss", title=title)
    b.plot(steps, [r["accuracy"] for r in history], marker="o", color="tab:green")
    b.set(xlabel="step", ylabel="eval accuracy", ylim=(0, 1))
    if stop is not None:
        for ax in (a, b):
            ax.axvline(stop, color="tab:red", linestyle=":", label=f"diverged at step {stop}")
        b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
