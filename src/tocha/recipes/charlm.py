"""The character language-model recipe (task=charlm): a text in, a trained LSTM/GRU + run folder + report out.

It brings only what is particular to text (the corpus and its vocabulary, the loss over every
position, bits-per-char, samples, the 3-gram baseline) and drives the same `train_loop`, run folder,
checkpoints, resume, signals and report as the image recipe, whose helpers it imports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

import torch
from torch import nn

from tocha import runfolder as rf
from tocha.config import AUTO, DEFAULT_LR, TrainConfig, dump_yaml
from tocha.data.text import TextBatches, load_corpus
from tocha.engine import resume
from tocha.engine.checkpoint import load_weights, save_weights
from tocha.engine.distributed import from_env
from tocha.engine.loop import AMP_DTYPES, train_loop
from tocha.engine.optim import build_optimizer, build_scheduler
from tocha.engine.progress import Progress
from tocha.errors import UserError
from tocha.hardware import plan, usable_cpus
from tocha.metrics.names import default_mode
from tocha.metrics.text import LMScore, trigram_add_one, word_hit_rate, words
from tocha.models.text import CharRNN, TextModelSpec, build_text_model, sample
from tocha.recipes.classify import (StopSignals, configure_cuda, find_resume_point, load_best, peak_memory_mb,
                                    restore, seed_everything, training_guard, write_or_explain,
                                    write_run_start)

log = logging.getLogger("tocha")
SAMPLES = "samples.txt"
SAMPLE_TEMPERATURE = 0.8
HIT_RATE_CHARS = 2000          # characters generated at the end to measure the word-hit rate


@dataclass(frozen=True)
class LMResult:
    model: nn.Module                 # with the best checkpoint's weights loaded
    run_dir: Path | None
    best: dict | None
    history: tuple[dict, ...]
    val: dict                        # val.loss (nats/char), val.bpc, val.perplexity, val.accuracy of the best model
    baseline: LMScore                # the character 3-gram (add-one) on the same validation text
    sample: str                      # HIT_RATE_CHARS characters at temperature 0.8
    summary: dict


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


def generate_text(model: CharRNN, chars: tuple[str, ...], prompt: str, length: int, *, seed: int,
                  temperature: float = SAMPLE_TEMPERATURE, top_k: int = 0, on_text=None) -> str:
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in prompt if c in index] or [index.get("\n", 1)]
    generator = torch.Generator().manual_seed(seed)
    emit = (lambda i: on_text(chars[i])) if on_text is not None else None
    new = sample(model, torch.tensor(ids), length, temperature=temperature, top_k=top_k, generator=generator,
                 on_id=emit)
    return "".join(chars[i] for i in new)


def checkpoint_metadata(meta: dict) -> dict[str, str]:
    """What `tocha generate` needs from a weights file alone: the model spec and the vocabulary."""
    return {"tocha.task": "charlm", "tocha.meta": json.dumps(meta)}


def train(cfg: TrainConfig, *, argv: list[str] | None = None) -> LMResult:
    dist = from_env()
    if dist.world_size > 1:
        raise UserError("task=charlm runs in one process", where="torchrun", fix="run it with plain 'tocha train'")
    seed_everything(cfg.seed, cfg.deterministic)
    corpus = load_corpus(cfg.data.path, val_fraction=cfg.data.val_fraction, seq_len=cfg.seq_len)
    vocab = corpus.vocab
    hw = plan(cfg.device, cfg.precision, cfg.data.workers, cfg.threads, file_data=False)
    device = torch.device(hw.device)
    torch.set_num_threads(hw.threads)
    cuda_notes = configure_cuda(cfg.deterministic) if device.type == "cuda" else []

    dropout = 0.1 if cfg.model.dropout == AUTO else cfg.model.dropout
    spec = TextModelSpec(cfg.model.name, len(vocab), hidden=cfg.model.hidden[0], layers=cfg.model.layers,
                         dropout=dropout, tie_weights=cfg.model.tie_weights)
    model = build_text_model(spec)
    weight_notes = load_weights(model, Path(cfg.model.weights), strict=False) if cfg.model.weights else []
    model.carry_state = cfg.tbptt
    model.to(device)

    batches = {"train": TextBatches(corpus.train, cfg.seq_len, cfg.batch_size, device=device, shuffle=not cfg.tbptt,
                                    seed=cfg.seed, streams=cfg.tbptt, on_start=model.reset_state),
               "val": TextBatches(corpus.val, cfg.seq_len, cfg.batch_size, device=device, shuffle=False,
                                  streams=cfg.tbptt)}
    if device.type == "cpu" and cfg.threads == AUTO:
        from tocha.engine.threads import choose_threads, training_step

        x, y = next(iter(batches["train"]))
        threads, why = choose_threads(training_step(model, x, y, lm_loss), usable_cpus())
        hw = dataclasses.replace(hw, threads=threads, reasons={**hw.reasons, "threads": why})
        torch.set_num_threads(threads)
        model.reset_state()

    run_dir, loaded, out = None, None, cfg.out
    if out is not None or argv is not None:
        out = out or rf.default_run_name("text", cfg.model.name)
        rf.lock_run_dir(Path(out))
        loaded = find_resume_point(Path(out)) if cfg.resume == "auto" else None
        run_dir = Path(out) if loaded else rf.prepare_run_dir(out, overwrite=cfg.overwrite or cfg.resume == "auto")
    mode = default_mode(cfg.monitor) if cfg.mode == AUTO else cfg.mode
    resolved = dataclasses.replace(
        cfg, device=hw.device, precision=hw.precision, threads=hw.threads, mode=mode, out=out,
        lr=DEFAULT_LR[cfg.optimizer] if cfg.lr == AUTO else cfg.lr,
        model=dataclasses.replace(cfg.model, dropout=dropout),
        log=dataclasses.replace(cfg.log, tensorboard=False if cfg.log.tensorboard == AUTO else cfg.log.tensorboard))

    baseline = trigram_add_one(corpus.train.tolist(), corpus.val.tolist(), len(vocab))
    log.info("data       text: %s train / %s val characters, vocabulary %d (built from the training split), "
             "from %s", f"{len(corpus.train):,}", f"{len(corpus.val):,}", len(vocab), corpus.source)
    if corpus.unknown_val_chars:
        log.info("note       %d validation characters never occur in the training split: scored as unknown",
                 corpus.unknown_val_chars)
    log.info("batches    %d windows of %d characters per epoch (%s), tensor-resident on %s",
             batches["train"].n_windows, cfg.seq_len,
             "contiguous streams, hidden state carried (truncated BPTT)" if cfg.tbptt else "shuffled", device)
    for line in hw.lines():
        log.info("%s", line)
    for note in cuda_notes:
        log.info("speed      %s", note)
    log.info("model      %s: %s parameters (hidden %d, %d layers%s)", spec.name,
             f"{sum(p.numel() for p in model.parameters()):,}", spec.hidden, spec.layers,
             ", tied embedding" if spec.tie_weights else "")
    for note in weight_notes:
        log.info("weights    %s", note)
    log.info("baseline   character 3-gram, add-one smoothing: %.4f bpc on the validation split", baseline.bpc)
    if run_dir is not None:
        log.info("run folder %s", run_dir)
    if loaded:
        log.info("resume     from %s (epoch %d, step %d)", loaded.path, loaded.state["position"]["epoch"],
                 loaded.state["position"]["step"])

    meta = {"task": "charlm", "model": spec.to_dict(), "vocab": list(vocab.chars), "seq_len": cfg.seq_len,
            "precision": hw.precision, "baseline_3gram_bpc": baseline.bpc}
    weights_metadata = checkpoint_metadata(meta)
    if run_dir is not None:
        write_run_start(run_dir, resolved, meta, hw, argv)

    optimizer = build_optimizer(model, cfg.optimizer, lr=resolved.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)
    steps_per_epoch = math.ceil(len(batches["train"]) / cfg.grad_accum_steps)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total_steps=cfg.epochs * steps_per_epoch,
                                steps_per_epoch=steps_per_epoch, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                                step_epochs=cfg.step_epochs, step_gamma=cfg.step_gamma)

    samples: list[tuple[int, str]] = []

    def evaluate() -> dict:
        record = score(model, batches["val"], precision=hw.precision)
        if cfg.sample_chars:
            step = len(samples)
            samples.append((step, generate_text(model, vocab.chars, corpus.val_text[:1], cfg.sample_chars,
                                                seed=cfg.seed)))
        return record

    metrics_log = rf.MetricsLog(run_dir, csv_enabled=cfg.log.csv, tensorboard=resolved.log.tensorboard) \
        if run_dir else None
    best_state: dict[str, torch.Tensor] | None = None

    def on_eval_end(record: dict, improved: bool) -> None:
        nonlocal best_state
        if metrics_log:
            metrics_log.write(record)
        if run_dir is not None:
            if samples:
                with open(run_dir / SAMPLES, "a", encoding="utf-8") as f:
                    f.write(f"=== step {record['step']}, epoch {record['epoch']:g}, val.bpc {record['val.bpc']:.4f}, "
                            f"temperature {SAMPLE_TEMPERATURE} ===\n{samples[-1][1]}\n\n")
            write_or_explain(lambda: save_weights(model, run_dir / rf.LAST_WEIGHTS, weights_metadata),
                             "the last weights", run_dir)
            if improved:
                write_or_explain(lambda: save_weights(model, run_dir / rf.BEST_WEIGHTS, weights_metadata),
                                 "the best weights", run_dir)
        elif improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_checkpoint(position: dict) -> None:
        state = {"format": resume.FORMAT, "position": position, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler else None, "rng": resume.rng_state({})}
        write_or_explain(lambda: resume.write(run_dir / "checkpoints", position["step"], model, state,
                                              keep=cfg.checkpoint.keep), "a checkpoint", run_dir)

    start = None
    if loaded:
        start = restore(loaded, model, optimizer, scheduler, {})
        if metrics_log:
            metrics_log.restart(start["history"])
    progress = Progress(epochs=cfg.epochs, steps_per_epoch=len(batches["train"]), enabled=cfg.log.progress)
    signals = StopSignals() if run_dir is not None else None
    with training_guard(run_dir, resolved, signals, metrics_log):
        result = train_loop(
            model, batches["train"], device=device, optimizer=optimizer, scheduler=scheduler, epochs=cfg.epochs,
            loss_fn=lm_loss, precision=hw.precision, grad_accum_steps=cfg.grad_accum_steps, grad_clip=cfg.grad_clip,
            log_every=cfg.log_every, eval_every_steps=cfg.eval_every_steps, evaluate=evaluate, monitor=cfg.monitor,
            mode=mode, on_log=metrics_log.write if metrics_log else None, on_eval_end=on_eval_end, progress=progress,
            dist=dist, start=start, checkpoint_every=cfg.checkpoint.every_steps,
            on_checkpoint=on_checkpoint if run_dir else None, stop_signal=signals.pending if signals else None,
            patience=cfg.early_stop.patience, min_delta=cfg.early_stop.min_delta,
            skip_nonfinite=cfg.on_nonfinite == "skip")

    load_best(model, run_dir, best_state)
    model.reset_state()
    val = score(model, batches["val"], precision=hw.precision)
    text = generate_text(model, vocab.chars, corpus.val_text[:1], HIT_RATE_CHARS, seed=cfg.seed)
    hit_rate, n_words = word_hit_rate(text, set(words(corpus.train_text)))
    memory, memory_kind = peak_memory_mb(device)
    summary = {"best": result.best, "epochs": cfg.epochs, "steps": result.steps, "device": hw.device,
               "precision": hw.precision, "val": val,
               "baseline_3gram": {"bpc": baseline.bpc, "nats_per_char": baseline.nats_per_char,
                                  "chars": baseline.chars},
               "bpc_reduction_vs_3gram": 1 - val["val.bpc"] / baseline.bpc,
               "sample": {"temperature": SAMPLE_TEMPERATURE, "chars": HIT_RATE_CHARS, "words": n_words,
                          "word_hit_rate": hit_rate},
               "train_chars": len(corpus.train), "val_chars": len(corpus.val), "vocab_size": len(vocab),
               "wall_seconds": round(result.wall_seconds, 3), "train_seconds": round(result.train_seconds, 3),
               "train_chars_per_second": round(result.train_samples * cfg.seq_len / max(result.train_seconds, 1e-9), 1),
               "peak_memory_mb": round(memory, 1), "peak_memory_kind": memory_kind}
    if result.stopped_early:
        summary["early_stop"] = result.stopped_early
    if run_dir is not None:
        rf.write_json(run_dir / rf.SUMMARY, summary)
        (run_dir / "sample-final.txt").write_text(text + "\n", encoding="utf-8")
        from tocha.reports.html import write_report

        write_report(run_dir, title=f"tocha run {run_dir.name} (character language model)", summary=summary,
                     config_text=dump_yaml(resolved), test_metrics=None, val_metrics=None,
                     history=list(result.history), extra_sections=report_sections(summary, samples, text))
    return LMResult(model, run_dir, result.best, result.history, val, baseline, text, summary)


def report_sections(summary: dict, samples: list[tuple[int, str]], final: str) -> list[tuple[str, str]]:
    """HTML (escaped here) for the report: the model against the 3-gram baseline, and the samples."""
    val, base = summary["val"], summary["baseline_3gram"]
    rows = [("this model (best checkpoint)", val["val.bpc"], val["val.perplexity"]),
            ("character 3-gram, add-one smoothing", base["bpc"], 2 ** base["bpc"])]
    table = "<table><thead><tr><th>validation split</th><th>bits per char</th><th>perplexity</th></tr></thead><tbody>"
    table += "".join(f"<tr><td>{escape(n)}</td><td>{b:.4f}</td><td>{p:.3f}</td></tr>" for n, b, p in rows)
    table += (f"</tbody></table><p>{summary['bpc_reduction_vs_3gram']:.1%} fewer bits per character than the "
              f"baseline; {summary['sample']['word_hit_rate']:.1%} of the {summary['sample']['words']} words of the "
              f"sample below occur in the training text.</p>")
    final_html = (f"<p>{HIT_RATE_CHARS} characters at temperature {SAMPLE_TEMPERATURE} from the best checkpoint:</p>"
                  f"<pre>{escape(final)}</pre>")
    history = "".join(f"<p>evaluation {i + 1}</p><pre>{escape(text)}</pre>" for i, text in samples[-3:])
    return [("Language model against the 3-gram baseline", table), ("Generated text", final_html),
            ("Samples at the last evaluations (samples.txt has them all)", history or "<p>none</p>")]
