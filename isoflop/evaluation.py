"""Final evaluation: loss and perplexity on fixed token counts, routing statistics.

Each corpus — ``validation`` (the training corpus's held-out split) and every
``data.eval_datasets`` entry — is evaluated on its first ``train.eval_tokens``
tokens (fewer when the corpus is smaller: the entry then says ``"capped":
true`` and a note is added to the result). Loss is the mean cross-entropy in
nats per predicted token; perplexity = exp(loss). Routing statistics (expert
usage, unevenness; PEER Table 2) are accumulated over the validation pass with
:class:`models.routing.RoutingTracker`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from isoflop.data import TrainingData, eval_dataset_tokens, evaluation_sequences
from isoflop.run_records import EvalScores
from isoflop.run_spec import RunSpec

PERPLEXITY_OVERFLOW_LOSS = 700.0  # exp(loss) above this overflows a float64: perplexity None


@torch.no_grad()
def evaluation_loss(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
                    device: torch.device, autocast: Callable) -> tuple[float, int]:
    """(mean loss in nats/token, tokens predicted) of ``model`` on packed ``tokens``."""
    sequences = evaluation_sequences(tokens, seq_len)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read once
    total_tokens = 0
    batches: list[list[np.ndarray]] = []
    for sequence in sequences:  # equal-length sequences share a batch
        if batches and len(batches[-1]) < batch_size and batches[-1][0].size == sequence.size:
            batches[-1].append(sequence)
        else:
            batches.append([sequence])
    for batch in batches:
        stacked = torch.from_numpy(np.stack(batch)).to(device, dtype=torch.long)  # (b, T + 1)
        with autocast():
            logits = model(stacked[:, :-1])  # (b, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), stacked[:, 1:].flatten(), reduction="sum")
        total_loss += loss.double()  # float64 sums, as Python floats would
        total_tokens += stacked[:, 1:].numel()
    return float(total_loss.item()) / max(1, total_tokens), total_tokens


@torch.no_grad()
def validation_loss(model: torch.nn.Module, spec: RunSpec, data: TrainingData, device: torch.device,
                    autocast: Callable) -> float | None:
    """Mean loss (nats/token) on the first ``train.eval_tokens`` tokens of the validation split,
    as :func:`evaluate_all` measures it (None when not finite); the model is left in the mode
    it was in. For evaluations during training (``train.eval_every_tokens``)."""
    was_training = model.training
    model.eval()
    try:
        loss, _ = evaluation_loss(model, data.validation_tokens(spec.train.eval_tokens), spec.seq_len,
                                  spec.micro_batch_size, device, autocast)
    finally:
        model.train(was_training)
    return loss if math.isfinite(loss) else None


def evaluate_all(model: torch.nn.Module, spec: RunSpec, data: TrainingData, device: torch.device,
                 autocast: Callable) -> tuple[dict[str, EvalScores], dict, list[str]]:
    """(scores by corpus name, routing statistics by layer, notes)."""
    from models.routing import RoutingTracker

    requested = spec.train.eval_tokens
    batch_size = spec.micro_batch_size
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
            if name == "validation":
                with RoutingTracker(model) as tracker:
                    loss, evaluated = evaluation_loss(model, tokens, spec.seq_len, batch_size, device, autocast)
                routing = tracker.statistics()
            else:
                loss, evaluated = evaluation_loss(model, tokens, spec.seq_len, batch_size, device, autocast)
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
