"""Continual pre-training on any text: the text recipe of the trainer (docs/training.md,
"infini train").

Each of the global batch's rows reads the training text as one circular stream, starting at
its own offset (rows evenly spaced). Each step reads the next `segments` segments of every row
with next-token loss. The memory is carried from step to step, so a row's memory holds
everything it has read. Back-propagation is truncated at the step: gradients flow through the
memory across the step's segments, and the carried state is detached. Under torchrun, process r
runs rows r*B .. (r+1)*B - 1, so n processes of batch B compute what one process of batch nB
does.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from infini_onnx.errors import InfiniError
from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.model.modeling import StreamState
from infini_onnx.runtime.textio import encode_files
from infini_onnx.stepgraph.state_spec import MEMORY_INPUTS


def tokenize(tokenizer_json: str | None, paths: list[Path], eos: int) -> torch.Tensor:
    """The files' token ids, one after the other with eos between them."""
    if tokenizer_json is None:
        raise InfiniError("the model directory has no tokenizer.json: text cannot be tokenized")
    return torch.from_numpy(encode_files(Tokenizer.from_str(tokenizer_json), paths, eos))


class TextRecipe:
    def __init__(
        self,
        config,
        ids: torch.Tensor,  # [S] the training text's tokens
        batch_size: int,  # rows of this process
        segments: int,  # segments per row per step (the truncation of back-propagation)
        rank: int = 0,
        world: int = 1,
        virtual_length: float = 1.0,  # each memory write counts this many times
        eval_ids: torch.Tensor | None = None,
        reset_memory_every: int = 0,  # steps between a row's memory resets (0: never)
    ):
        self.config, self.ids, self.eval_ids = config, ids, eval_ids
        if eval_ids is not None and len(eval_ids) < 2:
            raise InfiniError("the held-out text is empty: nothing to evaluate")
        self.span = segments * config.segment_len  # tokens per row per step
        if len(ids) < self.span + 1:
            raise InfiniError(
                f"the training text has {len(ids):,} tokens; a step reads {self.span + 1:,} per "
                f"row ({segments} segments of {config.segment_len} and the next token)"
            )
        rows = range(rank * batch_size, (rank + 1) * batch_size)
        self.starts = [len(ids) * g // (world * batch_size) for g in rows]
        self.reset_memory_every = reset_memory_every
        # Row g empties its memory before the steps s with (s - 1 + phase_g) % K == 0.
        self.phases = torch.tensor([reset_memory_every * g // (world * batch_size) for g in rows])
        self.virtual_length = virtual_length
        self.state: StreamState | None = None  # the rows' carried memory and window

    def rows(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [B, span] of every row at `step` (1-based), circular."""
        offsets = torch.arange(self.span + 1)
        index = torch.stack([(s + (step - 1) * self.span + offsets) for s in self.starts])
        window = self.ids[index % len(self.ids)]
        return window[:, :-1], window[:, 1:]

    def step(self, model, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        ids, targets = self.rows(step)
        device = next(model.parameters()).device
        ids, targets = ids.to(device), targets.to(device)
        weights = None
        if self.virtual_length != 1.0:
            weights = torch.full(ids.shape, self.virtual_length, device=device)
        if self.state is not None and self.state.position.device != device:  # resumed
            self.state = self.state.map(lambda t: t.to(device))
        if self.state is not None and self.reset_memory_every:
            self.state = self.reset_memory(self.state, step)
        logits, state = model(ids, self.state, write_weights=weights)
        self.state = state.map(torch.Tensor.detach)  # back-propagation stops at the step
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return loss, {}

    def reset_memory(self, state: StreamState, step: int) -> StreamState:
        """The rows whose turn it is at `step` with their memory (M, z, accumulators) empty;
        their window and position stay (the text goes on)."""
        fresh = (step - 1 + self.phases) % self.reset_memory_every == 0  # [B]
        if not fresh.any():
            return state
        keep = (~fresh).to(state.position.device)
        emptied = {}
        for name in MEMORY_INPUTS:
            tensor = getattr(state, name)  # [B, ...]
            emptied[name] = tensor * keep.view(-1, *[1] * (tensor.dim() - 1)).to(tensor.dtype)
        return replace(state, **emptied)

    @torch.no_grad()
    def evaluate(self, model: InfiniLlamaForCausalLM, step: int) -> dict[str, Any]:
        """Next-token loss over the held-out text, streamed from an empty memory."""
        if self.eval_ids is None:
            return {}
        device = next(model.parameters()).device
        N, total, count, state = self.config.segment_len, 0.0, 0, None
        ids = self.eval_ids.to(device)
        for start in range(0, len(ids) - 1, N):
            piece = ids[start : start + N + 1]
            logits, state = model(piece[None, :-1], state)
            total += F.cross_entropy(logits[0].float(), piece[1:], reduction="sum").item()
            count += len(piece) - 1
        return {"heldout_loss": round(total / count, 5), "heldout_tokens": count}

    def state_dict(self) -> dict[str, Any]:
        """The rows' carried state (memory, window, position) on the host."""
        return {} if self.state is None else {"tensors": [t.cpu() for t in self.state.tensors()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.state = StreamState.from_tensors(state["tensors"], self.config.segment_len)


def default_segments(config) -> int:
    """Segments per step: enough that the memory is written and read inside one step (2), and
    a window longer than a segment fits."""
    return max(2, math.ceil((config.local_window or 0) / config.segment_len) + 1)
