"""Final evaluation: loss and perplexity on fixed token counts, routing statistics.

Each corpus — ``validation`` (the training corpus's held-out split) and every
``data.eval_datasets`` entry — is evaluated on ``train.eval_tokens`` predicted
tokens (fewer when the corpus is smaller: the entry then says ``"capped":
true`` and a note is added to the result). Loss is the mean cross-entropy in
nats per predicted token; perplexity = exp(loss). Routing statistics (expert
usage, unevenness; PEER Table 2) are accumulated over the validation pass with
:class:`models.routing.RoutingTracker`.

Windows (:func:`isoflop.data.evaluation_windows`): every forward sees full
windows of T + 1 ids (the last one overlaps its predecessor and counts only
the targets not yet predicted), evenly spaced over the corpus when it holds
more than ``eval_tokens``. Windows go through the model in consecutive
groups of the model's routing group (``FFWConfigBase.sequences_per_routing_group``,
1 for all but expert choice); a last incomplete group is filled with copies
of the first windows, whose targets are not counted. A token's loss is
therefore the same whatever the evaluation batch (any multiple of the group).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from isoflop.data import TrainingData, eval_dataset_tokens, evaluation_windows
from isoflop.run_records import EvalScores
from isoflop.run_spec import RunSpec

PERPLEXITY_OVERFLOW_LOSS = 700.0  # exp(loss) above this overflows a float64: perplexity None


def grouped_windows(windows: np.ndarray, first_counted: np.ndarray,
                    group: int) -> tuple[np.ndarray, np.ndarray]:
    """``windows`` (n, L) and ``first_counted`` (n,) filled up to a multiple of
    ``group`` with copies of the first windows that count no target."""
    missing = -len(windows) % group
    filler = np.arange(missing) % len(windows)
    return (np.concatenate([windows, windows[filler]]),
            np.concatenate([first_counted, np.full(missing, windows.shape[1] - 1)]))


@torch.no_grad()
def token_losses(model: torch.nn.Module, windows: np.ndarray, first_counted: np.ndarray, batch_size: int,
                 group: int, device: torch.device, autocast: Callable = contextlib.nullcontext) -> torch.Tensor:
    """Cross-entropy (nats) of every counted target, in corpus order, on ``device``.

    Args:
        windows: (n, L) ids; each window predicts its last L - 1.
        first_counted: (n,) the first counted target of each window (0: all).
        batch_size: windows per forward, rounded down to a multiple of ``group`` (at least one group).
        group: windows routed together (``sequences_per_routing_group``).
    """
    windows, first_counted = grouped_windows(windows, first_counted, group)
    batch_size = max(group, batch_size // group * group)
    targets_per_window = windows.shape[1] - 1
    counted = torch.from_numpy(np.arange(targets_per_window)[None, :] >= first_counted[:, None]).to(device)
    losses = []
    for start in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[start:start + batch_size]).to(device, dtype=torch.long)  # (b, L)
        with autocast():
            logits = model(batch[:, :-1])  # (b, L - 1, V)
        loss = F.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")  # (b, L - 1)
        losses.append(loss[counted[start:start + batch_size]])
    return torch.cat(losses)


def evaluation_loss(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, max_tokens: int, batch_size: int,
                    group: int, device: torch.device, autocast: Callable) -> tuple[float, int]:
    """(mean loss in nats/token, tokens predicted) of ``model`` on ``max_tokens`` targets of ``tokens``."""
    windows, first_counted = evaluation_windows(tokens, seq_len, max_tokens)
    losses = token_losses(model, windows, first_counted, batch_size, group, device, autocast)
    return float(losses.double().sum().item()) / max(1, losses.numel()), losses.numel()


@torch.no_grad()
def validation_loss(model: torch.nn.Module, spec: RunSpec, data: TrainingData, device: torch.device,
                    autocast: Callable) -> float | None:
    """Mean loss (nats/token) on ``train.eval_tokens`` targets of the validation split, as
    :func:`evaluate_all` measures it (None when not finite); the model is left in the mode
    it was in. For evaluations during training (``train.eval_every_tokens``)."""
    requested = spec.train.eval_tokens
    was_training = model.training
    model.eval()
    try:
        loss, _ = evaluation_loss(model, data.validation_tokens(requested), spec.seq_len, requested,
                                  spec.micro_batch_size, spec.model.ffw.sequences_per_routing_group, device,
                                  autocast)
    finally:
        model.train(was_training)
    return loss if math.isfinite(loss) else None


def evaluate_all(model: torch.nn.Module, spec: RunSpec, data: TrainingData, device: torch.device,
                 autocast: Callable) -> tuple[dict[str, EvalScores], dict, list[str]]:
    """(scores by corpus name, routing statistics by layer, notes)."""
    from models.routing import RoutingTracker

    requested = spec.train.eval_tokens
    group = spec.model.ffw.sequences_per_routing_group
    results: dict[str, EvalScores] = {}
    notes: list[str] = []
    was_training = model.training
    model.eval()
    try:
        corpora: list[tuple[str, Callable[[], np.ndarray]]] = [
            ("validation", lambda: data.validation_tokens(requested))]
        for eval_config in spec.data.eval_datasets:
            corpora.append((eval_config.name,
                            lambda config=eval_config: eval_dataset_tokens(config, data.tokenizer, requested)))
        routing: dict = {}
        for name, load_tokens in corpora:
            tokens = load_tokens()
            tracking = RoutingTracker(model) if name == "validation" else contextlib.nullcontext()
            with tracking as tracker:
                loss, evaluated = evaluation_loss(model, tokens, spec.seq_len, requested, spec.micro_batch_size,
                                                  group, device, autocast)
            if tracker is not None:
                routing = tracker.statistics()
            capped = evaluated < requested
            if capped:
                notes.append(f"eval {name}: the corpus holds only {evaluated} tokens, fewer than "
                             f"train.eval_tokens={requested}; evaluated on all of them")
            perplexity = math.exp(loss) if loss < PERPLEXITY_OVERFLOW_LOSS else None
            results[name] = EvalScores(loss=loss if math.isfinite(loss) else None, perplexity=perplexity,
                                       tokens=evaluated, requested_tokens=requested, capped=capped)
    finally:
        model.train(was_training)
    return results, routing, notes
