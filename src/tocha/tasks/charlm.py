"""The character language model (task=charlm): a text in, an LSTM/GRU that predicts the next character.

It brings only what is particular to text: the corpus and its vocabulary, the loss over every
position, bits per character, samples, and the 3-gram baseline. The harness does the rest.
"""

from __future__ import annotations

import json
import logging
from html import escape
from pathlib import Path

import torch
from torch import nn

from tocha.config import AUTO
from tocha.data.text import TextBatches, load_corpus
from tocha.engine.checkpoint import load_weights
from tocha.engine.step import AMP_DTYPES
from tocha.metrics.text import LMScore, trigram_add_one, word_hit_rate, words
from tocha.models.text import CharRNN, TextModelSpec, build_text_model, sample
from tocha.tasks.base import Built, Finished

log = logging.getLogger("tocha")
SAMPLES = "samples.txt"
SAMPLE_TEMPERATURE = 0.8
HIT_RATE_CHARS = 2000  # characters generated at the end to measure the word-hit rate


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position of every window: nats per character."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


@torch.inference_mode()
def score(model: CharRNN, batches: TextBatches, *, precision: str) -> dict:
    """nats/char, bpc, perplexity and next-character accuracy over a split; one host read at the end."""
    device = batches.device
    amp_dtype = AMP_DTYPES[precision]
    carried, model.state = model.state, None  # evaluation must not disturb the training stream's state
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    hits = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    batches.set_epoch(0)
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        hits += (logits.argmax(-1) == y).sum()
        count += y.numel()
    model.state = carried
    model.train(was_training)
    nats, correct = (total / max(count, 1)).item(), hits.item()
    return {**LMScore(nats, count).flat("val"), "val.accuracy": correct / max(count, 1)}


def generate_text(
    model: CharRNN,
    chars: tuple[str, ...],
    prompt: str,
    length: int,
    *,
    seed: int,
    temperature: float = SAMPLE_TEMPERATURE,
    top_k: int = 0,
    on_text=None,
) -> str:
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in prompt if c in index] or [index.get("\n", 1)]
    generator = torch.Generator().manual_seed(seed)
    emit = (lambda i: on_text(chars[i])) if on_text is not None else None
    new = sample(
        model, torch.tensor(ids), length, temperature=temperature, top_k=top_k, generator=generator, on_id=emit
    )
    return "".join(chars[i] for i in new)


def checkpoint_metadata(meta: dict) -> dict[str, str]:
    """What `tocha generate` needs from a weights file alone: the model spec and the vocabulary."""
    return {"tocha.task": "charlm", "tocha.meta": json.dumps(meta)}


class Task:
    name = "charlm"

    def __init__(self) -> None:
        self.corpus = self.vocab = self.baseline = None
        self.samples: list[tuple[int, str]] = []
        self.sample_chars, self.seed = 0, 0

    def build(self, cfg, placement, *, data=None, model: nn.Module | None = None) -> Built:
        if data is not None or model is not None:
            from tocha.errors import UserError

            raise UserError(
                "task=charlm builds its own lstm/gru from data.path",
                where="tocha.fit",
                fix='pass model options instead, e.g. tocha.fit({"name": "gru", "hidden": [256]}, '
                'task="charlm", data={"path": "corpus.txt"})',
            )
        corpus = self.corpus = load_corpus(cfg.data.path, val_fraction=cfg.data.val_fraction, seq_len=cfg.seq_len)
        vocab = self.vocab = corpus.vocab
        self.sample_chars, self.seed = cfg.sample_chars, cfg.seed
        device = placement.device
        dropout = 0.1 if cfg.model.dropout == AUTO else cfg.model.dropout
        spec = TextModelSpec(
            cfg.model.name,
            len(vocab),
            hidden=cfg.model.hidden[0],
            layers=cfg.model.layers,
            dropout=dropout,
            tie_weights=cfg.model.tie_weights,
        )
        model = build_text_model(spec)
        weight_notes = load_weights(model, Path(cfg.model.weights), strict=False) if cfg.model.weights else []
        model.carry_state = cfg.tbptt
        model.to(device)
        batches = {
            "train": TextBatches(
                corpus.train,
                cfg.seq_len,
                placement.batch_size,
                device=device,
                shuffle=not cfg.tbptt,
                seed=cfg.seed,
                streams=cfg.tbptt,
                on_start=model.reset_state,
            ),
            "val": TextBatches(
                corpus.val, cfg.seq_len, placement.batch_size, device=device, shuffle=False, streams=cfg.tbptt
            ),
        }
        probe = next(iter(batches["train"]))
        model.reset_state()
        baseline = self.baseline = trigram_add_one(corpus.train.tolist(), corpus.val.tolist(), len(vocab))
        lines = [
            f"data       text: {len(corpus.train):,} train / {len(corpus.val):,} val characters, vocabulary "
            f"{len(vocab)} (built from the training split), from {corpus.source}"
        ]
        if corpus.unknown_val_chars:
            lines.append(
                f"note       {corpus.unknown_val_chars} validation characters never occur in the training "
                "split: scored as unknown"
            )
        how = "contiguous streams, hidden state carried (truncated BPTT)" if cfg.tbptt else "shuffled"
        lines.append(
            f"batches    {batches['train'].n_windows} windows of {cfg.seq_len} characters per epoch "
            f"({how}), tensor-resident on {device}"
        )
        layers = f"{spec.layers} layer{'s' if spec.layers != 1 else ''}"
        lines.append(
            f"model      {spec.name}: {sum(p.numel() for p in model.parameters()):,} parameters (hidden "
            f"{spec.hidden}, {layers}{', tied embedding' if spec.tie_weights else ''})"
        )
        lines += [f"weights    {note}" for note in weight_notes]
        lines.append(f"baseline   character 3-gram, add-one smoothing: {baseline.bpc:.4f} bpc on the validation split")
        meta = {
            "task": "charlm",
            "model": spec.to_dict(),
            "vocab": list(vocab.chars),
            "seq_len": cfg.seq_len,
            "precision": placement.precision,
            "device": placement.hw.device,
            "baseline_3gram_bpc": baseline.bpc,
        }
        return Built(
            model,
            batches,
            meta,
            lm_loss,
            top1_correct_tokens,
            probe,
            lines,
            resolved={"model.dropout": dropout},
            weights_metadata=checkpoint_metadata(meta),
            placement=placement.in_memory("text is held in memory as one id tensor"),
            run_name=("text", cfg.model.name),
            samples_unit="windows",
        )

    def evaluate(self, built: Built, split: str) -> dict:
        record = score(built.model, built.batches[split], precision=built.placement.precision)
        if self.sample_chars:
            self.samples.append(
                (
                    len(self.samples),
                    generate_text(
                        built.model, self.vocab.chars, self.corpus.val_text[:1], self.sample_chars, seed=self.seed
                    ),
                )
            )
        return record

    def after_eval(self, built: Built, record: dict) -> dict[str, str]:
        if not self.samples:
            return {}
        return {
            SAMPLES: f"=== step {record['step']}, epoch {record['epoch']:g}, val.bpc {record['val.bpc']:.4f}, "
            f"temperature {SAMPLE_TEMPERATURE} ===\n{self.samples[-1][1]}\n\n"
        }

    def finish(self, built: Built, cfg, summary: dict) -> Finished:
        model, corpus, baseline = built.model, self.corpus, self.baseline
        model.reset_state()
        val = score(model, built.batches["val"], precision=built.placement.precision)
        text = generate_text(model, self.vocab.chars, corpus.val_text[:1], HIT_RATE_CHARS, seed=cfg.seed)
        hit_rate, n_words = word_hit_rate(text, set(words(corpus.train_text)))
        fields = {
            "val": val,
            "baseline_3gram": {"bpc": baseline.bpc, "nats_per_char": baseline.nats_per_char, "chars": baseline.chars},
            "bpc_reduction_vs_3gram": 1 - val["val.bpc"] / baseline.bpc,
            "sample": {
                "temperature": SAMPLE_TEMPERATURE,
                "chars": HIT_RATE_CHARS,
                "words": n_words,
                "word_hit_rate": hit_rate,
            },
            "train_chars": len(corpus.train),
            "val_chars": len(corpus.val),
            "vocab_size": len(self.vocab),
            "train_chars_per_second": round(summary["train_samples_per_second"] * cfg.seq_len, 1),
        }
        sections = report_sections({**summary, **fields}, self.samples, text)
        gain = fields["bpc_reduction_vs_3gram"]
        headline = [
            f"val bpc {val['val.bpc']:.4f} (perplexity {val['val.perplexity']:.2f}); character 3-gram "
            f"baseline {baseline.bpc:.4f} bpc: {abs(gain):.1%} {'lower' if gain >= 0 else 'higher'}",
            f"sample at temperature {SAMPLE_TEMPERATURE}: {hit_rate:.1%} of {n_words} words occur in the training text",
            f"{fields['train_chars_per_second']:,.0f} chars/s",
        ]
        return Finished(
            summary=fields,
            files={"sample-final.txt": text + "\n"},
            report={"extra_sections": sections, "title_suffix": " (character language model)"},
            values={"val": val, "baseline": baseline, "sample": text},
            headline=headline,
        )


def top1_correct_tokens(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-character accuracy over every position of every window."""
    return (logits.argmax(-1) == y).sum(), y.numel()


def report_sections(summary: dict, samples: list[tuple[int, str]], final: str) -> list[tuple[str, str]]:
    """HTML (escaped here) for the report: the model against the 3-gram baseline, and the samples."""
    val, base = summary["val"], summary["baseline_3gram"]
    rows = [
        ("this model (best checkpoint)", val["val.bpc"], val["val.perplexity"]),
        ("character 3-gram, add-one smoothing", base["bpc"], 2 ** base["bpc"]),
    ]
    table = "<table><thead><tr><th>validation split</th><th>bits per char</th><th>perplexity</th></tr></thead><tbody>"
    table += "".join(f"<tr><td>{escape(n)}</td><td>{b:.4f}</td><td>{p:.3f}</td></tr>" for n, b, p in rows)
    gain = summary["bpc_reduction_vs_3gram"]  # negative when the model is worse than the baseline
    table += (
        f"</tbody></table><p>{abs(gain):.1%} {'fewer' if gain >= 0 else 'more'} bits per character than the "
        f"baseline; {summary['sample']['word_hit_rate']:.1%} of the {summary['sample']['words']} words of the "
        f"sample below occur in the training text.</p>"
    )
    final_html = (
        f"<p>{HIT_RATE_CHARS} characters at temperature {SAMPLE_TEMPERATURE} from the best checkpoint:</p>"
        f"<pre>{escape(final)}</pre>"
    )
    history = "".join(f"<p>evaluation {i + 1}</p><pre>{escape(text)}</pre>" for i, text in samples[-3:])
    return [
        ("Language model against the 3-gram baseline", table),
        ("Generated text", final_html),
        ("Samples at the last evaluations (samples.txt has them all)", history or "<p>none</p>"),
    ]
