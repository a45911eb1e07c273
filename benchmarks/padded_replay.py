"""A study's prefill passes priced by the tokens they ran, padding included, for runs
that did not count them.

``train --cuda-graphs`` runs a prefill pass as a captured graph: its rows padded to a
power of two, its width to 16. Runs from before the engine counted those tokens
(``prefill_padded_tokens``) were fitted on their rows' tokens alone. A colocated run's
schedule follows its lengths, not its clock, so replaying it (``sim.replay``) opens the
passes it ran, update by update; the simulator pads each as the engine did. This fits
the engine's prefill seconds per update on those passes and padded tokens over the
calibration runs, against the same fit on the tokens the rows hold, then replays every
run of the study both ways.

    python benchmarks/padded_replay.py runs/gfid1 [--scenario FILE] [--fit-on RUN,...] [--predict] [--out FILE]

It prints in how many updates the replay opens as many passes as the engine, the two
fits, each run's prefill seconds by both, and the replayed figures' errors against the
measured ones by setting. ``--predict`` then predicts the study's settings again, as
``fidelity.py`` does, with the scenario's passes priced by their padded tokens: after
the runs, an analysis, not a prediction. ``--scenario`` is the calibrated scenario to
start from (default: the study's own; a ``fidelity.py --reanalyse`` folder's for the
current calibration).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from engine.log.files import write_atomic  # noqa: E402
from sim.calibrate_real import updates  # noqa: E402
from sim.config import Scenario, load  # noqa: E402
from sim.fitting import fit  # noqa: E402
from sim.replay import FIGURES, error_pct, measured, metrics_lines, replay, replay_passes  # noqa: E402


def engine_passes(run_dir: Path) -> list[dict[str, float]]:
    """Each update's prefill passes, tokens and seconds, from the run's counters as
    calibration reads them (:func:`sim.calibrate_real.updates`; the slot and sequence
    counts it takes for lines that lack them play no part here)."""
    return [{"prefills": u.prefills, "prefill_tokens": u.prefill_tokens, "prefill_s": u.prefill_s}
            for u in updates(metrics_lines(run_dir), slots=1, sequences=1, recompute_in_step=False)]


def fitted(runs: dict[str, list[dict[str, float]]], units: str) -> tuple[float, float, float]:
    """(seconds a pass, seconds a unit, R^2) of the updates' prefill seconds, each run's first update left out (the engine's start)."""
    rows = [row for updates in runs.values() for row in updates[1:]]
    line = fit(f"prefill by {units}", {"passes": [r["prefills"] for r in rows], units: [r[units] for r in rows]}, [r["prefill_s"] for r in rows])
    return line.coefficients.get("passes", 0.0), line.coefficients.get(units, 0.0), line.r2


def settings_of(study: Path) -> dict[str, list[Path]]:
    """The study's runs by setting: a run and its rounds (``NAME``, ``NAME-r2``, ...); the calibration runs together."""
    by: dict[str, list[Path]] = {}
    for run in sorted(p for p in study.iterdir() if (p / "metrics.jsonl").is_file() and (p / "run.json").is_file()):
        name = run.name
        if name.startswith("calibration") or name.startswith("warmup"):
            name = "calibration" if name.startswith("calibration") else name
        else:
            name = name.rsplit("-r", 1)[0] if name.rsplit("-r", 1)[-1].isdigit() else name
        by.setdefault(name, []).append(run)
    by.pop("warmup", None)
    return by


def predicted(study: Path, scenario: Scenario) -> dict[str, Any]:
    """The study's settings predicted again through ``scenario`` (``fidelity.py``'s way),
    against their measured means (its ``results.json``); printed as its table."""
    import tempfile

    from benchmarks.fidelity import predict, study_of
    from sim.config import save

    _, _, _, plan, flags = study_of(study, "padded_replay")
    measured_means = json.loads((study / "results.json").read_text())["runs"]
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="padded-") as tmp:
        path = Path(tmp) / "padded.toml"
        save(scenario, path)
        for name, staleness, batch in plan:
            guess, real = predict(path, staleness, batch, flags.steps, flags), measured_means[name]["measured"]
            rows[name] = {"predicted": guess, "measured": real, "error_pct": {m: error_pct(guess[m], real[m]) for m in FIGURES}}
    print("predicted again with the padded line (after the runs; predicted / measured, error %):")
    for name, row in rows.items():
        print(f"  {name}: " + "  ".join(f"{m} {row['predicted'][m]:.4g}/{row['measured'][m]:.4g} {row['error_pct'][m]:+.1f}" for m in FIGURES))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a fidelity study's folder (its calibrated.toml and run directories)")
    parser.add_argument("--fit-on", default="calibration,calibration-2,calibration-3,probe-batch8",
                        help="the runs the prefill line is fitted on, those of the study's calibration (default: %(default)s)")
    parser.add_argument("--pad-to", type=int, default=16, help="the multiple a pass's width is rounded up to (default 16)")
    parser.add_argument("--no-pow2-rows", action="store_true", help="a pass's rows as they are, not a power of two")
    parser.add_argument("--scenario", type=Path, help="the calibrated scenario to start from (default: STUDY/calibrated.toml)")
    parser.add_argument("--predict", action="store_true", help="then predict the study's settings with the padded line, against their measured means")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    if args.pad_to < 1:
        parser.error(f"--pad-to: {args.pad_to} must be at least 1")
    base = load(args.scenario or args.study / "calibrated.toml")
    fit_on = [args.study / name for name in args.fit_on.split(",") if name]
    missing = [str(p) for p in fit_on if not (p / "metrics.jsonl").is_file()]
    if missing:
        parser.error(f"--fit-on: no run at {', '.join(missing)}")
    shaped = base.with_overrides([f"generation.prefill_pad_to={args.pad_to}",
                                  f"generation.prefill_pow2_rows={'false' if args.no_pow2_rows else 'true'}"])
    runs = settings_of(args.study)
    engine: dict[str, list[dict[str, float]]] = {}
    matched: dict[str, str] = {}
    for run in [p for paths in runs.values() for p in paths] + [p for p in fit_on if p not in sum(runs.values(), [])]:
        passes = engine_passes(run)
        shapes = replay_passes(shaped, run)
        same = sum(1 for real, (count, _) in zip(passes, shapes) if real["prefills"] == count)
        for real, (_, padded) in zip(passes, shapes):
            real["padded"] = float(padded)
        engine[run.name] = passes
        matched[run.name] = f"{same}/{len(passes)}"
    print("updates whose replay opened as many passes as the engine: " + ", ".join(f"{name} {m}" for name, m in matched.items()))
    fit_runs = {run.name: engine[run.name] for run in fit_on}
    pass_tokens, per_token, r2_tokens = fitted(fit_runs, "prefill_tokens")
    pass_padded, per_padded, r2_padded = fitted(fit_runs, "padded")
    print(f"prefill line on the rows' tokens:   {pass_tokens * 1e3:.3f} ms a pass + {per_token:.4g} s a token, R^2 {r2_tokens:.3f}")
    print(f"prefill line on the padded tokens:  {pass_padded * 1e3:.3f} ms a pass + {per_padded:.4g} s a token, R^2 {r2_padded:.3f}")
    # the scenario's pass cost also holds the step after a pass beyond the others (calibrate's
    # decode fit), which stays as it is
    after_pass = base.generation.prefill_pass_s - pass_tokens
    padded_scenario: Scenario = shaped.with_overrides([f"generation.prefill_pass_s={max(0.0, pass_padded + after_pass)!r}",
                                                       f"generation.prefill_per_token_s={per_padded!r}"])
    results: dict[str, Any] = {"fit_on": [p.name for p in fit_on], "matched_passes": matched,
                               "lines": {"tokens": {"pass_s": pass_tokens, "per_token_s": per_token, "r2": r2_tokens},
                                         "padded": {"pass_s": pass_padded, "per_token_s": per_padded, "r2": r2_padded}},
                               "prefill_s": {}, "replay": {}}
    print("each run's engine prefill seconds, and the two lines' (error %):")
    for name, passes in engine.items():
        real = sum(r["prefill_s"] for r in passes)
        by_tokens = sum(pass_tokens * r["prefills"] + per_token * r["prefill_tokens"] for r in passes)
        by_padded = sum(pass_padded * r["prefills"] + per_padded * r["padded"] for r in passes)
        results["prefill_s"][name] = {"engine": real, "tokens": by_tokens, "padded": by_padded}
        print(f"  {name}: {real:.3f} s; tokens {by_tokens:.3f} ({error_pct(by_tokens, real):+.1f}); padded {by_padded:.3f} ({error_pct(by_padded, real):+.1f})")
    shown = (*FIGURES, "s_per_update")
    print("replayed / measured, mean of each setting's runs, error % (" + ", ".join(shown) + "):")
    for setting, paths in runs.items():
        real = [measured(p) for p in paths]
        row: dict[str, Any] = {}
        for label, scenario in (("tokens", base), ("padded", padded_scenario)):
            sims = [replay(scenario, p) for p in paths]
            row[label] = {m: error_pct(statistics.fmean(s[m] for s in sims), statistics.fmean(r[m] for r in real)) for m in shown}
            row[label]["worst_run_s_per_update"] = max((error_pct(s["s_per_update"], r["s_per_update"]) for s, r in zip(sims, real)), key=abs)
        results["replay"][setting] = row | {"runs": [p.name for p in paths]}
        for label in ("tokens", "padded"):
            print(f"  {setting} ({len(paths)} runs), {label}: " + "  ".join(f"{m} {row[label][m]:+.1f}" for m in shown)
                  + f"  (worst run's s/update {row[label]['worst_run_s_per_update']:+.1f})")
    if args.predict:
        results["predicted"] = predicted(args.study, padded_scenario)
    if args.out is not None:
        write_atomic(args.out, json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
