"""`tocha compress RUN --goal ...`: search prune x distil x int8 for the fastest artifact within the budget.

Every candidate is an ONNX file timed beside the run's fp32 ONNX in a fresh process
(`timing.fresh_pairing`), at the user's batch, and judged on validation accuracy (the test split is
reported, never used to choose). The candidates, cheapest first, so that a time budget or Ctrl-C
still leaves the best of what is finished:

1. int8 of the fp32 model: static (tocha's own activation ranges, minmax and percentile) with
   per-layer fallback (every layer quantized, the layers that cost most reverted to fp32 until
   within the budget), and int8-dynamic (weights only; suits Linear/LSTM-heavy models);
2. pruning, with the ratio found by bisection on *measured* latency: a pruned model's speed does
   not depend on its weights, so each probe is pruned and exported without fine-tuning and timed
   (seconds each); the least ratio that meets the goal is kept (aiming at the goal divided by the
   best int8 speed-up, when int8 pays, since pruned+int8 is tried too);
3. that ratio fine-tuned with distillation from the unpruned model (soft targets plus labels,
   the classify task's teacher), and its int8. Then, up to MAX_ATTEMPTS fine-tunes and while the
   time left allows (`next_plan`): a model fast enough whose fine-tune cost too much accuracy is
   fine-tuned again for twice the epochs (while that recovers the points still missing); one too
   slow and too costly gives way to the milder ratio where the measured drops put the budget; one
   within the budget but short of the goal to a stronger ratio, found by a second bisection aimed
   at the shortfall the finished model showed.

`goals.search` judges each candidate as it comes; this file makes the artifacts and writes OUT/
(compress.json, the chosen model.onnx, a latency-vs-accuracy plot with the Pareto front, and a
dated section of the run's report.html).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from html import escape
from pathlib import Path

from tocha.deploy import goals
from tocha.deploy.timing import Pairing

Timer = Callable[[Path, Path], Pairing]  # (reference file, candidate file) -> one side-by-side timing
MAX_PRUNE = 0.85  # the most MACs a bisection asks to remove
BISECTION_STEPS = 5
STRONGER_STEPS = 3  # the second bisection, between a finished ratio that fell short and MAX_PRUNE
MAX_ATTEMPTS = 8  # pruned fine-tunes in one search (the time budget usually stops it first)
MAX_EPOCH_FACTOR = 4  # a longer fine-tune doubles the epochs, up to this many times --finetune-epochs


@dataclasses.dataclass
class Probe:
    """One pruning ratio, pruned and exported but not fine-tuned: its speed and size only."""

    ratio: float
    macs: int
    speedup: float
    p50_ms: float
    megabytes: float
    meets: bool
    decided: bool = True  # False: the timing rounds disagreed too much to trust the speed-up


@dataclasses.dataclass
class Attempt:
    """One fine-tuned pruning ratio, as the plan reads it."""

    ratio: float
    epochs: int
    macs: int
    drop: float  # val points lost against fp32: the least of those that reached the goal's speed, else of all
    fast: bool  # it or its int8 reached the goal's speed (or size), whatever the accuracy
    met: bool  # ... and one that did was kept, within the accuracy budget
    kept: list[goals.Candidate]


class GoalSearch:
    def __init__(
        self,
        path: Path,
        folder: Path,
        *,
        goal: goals.Goal,
        max_drop: float,
        time_budget_s: float,
        batch: int,
        prune: float | None,
        prune_options: dict,
        calibration_batches: int,
        echo=print,
        timer: Timer | None = None,
    ) -> None:
        from tocha import runfolder as rf
        from tocha.deploy import timing

        self.path, self.folder, self.goal, self.max_drop = path, folder, goal, max_drop
        self.time_budget_s, self.batch, self.prune, self.prune_options = time_budget_s, batch, prune, prune_options
        self.calibration_batches, self.echo = calibration_batches, echo
        self.meta = rf.read_json(path / rf.META)
        shape = (self.meta["in_channels"], self.meta["image_size"], self.meta["image_size"])
        self.timer = timer or (lambda a, b: timing.fresh_pairing(a, b, batch, shape))
        self.probes: list[Probe] = []
        self.int8_speedup = 1.0  # the best kept static int8 candidate's, once known
        self.int8_shrink = 1.0  # and its size ratio
        self.epoch_seconds: list[float] = []  # seconds per fine-tune epoch, one per pruned candidate
        self.started = time.monotonic()

    # ----------------------------------------------------------------------------- measuring

    def start(self) -> goals.Candidate:
        """The fp32 export, its accuracy on both splits and its own timing: the reference row."""
        from tocha.deploy import measure
        from tocha.deploy.export import export_run

        self.fp32 = export_run(self.path, "onnx", out=self.folder / "model-fp32.onnx").path
        ref = measure.open_artifact(str(self.fp32))
        self.data = {split: measure.split_data(ref.meta, split) for split in ("val", "test")}
        pairing = self.timer(self.fp32, self.fp32)
        megabytes = ref.bytes / 2**20
        goals.check_not_met(self.goal, pairing.a_ms, megabytes)
        return goals.Candidate(
            "fp32",
            measure.accuracy(ref, self.data["val"]),
            measure.accuracy(ref, self.data["test"]),
            pairing.a_ms,
            pairing.a_p90_ms,
            pairing.a_ms,
            megabytes,
            ref.params,
            measure.run_macs(self.path),
            str(self.fp32),
            kept=True,
            why="the reference",
        )

    def measured(self, name: str, file: Path, macs: int | None, note: str = "") -> goals.Candidate:
        from tocha.deploy import measure

        art = measure.open_artifact(str(file))
        pairing = self.timer(self.fp32, file)
        c = goals.Candidate(
            name,
            measure.accuracy(art, self.data["val"]),
            measure.accuracy(art, self.data["test"]),
            pairing.b_ms,
            pairing.b_p90_ms,
            pairing.a_ms,
            art.bytes / 2**20,
            art.params,
            macs,
            str(file),
            note=note,
        )
        if not pairing.decided:
            c.why = f"too noisy to decide ({pairing.speedup:.2f}x overall, the timing rounds disagree)"
        return c

    def val_accuracy(self, file: Path) -> float:
        from tocha.deploy import measure

        return measure.accuracy(measure.open_artifact(str(file)), self.data["val"])

    # ----------------------------------------------------------------------------- int8

    def calibration(self):
        if not hasattr(self, "_calibration"):
            import torch

            from tocha.engine.batches import DeviceTransform
            from tocha.recipes.runs import load_split

            train = load_split(self.path, "train").head(self.calibration_batches * 64)
            transform = DeviceTransform(self.meta["mean"], self.meta["std"], device=torch.device("cpu"))
            self._calibration = transform.prepare(train)
        return self._calibration

    def int8(self, name: str, source: Path, macs: int | None, method: str) -> goals.Candidate:
        """Static int8 with per-layer fallback: within `max_drop` of `source`'s val accuracy if it can be."""
        from tocha.deploy.fallback import int8_with_fallback

        out = self.folder / f"model-{name.replace('+', '-')}.onnx"
        result = int8_with_fallback(
            source,
            out,
            calibration=self.calibration(),
            evaluate=self.val_accuracy,
            max_drop_points=self.max_drop,
            method=method,
            echo=lambda line: self.echo(f"  {name}: {line}"),
        )
        reverted = ", ".join(result.reverted) or "none"
        return self.measured(name, out, macs, note=f"{method} ranges; layers kept fp32: {reverted}")

    def int8_dynamic(self, name: str, source: Path, macs: int | None) -> goals.Candidate:
        from tocha.deploy.steps import quantize_onnx

        out = self.folder / f"model-{name.replace('+', '-')}.onnx"
        quantize_onnx(source, out, dynamic=True, keep_edges=False)
        return self.measured(name, out, macs, note="int8 weights, activations quantized at run time")

    # ----------------------------------------------------------------------------- pruning

    def target_ms(self, reference_ms: float) -> float | None:
        """The latency the pruned model should reach (None for a size goal)."""
        if self.goal.key == "size_mb":
            return None
        goal_ms = reference_ms / self.goal.value if self.goal.key == "speedup" else self.goal.value
        return goal_ms * self.int8_speedup  # pruned+int8 is tried too: int8 does the rest

    def probe(self, ratio: float, reference_ms: float) -> Probe:
        from tocha.deploy.export import probe_onnx
        from tocha.deploy.prune import prune_model

        model, example = self._unpruned()
        opts = self.prune_options
        pruned = prune_model(
            model,
            example,
            ratio,
            method="channels",
            target=opts["target"],
            scope=opts["scope"],
            round_to=opts["round_to"],
        )
        file = probe_onnx(
            pruned.model, self.meta, self.path, self.folder / "probes" / f"pruned-{ratio:.3f}.onnx", pruned.macs_after
        )
        megabytes = file.stat().st_size / 2**20
        if self.goal.key == "size_mb":
            ms, speedup = float("nan"), float("nan")
            meets = megabytes / self.int8_shrink <= self.goal.value  # pruned+int8 shrinks it further
        else:
            pairing = self.timer(self.fp32, file)
            ms, speedup = pairing.b_ms, pairing.speedup
            meets = pairing.decided and speedup >= reference_ms / self.target_ms(reference_ms)
        decided = self.goal.key == "size_mb" or pairing.decided
        probe = Probe(ratio, pruned.macs_after, speedup, ms, megabytes, meets, decided)
        self.probes.append(probe)
        return probe

    def tell(self, probe: Probe, verdict: str) -> None:
        """One log line per probe, with the verdict of the bisection that asked for it."""
        self.echo(
            f"  probe prune {probe.ratio:.3f}: MACs {probe.macs:,}, {probe.speedup:.2f}x, {probe.megabytes:.3f} MB"
            f" ({verdict})"
        )

    def bisection_probe(self, ratio: float, reference_ms: float) -> Probe:
        """A probe of the first bisection, logged against its pruning target."""
        probe = self.probe(ratio, reference_ms)
        self.tell(probe, f"{'meets' if probe.meets else 'misses'} the pruning target")
        return probe

    def _unpruned(self):
        if not hasattr(self, "_model"):
            from tocha.deploy.export import sample_inputs
            from tocha.recipes.runs import load_run

            self._model = load_run(self.path, "best", "cpu").model.eval()
            self._example = sample_inputs(self.path, self.meta, 2)
        return self._model, self._example

    def bisect(self, reference_ms: float) -> float:
        """The least pruning ratio whose measured speed (or size) meets the target; the most tried if none does."""
        self.folder.joinpath("probes").mkdir(exist_ok=True)
        top = self.bisection_probe(MAX_PRUNE, reference_ms)
        if not top.meets:
            self.echo(f"  pruning {MAX_PRUNE:.0%} of the MACs does not reach the target: fine-tuning that")
            return MAX_PRUNE
        lo, hi = 0.0, MAX_PRUNE
        for _ in range(BISECTION_STEPS):
            mid = round((lo + hi) / 2, 3)
            if self.bisection_probe(mid, reference_ms).meets:
                hi = mid
            else:
                lo = mid
        return hi

    def probe_at(self, ratio: float, reference_ms: float) -> Probe:
        """The probe of `ratio`, measured once (a repeat is not logged again)."""
        done = [p for p in self.probes if abs(p.ratio - ratio) < 5e-4]
        return done[-1] if done else self.probe(ratio, reference_ms)

    def stronger_ratio(self, ratio: float, finished: list[goals.Candidate], reference: goals.Candidate) -> float | None:
        """After a fine-tuned `ratio` fell short of the goal: the least stronger ratio whose probe is
        faster (or smaller) than `ratio`'s probe by the factor the finished model fell short by.

        The first bisection aimed at the probes' own speed; a finished model can time slower than
        its probe (or int8 add less than it did on fp32), so the shortfall measured on the finished
        candidates corrects the target, plus 5% so that the next one does not land just short again.
        Jumping to the next probe the first bisection happened to try (often the strongest) would
        cost far more accuracy than needed. None when no stronger ratio is left to try."""
        if not finished or ratio >= MAX_PRUNE - 5e-4:
            return None
        base = self.probe_at(ratio, reference.p50_ms)
        if self.goal.key == "size_mb":
            shortfall = min(c.megabytes for c in finished) / self.goal.value * 1.05

            aim = f"{base.megabytes / shortfall:.3f} MB"

            def enough(p: Probe) -> bool:
                return p.megabytes <= base.megabytes / shortfall

        else:
            goal_speedup = self.goal.value if self.goal.key == "speedup" else reference.p50_ms / self.goal.value
            shortfall = goal_speedup / max(c.speedup for c in finished) * 1.05
            aim = f"{base.speedup * shortfall:.2f}x"

            def enough(p: Probe) -> bool:
                return p.decided and p.speedup >= base.speedup * shortfall

        self.echo(f"  prune {ratio:g} fell short by {shortfall:.2f}x: looking for a ratio whose probe reaches {aim}")

        def judged(at: float) -> bool:
            measured = len(self.probes)
            probe = self.probe_at(at, reference.p50_ms)
            verdict = f"{'reaches' if enough(probe) else 'short of'} {aim}"
            self.tell(probe, verdict if len(self.probes) > measured else verdict + ", probed before")
            return enough(probe)

        if not judged(MAX_PRUNE):
            return MAX_PRUNE
        lo, hi = ratio, MAX_PRUNE
        for _ in range(STRONGER_STEPS):
            mid = round((lo + hi) / 2, 3)
            if judged(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def pruned_name(self, ratio: float, epochs: int) -> str:
        tag = f"{ratio:.3f}".rstrip("0").rstrip(".")
        return f"pruned-{tag}" if epochs == self.prune_options["epochs"] else f"pruned-{tag}-{epochs}ep"

    def pruned(self, ratio: float, epochs: int) -> tuple[goals.Candidate, Path]:
        from tocha.deploy.export import export_run
        from tocha.deploy.steps import prune_and_finetune

        name = self.pruned_name(ratio, epochs)
        run = self.folder / name
        started = time.monotonic()
        options = {**self.prune_options, "method": "channels", "epochs": epochs}
        info = prune_and_finetune(self.path, run, ratio=ratio, echo=self.echo, distill=True, **options)
        if epochs:
            self.epoch_seconds.append((time.monotonic() - started) / epochs)
        file = export_run(run, "onnx", out=self.folder / f"model-{name}.onnx").path
        note = f"prune {ratio:g} of the {self.prune_options['target']}, {epochs} fine-tune epochs distilled from fp32"
        return self.measured(name, file, info["macs_after"], note=note), file

    # ----------------------------------------------------------------------------- the plan

    def builders(self, reference: goals.Candidate, tried: list[goals.Candidate]) -> Iterator[tuple[str, Callable]]:
        """The candidates in order; later ones read what earlier ones measured (`tried`)."""
        yield "int8-minmax", lambda: self.int8("int8-minmax", self.fp32, reference.macs, "minmax")
        yield "int8-percentile", lambda: self.int8("int8-percentile", self.fp32, reference.macs, "percentile")
        yield "int8-dynamic", lambda: self.int8_dynamic("int8-dynamic", self.fp32, reference.macs)
        if self.prune == 0:
            return
        kept_int8 = [c for c in tried if c.kept and c.name.startswith("int8-") and c.name != "int8-dynamic"]
        best_int8 = max(kept_int8, key=lambda c: c.speedup, default=None)
        if best_int8 is not None:
            self.int8_speedup = max(1.0, best_int8.speedup)
            self.int8_shrink = reference.megabytes / best_int8.megabytes
        plan: tuple[float, int] | None = (
            self.prune if self.prune is not None else self.bisect(reference.p50_ms),
            self.prune_options["epochs"],
        )
        attempts: list[Attempt] = []
        while plan is not None and len(attempts) < MAX_ATTEMPTS:
            ratio, epochs = plan
            made: dict = {}

            def build_pruned(ratio=ratio, epochs=epochs, made=made):
                made["candidate"], made["file"] = self.pruned(ratio, epochs)
                return made["candidate"]

            yield self.pruned_name(ratio, epochs), build_pruned
            if "file" not in made:
                return
            pruned = made["candidate"]
            if best_int8 is not None:
                method = "percentile" if best_int8.name == "int8-percentile" else "minmax"
                name = f"{pruned.name}+int8"
                yield (
                    name,
                    lambda name=name, made=made, method=method: self.int8(
                        name, made["file"], made["candidate"].macs, method
                    ),
                )
            this = [c for c in tried if c.name in (pruned.name, f"{pruned.name}+int8") and c.path]
            attempts.append(self.attempt(ratio, epochs, pruned.macs or 0, this, reference))
            plan = self.next_plan(attempts, reference)
        if plan is not None:
            self.echo(f"  {MAX_ATTEMPTS} pruned fine-tunes tried: stopping")

    def attempt(
        self, ratio: float, epochs: int, macs: int, this: list[goals.Candidate], reference: goals.Candidate
    ) -> Attempt:
        """A finished ratio as the plan reads it: `this` holds its candidates (pruned, and +int8)."""

        def drop(c: goals.Candidate) -> float:
            return (reference.val_accuracy - c.val_accuracy) * 100 if c.val_accuracy is not None else 0.0

        fast = [
            c for c in this if not c.why.startswith("too noisy") and self.goal.met(c.speedup, c.p50_ms, c.megabytes)
        ]
        return Attempt(
            ratio,
            epochs,
            macs,
            min(map(drop, fast or this), default=0.0),
            fast=bool(fast),
            met=any(c.kept for c in fast),
            kept=[c for c in this if c.kept],
        )

    def next_plan(self, attempts: list[Attempt], reference: goals.Candidate) -> tuple[float, int] | None:
        """What to fine-tune after `attempts` (ratio, epochs), or None to stop.

        Met: stop. Within the accuracy budget but short of the goal: a stronger ratio aimed at the
        shortfall (never as strong as one that already cost too much). It cost too much: when it was
        fast enough, the same ratio fine-tuned twice as long (while the last doubling recovered at
        least the points still missing); otherwise the milder ratio that the drops measured so far
        put at the budget, if it still times faster than fp32. Each plan must fit the time left."""
        last = attempts[-1]
        if last.met:
            return None
        name = self.pruned_name(last.ratio, last.epochs)
        if last.fast:  # fast enough, but that cost too much accuracy
            longer = self.longer(attempts)
            if longer is not None:
                self.echo(
                    f"  {name} is fast enough but costs {last.drop:.2f} val points: "
                    f"fine-tuning it for {longer} epochs instead of {last.epochs}"
                )
                return self.affordable(last.ratio, longer)
        elif last.drop <= self.max_drop:
            if self.prune is not None:
                return None
            stronger = self.stronger_ratio(last.ratio, last.kept, reference)
            if stronger is None:
                return None
            over = [a.ratio for a in attempts if a.drop > self.max_drop and a.ratio > last.ratio]
            if over and stronger >= min(over) - 5e-4:
                stronger = round((last.ratio + min(over)) / 2, 3)
                self.echo(f"  prune {min(over):g} already cost too much: halfway instead, prune {stronger:g}")
            macs = self.probe_at(stronger, reference.p50_ms).macs
            same = next((a for a in attempts if a.epochs == last.epochs and a.macs == macs), None)
            if same is not None:  # channel rounding: the bracket has closed
                self.echo(
                    f"  prune {stronger:g} prunes to the net of {self.pruned_name(same.ratio, same.epochs)}: stopping"
                )
                return None
            self.echo(
                f"  {name} is within the budget ({last.drop:.2f} val points) but misses the goal: "
                f"trying prune {stronger:g}"
            )
            return self.affordable(stronger, last.epochs)
        milder = self.milder(attempts, reference)
        if milder is None:
            return None
        self.echo(f"  {name} costs {last.drop:.2f} val points: trying prune {milder:g}")
        return self.affordable(milder, last.epochs)

    def longer(self, attempts: list[Attempt]) -> int | None:
        """Twice the last fine-tune's epochs, or None: beyond MAX_EPOCH_FACTOR x --finetune-epochs, or
        when the last doubling of this ratio recovered fewer points than are still missing (returns
        diminish, so the next doubling would not close the gap)."""
        last = attempts[-1]
        longer = max(1, 2 * last.epochs)
        if longer > MAX_EPOCH_FACTOR * max(1, self.prune_options["epochs"]):
            return None
        shorter = [a for a in attempts[:-1] if abs(a.ratio - last.ratio) < 5e-4 and a.epochs < last.epochs]
        if shorter:
            recovered, missing = shorter[-1].drop - last.drop, last.drop - self.max_drop
            if recovered < missing:
                self.echo(
                    f"  {last.epochs} epochs recovered {recovered:.2f} val points over {shorter[-1].epochs}; "
                    f"{missing:.2f} are still missing: not fine-tuning longer"
                )
                return None
        return longer

    def milder(self, attempts: list[Attempt], reference: goals.Candidate) -> float | None:
        """The ratio where the line between the strongest attempt within the budget (or no pruning,
        which costs nothing) and the last one reaches `max_drop`. Pruning costs more accuracy the more
        it removes, faster than in proportion, so the line's ratio tends to land within the budget.
        None when that net is one already tried, or when it cannot beat fp32 even with int8."""
        last = attempts[-1]
        within = [a for a in attempts if a.drop <= self.max_drop and a.ratio < last.ratio]
        lo = max(within, key=lambda a: a.ratio, default=None)
        lo_ratio, lo_drop = (lo.ratio, lo.drop) if lo else (0.0, 0.0)
        ratio = round(lo_ratio + (last.ratio - lo_ratio) * (self.max_drop - lo_drop) / (last.drop - lo_drop), 3)
        name = self.pruned_name(last.ratio, last.epochs)
        if ratio <= lo_ratio:
            self.echo(f"  {name} costs {last.drop:.2f} val points; no milder ratio is left between")
            return None
        probe = self.probe_at(ratio, reference.p50_ms)
        self.tell(probe, f"where the drops so far put the budget ({self.max_drop:g} val points)")
        if any(a.macs == probe.macs for a in attempts):  # channel rounding: the same net
            self.echo(f"  {name} costs {last.drop:.2f} val points; no milder pruning differs from it")
            return None
        if self.goal.key != "size_mb" and probe.decided and probe.speedup * self.int8_speedup <= 1.0:
            # Fewer MACs is not always faster (channel counts that do not fill the CPU's vectors):
            # a fine-tune that cannot beat fp32 even with int8 would only spend the budget.
            self.echo(
                f"  {name} costs {last.drop:.2f} val points; the milder prune {ratio:g} timed "
                f"{probe.speedup:.2f}x (not faster than fp32), so it is not fine-tuned"
            )
            return None
        return ratio

    def affordable(self, ratio: float, epochs: int) -> tuple[float, int] | None:
        """(ratio, epochs), or None when a fine-tune that long would not fit in the time left (going by
        the slowest epoch so far; an estimate, so that a search does not overrun its budget by a whole
        fine-tune)."""
        if not self.epoch_seconds or epochs == 0:
            return ratio, epochs
        need = max(self.epoch_seconds) * epochs
        left = self.time_budget_s - (time.monotonic() - self.started)
        if need > left:
            self.echo(
                f"  prune {ratio:g} for {epochs} epochs would take about {need:.0f} s; {max(left, 0):.0f} s of the "
                "budget is left: stopping"
            )
            return None
        return ratio, epochs

    def run(self) -> dict:
        self.started = time.monotonic()
        reference = self.start()
        tried: list[goals.Candidate] = []
        with _Progress(self.echo) as progress:
            result = goals.search(
                self.goal,
                reference,
                _recording(self.builders(reference, tried), tried, guard=reference),
                max_drop=self.max_drop,
                time_budget_s=self.time_budget_s,
                echo=progress.line,
                on_start=progress.start,
            )
        shutil.copyfile(result.chosen.path, self.folder / "model.onnx")
        return write_outputs(self, result)


def _recording(builders, tried: list, guard: goals.Candidate):
    """Each builder guarded (a failure is a rejected candidate, not the end of the search) and recorded."""
    from tocha.harness.signals import Interrupted

    for name, build in builders:

        def run(name=name, build=build):
            try:
                c = build()
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as exc:  # an operator a quantizer does not support, ...
                c = dataclasses.replace(guard, name=name, kept=False, path=None, note="")
                c.why = f"failed: {type(exc).__name__}: {str(exc).strip()[:160]}"
            tried.append(c)
            return c

        yield name, run


class _Progress:
    """One line per candidate (the log); on a terminal also a bar of candidates done and the time spent."""

    def __init__(self, echo) -> None:
        self.echo, self.bar = echo, None

    def __enter__(self):
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit="candidate", desc="compress search", file=sys.stderr, leave=False)
        return self

    def start(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
        self.echo(text)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def write_outputs(search: GoalSearch, result: goals.SearchResult) -> dict:
    """OUT/compress.json, OUT/tradeoff.png and a dated section of the run's report.html."""
    from tocha import runfolder as rf

    front = {id(c) for c in goals.pareto([c for c in result.candidates if c.path])}
    rows = [
        {**dataclasses.asdict(c), "speedup": c.speedup, "pareto": id(c) in front, "chosen": c is result.chosen}
        for c in result.candidates
    ]
    report = {
        "goal": str(search.goal),
        "max_drop_points": search.max_drop,
        "batch": search.batch,
        "time_budget_s": search.time_budget_s,
        "judged_on": "val",
        "timing": "each candidate beside the fp32 ONNX, alternating rounds, in a fresh process",
        "candidates": rows,
        "pruning_probes": [dataclasses.asdict(p) for p in search.probes],
        "chosen": result.chosen.name,
        "chosen_path": result.chosen.path,
        "model": str(search.folder / "model.onnx"),
        "met": result.met,
        "why": result.why,
        "stopped": result.stopped,
    }
    rf.write_json(search.folder / "compress.json", report)
    from tocha.reports.plots import plot_tradeoff

    plot = plot_tradeoff(rows, search.folder / "tradeoff.png", batch=search.batch, max_drop=search.max_drop)
    from tocha.reports.html import embedded_png, table_html, upsert_section

    table = [
        {
            "candidate": r["name"] + (" (chosen)" if r["chosen"] else ""),
            "val acc": r["val_accuracy"],
            "test acc": r["test_accuracy"],
            f"p50 ms @{search.batch}": r["p50_ms"],
            f"p90 ms @{search.batch}": r["p90_ms"],
            "fp32 ms (same timing)": r["fp32_ms"],
            "speedup": r["speedup"],
            "MB": r["megabytes"],
            "params": r["params"],
            "MACs": r["macs"],
            "pareto": "yes" if r["pareto"] else "",
            "verdict": ("kept: " if r["kept"] else "rejected: ") + r["why"],
            "how": r["note"],
        }
        for r in rows
    ]
    upsert_section(
        search.path,
        "compress",
        f"Compression search (tocha compress --goal {search.goal})",
        f"<p>{escape(result.why)}</p>" + table_html(table) + embedded_png(plot, "latency vs validation accuracy"),
    )
    return report


def goal_compress(path: Path, folder: Path, **options) -> dict:
    """`tocha compress --goal`: see the module docstring; options are GoalSearch's."""
    return GoalSearch(path, folder, **options).run()


def table(report: dict) -> str:
    lines = [f"{'candidate':<22} {'val acc':>8} {'test acc':>9} {'p50 ms':>9} {'speedup':>8} {'MB':>7}  verdict"]
    for r in report["candidates"]:
        val = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        test = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(
            f"{r['name']:<22} {val:>8} {test:>9} {r['p50_ms']:>9.3f} {r['speedup']:>7.2f}x {r['megabytes']:>7.2f}  "
            f"{'kept' if r['kept'] else 'rejected'}: {r['why']}"
        )
    lines += [report["why"], f"result: {report['model']} (= {report['chosen_path']})"]
    return "\n".join(lines)
