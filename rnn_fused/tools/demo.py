"""`rnn-fused demo`: the standard experiments on backpropagation through time, reproduced
with rnn_fused kernels, written up as report.md with figures and results.json.

1. the norm of the product of temporal Jacobians over 50 steps, sigma_max(W_hh) < 1 and > 1;
2. "remember the first character" for T in {5, 10, 20, 50}, several seeds;
3. per-step gradient norms ||dL/dh_t|| (the fused backward's own reduction), T = 10 and 50;
4. gradient clipping: none vs max-norm 5 vs 1 (pre-clip norms from rnn_fused.clip_grad_norm_);
5. truncated BPTT on T = 20: full vs K = 10 vs K = 5 vs randomized truncation.
Every number in the report is computed in the run (experiments.py); the sentences that say
whether an expectation held are computed from those numbers by the *_verdict functions here.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field, replace

import torch

import rnn_fused

from . import experiments as ex
from .experiments import Protocol

# The outcome names of the Jacobian experiment: the product norm after the last step is
# "vanished" below VANISHED, "exploded" above EXPLODED, else "neither".
VANISHED, EXPLODED = 1e-2, 1e2


@dataclass(frozen=True)
class DemoConfig:
    protocol: Protocol
    seeds: tuple[int, ...]
    lengths: tuple[int, ...] = (5, 10, 20, 50)
    sigmas: tuple[float, ...] = (0.5, 0.9, 1.1, 1.5)
    jacobian_steps: int = 50
    jacobian_batch: int = 16
    norm_lengths: tuple[int, ...] = (10, 50)
    norm_batch: int = 256
    clip_length: int = 20
    clip_norms: tuple[float | None, ...] = (None, 5.0, 1.0)
    truncation_length: int = 20
    # keep_prob 0.9: the mean span between random cuts (1 / (1 - p) = 10 steps) is K = 10's.
    truncations: tuple = (None, 10, 5, rnn_fused.RandomTruncation(keep_prob=0.9))


FULL = DemoConfig(Protocol(), seeds=(0, 1, 2, 3, 4))
QUICK = DemoConfig(Protocol(train_steps=30, eval_size=256), seeds=(0,), lengths=(5, 10))


def planned_runs(config: DemoConfig) -> list[tuple]:
    """Every distinct training run (length, seed, clip, truncation) the experiments read, once:
    the full-BPTT, unclipped run at T = 20 serves the task, clipping and truncation alike."""
    runs = [(length, seed, None, None) for length in config.lengths for seed in config.seeds]
    runs += [(length, config.seeds[0], None, None) for length in config.norm_lengths]
    runs += [(config.clip_length, seed, clip, None) for clip in config.clip_norms for seed in config.seeds]
    runs += [(config.truncation_length, seed, None, truncation)
             for truncation in config.truncations for seed in config.seeds]
    return list(dict.fromkeys(runs))


# --- verdicts: whether an expectation held, from the numbers -----------------------------


def jacobian_outcome(norm: float) -> str:
    return "vanished" if norm < VANISHED else "exploded" if norm > EXPLODED else "neither"


def jacobian_verdict(sigma: float, final_norm: float) -> tuple[str, str, bool]:
    """(outcome, expected outcome, held) for the median product norm after the last step."""
    expected = "vanished" if sigma < 1 else "exploded"
    outcome = jacobian_outcome(final_norm)
    return outcome, expected, outcome == expected


def seeds_verdict(outcomes: list[str], expected: str) -> tuple[int, int]:
    """(how many seeds reached the expected outcome, how many seeds)."""
    return sum(o == expected for o in outcomes), len(outcomes)


def held_phrase(count: int, total: int) -> str:
    if total == 1:
        return "held (1 seed)" if count else "did not hold (1 seed)"
    if count == total:
        return f"held for all {total} seeds"
    if count == 0:
        return f"did not hold for any of the {total} seeds"
    return f"held for {count} of {total} seeds"


def decay_verdict(curves: dict[int, list[float]]) -> tuple[dict[int, float], bool]:
    """Ratio ||dL/dh_0|| / ||dL/dh_{T-1}|| per length, and whether every ratio is below 1 and
    the ratio shrinks as T grows (the decay toward t = 0 the textbooks describe)."""
    ratios = {length: curve[0] / curve[-1] for length, curve in sorted(curves.items())}
    values = list(ratios.values())
    return ratios, all(r < 1 for r in values) and all(b < a for a, b in zip(values, values[1:]))


# --- running --------------------------------------------------------------------------------


@dataclass
class DemoResults:
    config: DemoConfig
    runs: dict[tuple, ex.TrainRun] = field(default_factory=dict)
    jacobian: dict[float, list[list[float]]] = field(default_factory=dict)   # sigma -> [t][sample]
    step_norms: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # "initial"/"trained"
    wall_seconds: float = 0.0

    def run(self, length, seed, clip=None, truncation=None) -> ex.TrainRun:
        return self.runs[(length, seed, clip, truncation)]


def run_experiments(config: DemoConfig, progress=lambda label: None) -> DemoResults:
    started = time.perf_counter()
    results = DemoResults(config)
    for sigma in config.sigmas:
        results.jacobian[sigma] = ex.jacobian_product_norms(sigma, config.jacobian_steps, config.jacobian_batch,
                                                            seed=config.seeds[0])
        progress(f"Jacobian products, sigma {sigma}")
    for key in planned_runs(config):
        length, seed, clip, truncation = key
        results.runs[key] = ex.train(length, seed, config.protocol, clip, truncation)
        progress(f"T={length} seed {seed} clip {clip} {ex.truncation_label(truncation)}")
    seed = config.seeds[0]
    results.step_norms = {"initial": {}, "trained": {}}
    for length in config.norm_lengths:
        model, head = ex.initial_model(seed)
        results.step_norms["initial"][length] = ex.step_gradient_norms(model, head, length, config.norm_batch, seed)
        trained = results.run(length, seed)
        results.step_norms["trained"][length] = ex.step_gradient_norms(trained.model, trained.head, length,
                                                                       config.norm_batch, seed)
        progress(f"step norms T={length}")
    results.wall_seconds = time.perf_counter() - started
    return results


def progress_units(config: DemoConfig) -> int:
    return len(config.sigmas) + len(planned_runs(config)) + len(config.norm_lengths)


# --- figures --------------------------------------------------------------------------------


def moving_average(values: list[float], window: int) -> list[float]:
    window = max(1, min(window, len(values)))
    cumulative = [0.0]
    for v in values:
        cumulative.append(cumulative[-1] + v)
    return [(cumulative[i] - cumulative[i - window]) / window for i in range(window, len(values) + 1)]


def smoothed(values: list[float], window: int) -> tuple[range, list[float]]:
    """(steps, moving averages), each average placed at the last step of its window."""
    averages = moving_average(values, window)
    return range(len(values) - len(averages), len(values)), averages


def median_curve(samples_by_t: list[list[float]]) -> list[float]:
    return [statistics.median(samples) for samples in samples_by_t]


def _label(ax, title: str, xlabel: str | None, ylabel: str, log: bool = False) -> None:
    """Title, axis labels, legend (and a log y axis) of one of the demo's plots."""
    if log:
        ax.set_yscale("log")
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def draw_figures(results: DemoResults, out: str) -> dict[str, str]:
    """Write the five PNG figures; returns {experiment: file name}."""
    from .command_output import figure, save_figure

    config, names = results.config, {}
    steps = range(1, config.jacobian_steps + 1)

    fig, ax = figure()
    for sigma, norms in results.jacobian.items():
        line, = ax.plot(steps, median_curve(norms), label=rf"$\sigma_{{max}}$ = {sigma}")
        ax.plot(steps, [sigma**t for t in steps], linestyle=":", color=line.get_color(), linewidth=0.8)
    _label(ax, r"Product of temporal Jacobians (dotted: $\sigma_{max}^t$, an upper bound for tanh)", "steps t",
           r"$\|\partial h_t / \partial h_0\|$ (median over sequences)", log=True)
    names["jacobian"] = os.path.basename(save_figure(fig, out, "jacobian_norms.png"))

    fig, ax = figure()
    for i, length in enumerate(config.lengths):
        accuracies = [results.run(length, s).accuracy for s in config.seeds]
        ax.scatter([i] * len(accuracies), accuracies, color="tab:blue", alpha=0.6,
                   label="one seed" if i == 0 else None)
        ax.scatter([i], [statistics.mean(accuracies)], color="black", marker="_", s=400,
                   label="mean" if i == 0 else None)
    ax.axhline(ex.CHANCE, color="red", linestyle="--", label="chance (1/8)")
    ax.axhline(ex.chance_ceiling(config.protocol.eval_size), color="red", linestyle=":", linewidth=0.8,
               label="not above chance below this")
    ax.set_xticks(range(len(config.lengths)), [f"T = {t}" for t in config.lengths])
    ax.set_ylim(0, 1.05)
    _label(ax, "Remember the first character: accuracy after training", None, "held-out accuracy")
    names["task"] = os.path.basename(save_figure(fig, out, "first_character_accuracy.png"))

    fig, axes = figure(ncols=len(config.norm_lengths), width=5.0)
    for ax, length in zip(axes, config.norm_lengths):
        for stage, curves in results.step_norms.items():
            ax.plot(range(length), curves[length], marker=".", label=f"{stage} model")
        _label(ax, f"T = {length}", "time step t (the loss is at t = T - 1)",
               r"$\|\partial L / \partial h_t\|$ (in-kernel norms, batch mean)", log=True)
    names["step_norms"] = os.path.basename(save_figure(fig, out, "step_gradient_norms.png"))

    window = max(1, config.protocol.train_steps // 20)
    fig, (loss_ax, norm_ax) = figure(ncols=2, width=5.5)
    for clip in config.clip_norms:
        label = "no clipping" if clip is None else f"max-norm {clip:g}"
        runs = [results.run(config.clip_length, s, clip) for s in config.seeds]
        mean_loss = [statistics.mean(values) for values in zip(*(r.losses for r in runs))]
        loss_ax.plot(*smoothed(mean_loss, window), label=label)
        norm_ax.plot(runs[0].grad_norms, label=label, linewidth=0.7)
    for clip in config.clip_norms:
        if clip is not None:
            norm_ax.axhline(clip, color="gray", linestyle=":", linewidth=0.8)
    _label(loss_ax, f"Clipping, T = {config.clip_length}: loss", "training step",
           f"training loss (mean over seeds, moving average of {window})")
    _label(norm_ax, f"Pre-clip gradient norm (seed {config.seeds[0]})", "training step",
           "gradient norm before clipping", log=True)
    names["clipping"] = os.path.basename(save_figure(fig, out, "clipping.png"))

    fig, (acc_ax, loss_ax) = figure(ncols=2, width=5.5)
    for i, truncation in enumerate(config.truncations):
        runs = [results.run(config.truncation_length, s, None, truncation) for s in config.seeds]
        accuracies = [r.accuracy for r in runs]
        acc_ax.scatter([i] * len(runs), accuracies, color="tab:blue", alpha=0.6)
        acc_ax.scatter([i], [statistics.mean(accuracies)], color="black", marker="_", s=400)
        mean_loss = [statistics.mean(values) for values in zip(*(r.losses for r in runs))]
        loss_ax.plot(*smoothed(mean_loss, window), label=ex.truncation_label(truncation))
    acc_ax.axhline(ex.CHANCE, color="red", linestyle="--", label="chance")
    acc_ax.set_xticks(range(len(config.truncations)), [ex.truncation_label(t) for t in config.truncations])
    acc_ax.set_ylim(0, 1.05)
    _label(acc_ax, f"Truncated BPTT, T = {config.truncation_length}", None,
           "held-out accuracy (dots: seeds, bar: mean)")
    _label(loss_ax, "Loss", "training step", f"training loss (mean over seeds, moving average of {window})")
    names["truncation"] = os.path.basename(save_figure(fig, out, "truncation.png"))
    return names


# --- report ---------------------------------------------------------------------------------


def _accuracy_cells(runs: list[ex.TrainRun], eval_size: int) -> list[str]:
    return [f"{r.accuracy:.3f} ({ex.accuracy_outcome(r.accuracy, eval_size)})" for r in runs]


def _seed_header(seeds) -> tuple[str, str]:
    return (" | ".join(f"seed {s}" for s in seeds), "|".join(["---:"] * len(seeds)))


def report(results: DemoResults, figures: dict[str, str], threads: int, command: str) -> str:
    config, protocol = results.config, results.config.protocol
    seeds = ", ".join(map(str, config.seeds))
    ceiling = ex.chance_ceiling(protocol.eval_size)
    seed_cells, seed_rule = _seed_header(config.seeds)
    lines = [
        "# Backpropagation through time, reproduced with rnn_fused kernels",
        "",
        f"Generated by `{command}` in {results.wall_seconds:.0f} s (rnn_fused on the CPU, float32, "
        f"{threads} thread(s); torch {torch.__version__}). Every number below was measured in that run; "
        "the same command gives the same numbers (the kernels are deterministic and every random draw is seeded).",
        "",
        f"**Seeds:** {seeds}. A run with seed s initialises its model after `torch.manual_seed(s)` "
        f"(which also seeds randomized truncation) and draws its training batches from a generator seeded "
        f"with {ex.DATA_SEED_OFFSET} + s; held-out sequences of length T come from a generator seeded with "
        f"{ex.EVAL_SEED} + T, the same for every run.",
        "",
        f"**Training protocol** (every training run): `rnn_fused.RNN({ex.CLASSES}, {ex.HIDDEN})` (tanh) and a "
        f"linear read-out, Adam with learning rate {protocol.learning_rate:g}, batch {protocol.batch}, "
        f"{protocol.train_steps} steps, cross-entropy of the prediction after the last character; accuracy on "
        f"{protocol.eval_size} held-out sequences. Chance is 1/{ex.CLASSES} = {ex.CHANCE:.3f}. Outcome names: "
        f"*learned* = accuracy >= {ex.LEARNED_ACCURACY}; *chance* = not above chance at one-sided z = "
        f"{ex.CHANCE_Z} (accuracy <= {ceiling:.3f} for {protocol.eval_size} sequences); *above chance* otherwise.",
        "",
    ]

    # 1. Jacobians
    steps = config.jacobian_steps
    lines += [
        f"## 1. The product of temporal Jacobians over {steps} steps",
        "",
        f"One tanh layer, hidden {ex.HIDDEN}, no bias, W_ih as nn.RNN initialises it, W_hh = σ_max × a random "
        f"orthogonal matrix (all singular values equal σ_max), reading one-hot random characters from "
        f"h_0 = 0. ‖dh_t/dh_0‖ is the spectral norm of the product of the step Jacobians, computed by the "
        f"fused backward (one backward per t; median over {config.jacobian_batch} sequences, seed {config.seeds[0]}). "
        f"Since |tanh'| ≤ 1 the norm is at most σ_max^t. Outcome: *vanished* below {VANISHED:g}, "
        f"*exploded* above {EXPLODED:g} after {steps} steps, *neither* in between; the textbook picture "
        "expects vanishing for σ_max < 1 and exploding for σ_max > 1.",
        "",
        f"| σ_max | t = 1 | t = 10 | t = {steps} | per-step factor | bound σ_max^{steps} | outcome | expected | held |",
        "|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for sigma, norms in results.jacobian.items():
        curve = median_curve(norms)
        outcome, expected, held = jacobian_verdict(sigma, curve[-1])
        checkpoints = [curve[0], curve[min(9, steps - 1)], curve[-1]]
        lines.append(f"| {sigma} | " + " | ".join(f"{v:.3g}" for v in checkpoints) +
                     f" | {curve[-1] ** (1 / steps):.3f} | {sigma ** steps:.3g} | {outcome} | {expected} | "
                     f"{'yes' if held else 'no'} |")
    lines += ["", f"![Jacobian product norms]({figures['jacobian']})", ""]

    # 2. Task
    lines += [
        "## 2. Remember the first character",
        "",
        f"Accuracy on held-out sequences after training (outcome in brackets), for each sequence length and seed.",
        "",
        f"| T | {seed_cells} | mean |",
        f"|---:|{seed_rule}|---:|",
    ]
    outcomes_by_length = {}
    for length in config.lengths:
        runs = [results.run(length, s) for s in config.seeds]
        outcomes_by_length[length] = [ex.accuracy_outcome(r.accuracy, protocol.eval_size) for r in runs]
        lines.append(f"| {length} | " + " | ".join(_accuracy_cells(runs, protocol.eval_size)) +
                     f" | {statistics.mean(r.accuracy for r in runs):.3f} |")
    shortest, longest = min(config.lengths), max(config.lengths)
    learned = seeds_verdict(outcomes_by_length[shortest], "learned")
    at_chance = seeds_verdict(outcomes_by_length[longest], "chance")
    lines += [
        "",
        f"Expected: T = {shortest} learns, T = {longest} stays near chance. T = {shortest} learned: "
        f"{held_phrase(*learned)}. T = {longest} at chance: {held_phrase(*at_chance)}.",
        "",
        f"![Accuracy by sequence length]({figures['task']})",
        "",
    ]

    # 3. Step norms
    ratios = {stage: decay_verdict(curves) for stage, curves in results.step_norms.items()}
    lines += [
        "## 3. Per-step gradient norms ‖dL/dh_t‖",
        "",
        f"L is the mean last-step loss of {config.norm_batch} held-out sequences; ‖dL/dh_t‖ is the norm the "
        f"fused backward reduces in the same pass (`rnn_fused.record_gradients`, batch mean), for the model of "
        f"seed {config.seeds[0]} before and after training.",
        "",
        "| model | T | ‖dL/dh_{T-1}‖ | ‖dL/dh_0‖ | ratio ‖dL/dh_0‖ / ‖dL/dh_{T-1}‖ |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage, curves in results.step_norms.items():
        for length, curve in sorted(curves.items()):
            lines.append(f"| {stage} | {length} | {curve[-1]:.3g} | {curve[0]:.3g} | {ratios[stage][0][length]:.3g} |")
    lines.append("")
    lines.append("Expected: the gradient decays toward t = 0 (every ratio below 1, and smaller for longer T). " +
                 "; ".join(f"{stage} model: {'held' if held else 'did not hold'}"
                           for stage, (_, held) in ratios.items()) + ".")
    lines += ["", f"![Per-step gradient norms]({figures['step_norms']})", ""]

    # 4. Clipping
    tail = max(1, protocol.train_steps // 10)
    lines += [
        f"## 4. Gradient clipping, T = {config.clip_length}",
        "",
        f"Full BPTT; the gradient norm before clipping is the return value of `rnn_fused.clip_grad_norm_` "
        f"(max-norm infinity for the unclipped runs). Final loss: mean of the last {tail} training steps; "
        "clipped steps: share of steps whose norm exceeded the max-norm; non-finite: steps whose backward "
        "produced NaN or Inf (the recorder's flag).",
        "",
        "| clipping | seed | final loss | accuracy | clipped steps | median / max pre-clip norm | non-finite steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    mean_accuracy = {}
    for clip in config.clip_norms:
        label = "none" if clip is None else f"max-norm {clip:g}"
        runs = [results.run(config.clip_length, s, clip) for s in config.seeds]
        mean_accuracy[label] = statistics.mean(r.accuracy for r in runs)
        for r in runs:
            clipped = "" if clip is None else f"{sum(n > clip for n in r.grad_norms) / len(r.grad_norms):.0%}"
            lines.append(f"| {label} | {r.seed} | {statistics.mean(r.losses[-tail:]):.3f} | "
                         f"{r.accuracy:.3f} ({ex.accuracy_outcome(r.accuracy, protocol.eval_size)}) | {clipped} | "
                         f"{statistics.median(r.grad_norms):.3g} / {max(r.grad_norms):.3g} | {r.nonfinite_steps} |")
    top = max(mean_accuracy.values())
    best = [label for label, acc in mean_accuracy.items() if acc == top]
    lines += ["", "Mean accuracy over seeds: " +
              ", ".join(f"{label} {acc:.3f}" for label, acc in mean_accuracy.items()) +
              f"; highest: {', '.join(best)}{' (tied)' if len(best) > 1 else ''}.", "",
              f"![Clipping]({figures['clipping']})", ""]

    # 5. Truncation
    dependency = config.truncation_length - 1
    lines += [
        f"## 5. Truncated BPTT, T = {config.truncation_length}",
        "",
        f"The first character must be carried {dependency} steps. K = k cuts the recurrent gradient every k "
        "steps (the gradient of a loop that detaches the hidden state every k steps); randomized truncation "
        "keeps each edge with probability p and scales it by 1/p (unbiased). No clipping.",
        "",
        f"| truncation | {seed_cells} | mean |",
        f"|---|{seed_rule}|---:|",
    ]
    verdicts, all_held = [], True
    for truncation in config.truncations:
        runs = [results.run(config.truncation_length, s, None, truncation) for s in config.seeds]
        label = ex.truncation_label(truncation)
        lines.append(f"| {label} | " + " | ".join(_accuracy_cells(runs, protocol.eval_size)) +
                     f" | {statistics.mean(r.accuracy for r in runs):.3f} |")
        if isinstance(truncation, int) and truncation < dependency:
            outcomes = [ex.accuracy_outcome(r.accuracy, protocol.eval_size) for r in runs]
            count, total = seeds_verdict(outcomes, "chance")
            verdicts.append(f"{label} at chance: {held_phrase(count, total)}")
            all_held = all_held and count == total
    lines += [
        "",
        f"Textbook expectation: a truncation K shorter than the dependency ({dependency} steps) cannot learn it, "
        "so those runs stay at chance. " + "; ".join(verdicts) + ".",
        "",
    ]
    if not all_held:
        lines += [
            "One way a truncated run can get above chance: the cut removes the gradient paths into earlier "
            "steps, but the weight gradient at a cut step still multiplies by the state h_{s-1} that the "
            "forward pass computed from the whole prefix, so whatever trace of the first character the "
            "forward dynamics carries there can still be read out and reinforced.",
            "",
        ]
    lines += [
        f"![Truncated BPTT]({figures['truncation']})",
        "",
    ]
    return "\n".join(lines)


def results_as_json(results: DemoResults, threads: int) -> dict:
    config = results.config

    def run_json(r: ex.TrainRun) -> dict:
        return {"length": r.length, "seed": r.seed, "clip": r.clip, "truncation": r.truncation,
                "accuracy": r.accuracy, "outcome": ex.accuracy_outcome(r.accuracy, config.protocol.eval_size),
                "nonfinite_steps": r.nonfinite_steps, "losses": r.losses, "grad_norms": r.grad_norms}

    return {
        "torch": torch.__version__, "threads": threads, "wall_seconds": results.wall_seconds,
        "seeds": list(config.seeds), "protocol": vars(config.protocol),
        "jacobian": {str(sigma): {"median_norms": median_curve(norms), "norms": norms}
                     for sigma, norms in results.jacobian.items()},
        "runs": [run_json(r) for r in results.runs.values()],
        "step_norms": {stage: {str(t): curve for t, curve in curves.items()}
                       for stage, curves in results.step_norms.items()},
    }


def run(*, seeds: list[int] | None, threads: int, quick: bool, out: str) -> int:
    """`rnn-fused demo`: run the experiments (CPU: the models are tiny), print the report,
    write report.md, results.json and the figures to `out`."""
    from .command_output import prepare_output, progress_bar, write_json, write_text

    prepare_output(out)
    config = QUICK if quick else FULL
    if seeds is not None:
        config = replace(config, seeds=tuple(seeds))
    torch.set_num_threads(threads)
    with progress_bar(progress_units(config), "demo") as bar:
        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()

        results = run_experiments(config, progress)
    figures = draw_figures(results, out)
    command = "rnn-fused demo" + (" --quick" if quick else "") + (
        f" --seeds {','.join(map(str, seeds))}" if seeds is not None else "")
    text = report(results, figures, threads, command)
    write_text(out, "report.md", text)
    write_json(out, "results.json", results_as_json(results, threads))
    print(text)
    return 0
