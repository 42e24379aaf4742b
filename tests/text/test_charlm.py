"""The character model on the shared engine: contract, golden loss, TBPTT state, seeded generation."""

import pytest
import torch

from tocha.data.text import TextBatches, Vocab
from tocha.engine.loop import train_loop
from tocha.engine.optim import build_optimizer
from tocha.models import TEXT_MODELS
from tocha.models.text import TextModelSpec, build_text_model, sample
from tocha.tasks.charlm import generate_text, lm_loss, score

CPU = torch.device("cpu")
TEXT = "the quick brown fox jumps over the lazy dog; " * 40


@pytest.mark.parametrize("name", sorted(TEXT_MODELS))
@pytest.mark.parametrize("tie", [False, True])
def test_every_text_model_trains_a_step(name, tie):
    model = build_text_model(TextModelSpec(name, 11, hidden=8, layers=2, dropout=0.1, tie_weights=tie))
    logits = model(torch.randint(0, 11, (3, 5)))
    assert logits.shape == (3, 5, 11)
    lm_loss(logits, torch.randint(0, 11, (3, 5))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    assert ("head.weight" in names) != tie  # tied: the embedding matrix is the only [V, H] matrix


def _golden_run(steps=20):
    torch.manual_seed(0)
    vocab = Vocab.build(TEXT)
    model = build_text_model(TextModelSpec("lstm", len(vocab), hidden=16, layers=2, dropout=0.0))
    batches = TextBatches(vocab.encode(TEXT), 16, 8, device=CPU, shuffle=True, seed=0)
    assert len(batches) * 2 >= steps
    opt = build_optimizer(model, "adamw", lr=1e-2)
    records = []
    train_loop(
        model,
        batches,
        device=CPU,
        optimizer=opt,
        scheduler=None,
        epochs=2,
        loss_fn=lm_loss,
        log_every=steps // 2,
        on_log=records.append,
    )
    return records


def test_golden_loss_after_20_lstm_steps():
    records = _golden_run()
    assert [r["step"] for r in records[:2]] == [10, 20]
    # Pinned on CPU (torch 2.14.1): the mean training loss (nats/char) over steps 1-10 and 11-20.
    assert records[0]["train.loss"] == pytest.approx(3.2233, abs=1e-3)
    assert records[1]["train.loss"] == pytest.approx(2.8849, abs=1e-3)


def test_truncated_bptt_carries_and_resets_the_state():
    vocab = Vocab.build(TEXT)
    model = build_text_model(TextModelSpec("gru", len(vocab), hidden=8, layers=1, dropout=0.0))
    model.carry_state = True
    batches = TextBatches(
        vocab.encode(TEXT), 10, 4, device=CPU, shuffle=False, streams=True, on_start=model.reset_state
    )
    it = iter(batches)
    x0, _ = next(it)
    model(x0)
    carried = model.state.clone()
    x1, _ = next(it)
    with_state = model(x1)
    model.state = None
    assert not torch.allclose(with_state, model(x1))  # the carried state changes the next window's output
    assert not carried.requires_grad  # detached: gradients stop at the window boundary
    next(iter(batches))
    assert model.state is None  # a new pass starts from zero


def test_eval_score_is_bits_per_char():
    vocab = Vocab.build(TEXT)
    model = build_text_model(TextModelSpec("lstm", len(vocab), hidden=8, layers=1, dropout=0.0))
    with torch.no_grad():
        model.head.weight.zero_(), model.head.bias.zero_()  # uniform predictions: log2(V) bits per char
    batches = TextBatches(vocab.encode(TEXT), 16, 8, device=CPU, shuffle=False)
    result = score(model, batches, precision="fp32")
    assert result["val.bpc"] == pytest.approx(torch.log2(torch.tensor(float(len(vocab)))).item(), rel=1e-5)
    assert result["val.perplexity"] == pytest.approx(len(vocab), rel=1e-4)


def test_generation_is_reproducible_with_a_seed():
    vocab = Vocab.build(TEXT)
    torch.manual_seed(0)
    model = build_text_model(TextModelSpec("lstm", len(vocab), hidden=16, layers=1, dropout=0.5))
    model.train()  # generation must switch dropout off by itself
    a = generate_text(model, vocab.chars, "the ", 80, seed=7)
    b = generate_text(model, vocab.chars, "the ", 80, seed=7)
    c = generate_text(model, vocab.chars, "the ", 80, seed=8)
    assert a == b and a != c and len(a) == 80
    assert set(a) <= set(vocab.chars[1:])  # the unknown slot is never written
    greedy = sample(model, vocab.encode("the "), 30, temperature=0)
    top1 = sample(model, vocab.encode("the "), 30, top_k=1, generator=torch.Generator().manual_seed(3))
    assert greedy == top1
    streamed = []
    generate_text(model, vocab.chars, "the ", 20, seed=7, on_text=streamed.append)
    assert "".join(streamed) == a[:20]


@pytest.mark.parametrize(("model_bpc", "said"), [(2.5, "20.6% fewer bits"), (4.0, "27.0% more bits")])
def test_the_report_says_more_bits_when_the_model_loses_to_the_baseline(model_bpc, said):
    from tocha.tasks.charlm import report_sections

    summary = {
        "val": {"val.bpc": model_bpc, "val.perplexity": 2**model_bpc},
        "baseline_3gram": {"bpc": 3.15},
        "bpc_reduction_vs_3gram": 1 - model_bpc / 3.15,
        "sample": {"word_hit_rate": 0.5, "words": 10},
    }
    (_, table), *_ = report_sections(summary, [], "the text")
    assert said in table and "-" not in table.split("<p>")[1]
