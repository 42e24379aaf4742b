"""Character language models: Embedding -> stacked LSTM/GRU with dropout -> Linear (seed 002's text RNN).

`forward(ids [B, T]) -> logits [B, T, vocab]`, so the one training loop drives it like any model.
With `carry_state` the model keeps its last hidden state (detached: truncated BPTT) and starts the
next batch from it; `reset_state()` forgets it (the recipe calls it at the start of every pass).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TextModelSpec:
    """Everything needed to rebuild a character model; stored in meta.json and in the checkpoint."""

    name: str  # lstm | gru
    vocab_size: int
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1
    tie_weights: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class CharRNN(nn.Module):
    def __init__(self, spec: TextModelSpec) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[spec.name]
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden)
        # nn.LSTM's own dropout acts between layers; the one below acts on the top layer's output.
        self.rnn = rnn(
            spec.hidden,
            spec.hidden,
            num_layers=spec.layers,
            batch_first=True,
            dropout=spec.dropout if spec.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(spec.dropout)
        # Tied: the output layer reuses the embedding matrix (same width by construction). Done in `step`
        # rather than by sharing a Parameter, so checkpoints hold each tensor under one name only.
        self.tied = spec.tie_weights
        self.head = None if self.tied else nn.Linear(spec.hidden, spec.vocab_size)
        self.head_bias = nn.Parameter(torch.zeros(spec.vocab_size)) if self.tied else None
        self.carry_state = False
        self.state = None

    def reset_state(self) -> None:
        self.state = None

    def forward(self, ids: torch.Tensor, state=None) -> torch.Tensor:
        logits, new_state = self.step(ids, state if state is not None else self._carried(ids.shape[0]))
        if self.carry_state:
            # Detached: gradients stop at the window boundary (truncated BPTT).
            self.state = tuple(s.detach() for s in new_state) if isinstance(new_state, tuple) else new_state.detach()
        return logits

    def _carried(self, batch: int):
        if not self.carry_state or self.state is None:
            return None
        first = self.state[0] if isinstance(self.state, tuple) else self.state
        return self.state if first.shape[1] == batch else None  # a short last batch starts fresh

    def step(self, ids: torch.Tensor, state=None):
        """(logits [B, T, V], state): for generation, which feeds one character at a time."""
        out, state = self.rnn(self.embed(ids), state)
        out = self.drop(out)
        logits = nn.functional.linear(out, self.embed.weight, self.head_bias) if self.tied else self.head(out)
        return logits, state


def build_text_model(spec: TextModelSpec) -> CharRNN:
    return CharRNN(spec)


@torch.inference_mode()
def sample(
    model: CharRNN,
    prompt: torch.Tensor,
    length: int,
    *,
    temperature: float = 0.8,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    on_id=None,
) -> list[int]:
    """`length` new character ids after `prompt` (ids [T], T >= 1), one forward step per character.

    The draw happens on the CPU with a CPU `generator`, so a seed gives the same text on any device
    (up to floating-point differences of the logits). temperature 0 means greedy. `on_id` gets each
    new id as it is chosen (streaming output).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, state = model.step(prompt.view(1, -1).to(device))
    out: list[int] = []
    for _ in range(length):
        last = logits[0, -1].float().cpu()
        last[0] = float("-inf")  # id 0 is the unknown-character slot: never a character to write
        if temperature <= 0:
            chosen = int(last.argmax())
        else:
            last = last / temperature
            if 0 < top_k < last.numel():
                kth = last.topk(top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            chosen = int(torch.multinomial(last.softmax(-1), 1, generator=generator))
        out.append(chosen)
        if on_id is not None:
            on_id(chosen)
        logits, state = model.step(torch.tensor([[chosen]], device=device), state)
    model.train(was_training)
    return out
