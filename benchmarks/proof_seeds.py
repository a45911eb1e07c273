"""Several ``hf_proof.py`` calls read together: held-out reward per setting, averaged over seeds.

Each folder is one ``hf_proof.py --out`` (its ``results.json`` names every run's
setting and seed).  Every asynchronous run is paired with the synchronous run of its
own folder and seed, as ``hf_proof.py`` pairs them.  Prints, per setting, the mean
held-out reward at each evaluated update over its runs and the mean difference to the
paired synchronous runs at that update, then each pair's time-to-target speedup and
final difference, and, with ``--plot PNG``, draws each setting's mean held-out reward
against its mean wall time over the runs (each run faint behind it); with
``--target R``, the wall time at which each mean curve reaches R::

    python benchmarks/proof_seeds.py runs/proof11 runs/proof12 --target 0.6 --plot docs/hf_proof_word_s2_seeds.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hf_proof import curve  # noqa: E402


def gather(folders: list[Path]) -> dict[str, list[dict]]:
    """Per setting, its runs: ``curve`` (wall s, held-out reward, update), ``sync`` (the
    paired synchronous run's curve), ``speedup`` and ``gap`` (from the folder's results)."""
    settings: dict[str, list[dict]] = {}
    for folder in folders:
        try:
            results = json.loads((folder / "results.json").read_text())
        except (OSError, ValueError) as failure:
            sys.exit(f"proof_seeds: {folder}: no readable results.json ({failure}); is it an hf_proof.py --out folder?")
        plan = results["plan"]
        syncs = {seed: name for name, (setting, seed) in plan.items() if setting == "sync"}
        for name, (setting, seed) in plan.items():
            run = {"name": f"{folder.name}/{name}", "curve": curve(folder / name)}
            if setting != "sync":
                run |= {"sync": curve(folder / syncs[seed]), "speedup": results["time_to_target_speedup"][name],
                        "gap": results["final_gap"][name]}
            settings.setdefault(setting, []).append(run)
    return settings


def mean_curve(curves: list[list[tuple[float, float, int]]]) -> list[tuple[int, float, float]]:
    """(update, mean wall s, mean held-out reward) at each update every curve evaluated."""
    updates = sorted(set.intersection(*({step for _, _, step in c} for c in curves))) if curves else []
    at = [{step: (wall, reward) for wall, reward, step in c} for c in curves]
    return [(u, statistics.fmean(a[u][0] for a in at), statistics.fmean(a[u][1] for a in at)) for u in updates]


def crossing(mean: list[tuple[int, float, float]], target: float) -> float | None:
    """Wall time at which a mean curve first reaches ``target``, linear between its
    evaluations (a mean curve, unlike one run's, is worth interpolating)."""
    before = None
    for _, wall, reward in mean:
        if reward >= target:
            if before is None:
                return wall
            (w0, r0) = before
            return w0 + (wall - w0) * (target - r0) / (reward - r0)
        before = (wall, reward)
    return None


def table(settings: dict[str, list[dict]], target: float | None = None) -> str:
    lines = []
    sync_time = crossing(mean_curve([r["curve"] for r in settings.get("sync", [])]), target) if target is not None else None
    for setting, runs in settings.items():
        mean = mean_curve([r["curve"] for r in runs])
        row = " / ".join(f"{reward:.3f}" for _, _, reward in mean)
        lines.append(f"{setting} ({len(runs)} runs), held-out at updates {' / '.join(str(u) for u, _, _ in mean)}: {row}; "
                     f"mean wall s {' / '.join(f'{wall:.1f}' for _, wall, _ in mean)}")
        if target is not None:
            when = crossing(mean, target)
            ratio = f", {sync_time / when:.2f}x sooner than sync's" if when and sync_time and setting != "sync" else ""
            lines.append(f"  the mean curve reaches {target:.2f} at " + (f"{when:.1f} s{ratio}" if when else "no evaluation"))
        if setting != "sync":
            paired = mean_curve([r["sync"] for r in runs])
            diff = " / ".join(f"{a[2] - s[2]:+.3f}" for a, s in zip(mean, paired))
            lines.append(f"  against the paired synchronous runs: {diff}")
            for r in runs:
                lines.append(f"  {r['name']}: time-to-target speedup {r['speedup']:.2f}x, final {r['gap']:+.3f}")
            lines.append(f"  median time-to-target speedup {statistics.median(r['speedup'] for r in runs):.2f}x, "
                         f"mean final difference {statistics.fmean(r['gap'] for r in runs):+.3f}")
    return "\n".join(lines)


def plot(settings: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for index, (setting, runs) in enumerate(settings.items()):
        color = f"C{index}"
        for r in runs:
            ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], color=color, alpha=0.25, linewidth=1)
        mean = mean_curve([r["curve"] for r in runs])
        ax.plot([m[1] for m in mean], [m[2] for m in mean], color=color, marker="o", markersize=3, linewidth=2,
                label=f"{setting}, mean of {len(runs)}")
    ax.set_xlabel("training wall time (s; evaluation left out)")
    ax.set_ylabel("held-out reward")
    ax.set_title("Held-out reward against wall time, runs and their mean")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    from engine.log.files import atomic_output

    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="hf_proof.py --out folders")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="draw the settings' mean curves here")
    parser.add_argument("--target", type=float, default=None,
                        help="also the wall time at which each setting's mean curve reaches this held-out reward")
    args = parser.parse_args()
    settings = gather(args.folders)
    print(table(settings, args.target))
    if args.plot is not None:
        plot(settings, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
