#!/usr/bin/env python3
"""Does mining help? Fine-tune ``synthetic_street`` on K mined frames vs K random frames.

The setting: the shipped ``synthetic_street`` model (trained on the clear-day sample street) meets a
shifted domain. A pool of drives rendered at dusk, in fog and in rain (``make-sample-drive
--style``) stands for a fleet's recordings in bad conditions, with no labels. From the pool:

* **mined**: ``seg-perception mine --top K`` (shipped defaults: least-confidence score, 1 s gap,
  similarity 0.95) chooses K frames;
* **random**: K frames drawn uniformly from the same pool (a new draw for every seed).

The renderer's ground truth stands in for a person's corrections: the pseudo-labels of the chosen
frames are replaced by the true labels before training. Each set fine-tunes the shipped weights
with the same recipe and number of iterations, for several seeds, together with a clear-day drive
of the kind the shipped model was trained on (``--replay-frames``; seed 1, one of its training
seeds), as one fine-tunes in practice: without it the model forgets the clear day. Every fine-tuned
model is evaluated (``seg-perception eval --mode offline``) on held-out drives: one of each style (seeds
never in the pool) and a clear-day drive (does the model forget the clear day?).

Before training, the study also measures how well each mining score finds the frames the model
gets wrong, on the whole pool (no training needed): the rank correlation of the score with the
frame's pixel error, and the mean pixel error of the K frames each score chooses.

Results: ``--json`` (numbers, commands, machine) and ``--plot``. Every step skips work already done
in ``--work``, so an interrupted study continues where it stopped.

Usage::

    PYTHONPATH=. python scripts/mining_study.py [--k 16] [--seeds 0 1 2] [--iterations 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_perception.evaluation.cityscapes_folder import (  # noqa: E402
    CityscapesPair,
    find_pairs,
    gt_path,
    image_path,
    read_pair,
    write_pair,
)
from seg_perception.evaluation.sample_drive import SPLIT as SAMPLE_SPLIT  # noqa: E402

STYLES = ("dusk", "fog", "rain")
POOL_SEEDS = range(101, 113)  # 12 drives, styles in turn: 4 of each
TEST_SEEDS = {"dusk": 201, "fog": 202, "rain": 203, "clear": 204}
REPLAY_SEED = 1  # a seed of the shipped model's training drives


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sp(args: list[str], commands: list[str], done: bool = False, quiet: bool = True) -> None:
    """Run ``seg-perception ARGS`` (this checkout's) unless it is ``done`` (an earlier invocation
    ran it); the command line is recorded either way."""
    commands.append("seg-perception " + " ".join(args))
    if done:
        return
    cmd = [sys.executable, "-m", "seg_perception.cli", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(args)}\n{(result.stderr or '')[-3000:]}")


def render(work: Path, frames: int, size: str, commands: list[str]) -> tuple[list[Path], dict[str, Path]]:
    pool, tests = [], {}
    for i, seed in enumerate(POOL_SEEDS):
        style = STYLES[i % len(STYLES)]
        out = work / "drives" / f"pool_{seed}_{style}"
        sp(["make-sample-drive", str(out), "--frames", str(frames), "--size", size, "--seed", str(seed),
            "--style", style], commands, done=(out / "bag" / "metadata.yaml").exists())
        pool.append(out)
    for style, seed in TEST_SEEDS.items():
        out = work / "drives" / f"test_{seed}_{style}"
        sp(["make-sample-drive", str(out), "--frames", "24", "--size", size, "--seed", str(seed),
            *([] if style == "clear" else ["--style", style])], commands, done=(out / "bag" / "metadata.yaml").exists())
        tests[style] = out
    return pool, tests


def render_replay(work: Path, frames: int, size: str, commands: list[str]) -> Path:
    out = work / "drives" / f"replay_{REPLAY_SEED}_clear_{frames}"
    sp(["make-sample-drive", str(out), "--frames", str(frames), "--size", size, "--seed", str(REPLAY_SEED)],
       commands, done=(out / "bag" / "metadata.yaml").exists())
    return out


def pool_frames(pool: list[Path]) -> list[tuple[Path, int]]:
    """(drive folder, frame index) of every pool frame, in drive order."""
    return [(drive, i) for drive in pool for i in range(len(find_pairs(drive / "cityscapes", SAMPLE_SPLIT)))]


def sample_files(drive: Path, index: int) -> tuple[Path, Path]:
    stem = f"sample_000000_{index:06d}"
    root = drive / "cityscapes"
    return image_path(root, SAMPLE_SPLIT, "sample", stem), gt_path(root, SAMPLE_SPLIT, "sample", stem)


def score_quality(pool: list[Path], k: int, threads: int, cache: Path) -> dict[str, Any]:
    """Each mining score against the frame's true pixel error, over the whole pool."""
    if cache.exists():
        return json.loads(cache.read_text())
    import torch

    from seg_perception.cityscapes import IGNORE_INDEX, label_ids_to_train_ids
    from seg_perception.evaluation.drives.task import build_engine
    from seg_perception.evaluation.evaluate import resolve_params
    from seg_perception.mining.job import CONFIDENCE
    from seg_perception.mining.scores import SCORES, frame_score
    from seg_perception.mining.select import Candidate, select, thumbnail

    torch.set_num_threads(threads)
    engine = build_engine(resolve_params(weights="synthetic_street", device="cpu"))
    records = []
    for drive, index in pool_frames(pool):
        image, gt_file = sample_files(drive, index)
        rgb, gt = read_pair(CityscapesPair(image.name, image, gt_file))
        result = engine.infer(rgb, CONFIDENCE)
        mirrored = engine.infer(np.ascontiguousarray(rgb[:, ::-1])).labels
        train = label_ids_to_train_ids(gt)
        valid = train != IGNORE_INDEX
        error = float(np.mean(result.labels[valid] != train[valid]))
        scores = {kind: frame_score(kind, result.confidence, result.labels, mirrored) for kind in SCORES}
        records.append({"drive": drive.name, "index": index, "error": error, "scores": scores,
                        "thumb": thumbnail(rgb), "drive_pos": pool.index(drive)})
    errors = np.array([r["error"] for r in records])

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        out = np.empty(len(x))
        out[order] = np.arange(len(x))
        return out

    out: dict[str, Any] = {"frames": len(records), "pool_mean_pixel_error": float(errors.mean()),
                           "by_style_mean_pixel_error": {s: float(np.mean([r["error"] for r in records
                                                                           if r["drive"].endswith(s)]))
                                                         for s in STYLES}, "scores": {}}
    for kind in SCORES:
        values = np.array([r["scores"][kind] for r in records])
        spearman = float(np.corrcoef(ranks(values), ranks(errors))[0, 1])
        candidates = [Candidate(r["drive_pos"], "camera", "/camera/image_raw", r["index"],
                                int(round(r["index"] * 1e9 / 17.0)), r["scores"][kind], r["thumb"]) for r in records]
        chosen = select(candidates, k).chosen
        picked = [next(r for r in records if r["drive_pos"] == c.drive and r["index"] == c.index) for c in chosen]
        out["scores"][kind] = {
            "spearman_with_pixel_error": spearman,
            "chosen_mean_pixel_error": float(np.mean([r["error"] for r in picked])),
            "chosen_styles": {s: sum(r["drive"].endswith(s) for r in picked) for s in STYLES},
        }
    cache.write_text(json.dumps(out, indent=2))
    return out


def build_sets(work: Path, pool: list[Path], k: int, seeds: list[int], threads: int,
               commands: list[str]) -> dict[str, Path]:
    """The mined set (one; mining is deterministic) and one random set per seed, each with the
    renderer's ground truth as the corrected labels."""
    sets: dict[str, Path] = {}
    mined = work / "sets" / "mined"
    done = (mined / "corrected").exists()
    if not done and mined.exists():
        shutil.rmtree(mined)
    args = ["mine", "--weights", "synthetic_street", "--top", str(k), "--out", str(mined), "--device", "cpu",
            "--threads", str(threads), "--no-progress"]
    for drive in pool:
        args += ["--bag", str(drive / "bag")]
    sp(args, commands, done=done)
    if not done:
        import csv

        with (mined / "mined.csv").open() as f:
            rows = list(csv.DictReader(f))
        for row in rows:  # the person's corrections: the renderer's ground truth
            drive = Path(row["bag"]).parent
            _, true_gt = sample_files(drive, int(row["frame_index"]))
            shutil.copyfile(true_gt, mined / row["pseudo_labels"])
        (mined / "corrected").write_text("pseudo-labels replaced by the renderer's ground truth\n")
    sets["mined"] = mined
    frames = pool_frames(pool)
    for seed in seeds:
        folder = work / "sets" / f"random_{seed}"
        if not (folder / "done").exists():
            if folder.exists():
                shutil.rmtree(folder)
            picks = np.random.default_rng(1000 + seed).choice(len(frames), size=k, replace=False)
            for n, p in enumerate(sorted(picks)):
                drive, index = frames[p]
                image, gt_file = sample_files(drive, index)
                rgb, gt = read_pair(CityscapesPair(image.name, image, gt_file))
                write_pair(folder, "train", "random", f"random_{n:06d}_{index:06d}", rgb, gt)
            (folder / "done").write_text(json.dumps([f"{frames[p][0].name}:{frames[p][1]}" for p in sorted(picks)]))
        sets[f"random_{seed}"] = folder
    return sets


def train_and_eval(work: Path, name: str, data: Path | None, seed: int, tests: dict[str, Path],
                   args: argparse.Namespace, commands: list[str], replay: Path | None = None) -> dict[str, Any]:
    """Fine-tune on ``data`` (None: the shipped weights as they are) and evaluate on every test drive."""
    weights = "synthetic_street"
    seconds = None
    if data is not None:
        run = work / "runs" / f"{name}_seed{seed}"
        done = (run / "done").exists()
        if not done and run.exists():
            shutil.rmtree(run)
        began = time.monotonic()
        replay_data = [] if replay is None else [str(replay / "bag")]  # a bag: read whatever the split
        sp(["train", "--data", str(data), *replay_data, "--init", "synthetic_street", "--out", str(run),
            "--iterations", str(args.iterations), "--batch-size", str(args.batch_size), "--crop", args.crop,
            "--optimizer", "adamw", "--lr", str(args.lr), "--warmup", str(max(1, args.iterations // 10)),
            "--val-every", str(args.iterations), "--num-workers", "0", "--threads", str(args.threads),
            "--seed", str(seed), "--device", "cpu", "--no-progress"], commands, done=done)
        if not done:
            (run / "done").write_text(f"{time.monotonic() - began:.1f}\n")
        seconds = float((run / "done").read_text())
        weights = str(run / "best.pth")
    report_dir = work / "eval" / (f"{name}_seed{seed}" if data is not None else "shipped")
    eval_args = ["eval", "--mode", "offline", "--weights", weights, "--out", str(report_dir), "--device", "cpu",
                 "--threads", str(args.threads), "--no-progress"]
    for drive in tests.values():
        eval_args += ["--bag", str(drive / "bag")]
    sp(eval_args, commands, done=(report_dir / "report.json").exists())
    report = json.loads((report_dir / "report.json").read_text())
    by_drive = {d["name"]: d["miou"] for d in report["drives"]}
    result = {style: by_drive[f"{drive.name}/bag"] for style, drive in tests.items()}
    result["shifted_mean"] = float(np.mean([result[s] for s in STYLES]))
    result["train_s"] = seconds
    return result


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for arm, results in runs.items():
        out[arm] = {key: {"mean": float(np.mean([r[key] for r in results])),
                          "std": float(np.std([r[key] for r in results], ddof=1)) if len(results) > 1 else 0.0,
                          "runs": [r[key] for r in results]}
                    for key in (*STYLES, "clear", "shifted_mean")}
    return out


def plot(path: Path, shipped: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (*STYLES, "shifted_mean", "clear")
    labels = ("dusk", "fog", "rain", "mean of the\nthree styles", "clear day\n(forgetting?)")
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.27, [100 * shipped[k] for k in keys], 0.26, label="shipped (no fine-tuning)", color="#999999")
    for offset, arm, color in ((0.0, "random", "#4c72b0"), (0.27, "mined", "#dd8452")):
        means = [100 * np.mean([r[k] for r in runs[arm]]) for k in keys]
        stds = [100 * np.std([r[k] for r in runs[arm]], ddof=1) if len(runs[arm]) > 1 else 0 for k in keys]
        ax.bar(x + offset, means, 0.26, yerr=stds, capsize=3, label=f"{arm} (mean ± sd of seeds)", color=color)
        for i, k in enumerate(keys):
            ax.scatter([x[i] + offset] * len(runs[arm]), [100 * r[k] for r in runs[arm]], s=8, color="black", zorder=3)
    ax.set_xticks(x, labels)
    ax.set_ylabel("mIoU on held-out drive (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="out/mining_study", help="working folder (drives, sets, runs, reports)")
    parser.add_argument("--k", type=int, default=16, help="frames per training set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", default="160x160")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--frames", type=int, default=40, help="frames per pool drive")
    parser.add_argument("--replay-frames", type=int, default=16,
                        help="frames of a clear-day drive trained on with every set (0: none)")
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="bench/results/mining_study.json")
    parser.add_argument("--plot", default="bench/results/mining_study.png")
    parser.add_argument("--only-scores", action="store_true", help="stop after measuring the scores")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    work = Path(args.work)
    commands: list[str] = []
    began = time.monotonic()
    log("rendering the pool and the held-out drives")
    pool, tests = render(work, args.frames, args.size, commands)
    replay = render_replay(work, args.replay_frames, args.size, commands) if args.replay_frames else None
    log("measuring the mining scores on the pool")
    quality = score_quality(pool, args.k, args.threads, work / f"score_quality_k{args.k}.json")
    log(f"score quality: {json.dumps(quality)}")
    if args.only_scores:
        return 0
    log("mining and drawing the random sets")
    sets = build_sets(work, pool, args.k, args.seeds, args.threads, commands)
    log("evaluating the shipped weights")
    shipped = train_and_eval(work, "shipped", None, 0, tests, args, commands)
    runs: dict[str, list[dict[str, Any]]] = {"mined": [], "random": []}
    for seed in args.seeds:
        for arm in ("mined", "random"):
            log(f"fine-tuning {arm}, seed {seed}")
            result = train_and_eval(work, arm, sets["mined" if arm == "mined" else f"random_{seed}"], seed, tests,
                                    args, commands, replay)
            log(f"  {arm} seed {seed}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in result.items()
                                                      if k != "train_s") + f" (trained in {result['train_s']:.0f} s)")
            runs[arm].append(result)
    mined_summary = json.loads((sets["mined"] / "mining.json").read_text())
    out = {
        "question": "fine-tune synthetic_street on K mined vs K random frames of shifted-domain drives",
        "k": args.k, "seeds": args.seeds,
        "recipe": {"iterations": args.iterations, "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr,
                   "optimizer": "adamw", "init": "synthetic_street", "threads": args.threads,
                   "replay": None if replay is None else {"drive": replay.name, "frames": args.replay_frames}},
        "pool": {"drives": [p.name for p in pool], "frames_per_drive": args.frames, "size": args.size},
        "tests": {style: drive.name for style, drive in tests.items()},
        "mined": {"frames": mined_summary["chosen"], "score": mined_summary["score"],
                  "min_gap_s": mined_summary["min_gap_s"], "max_similarity": mined_summary["max_similarity"],
                  "frames_info": mined_summary["frames"],
                  "styles": {s: sum(1 for line in (sets["mined"] / "mined.csv").read_text().splitlines()
                                    if f"_{s}/" in line) for s in STYLES}},
        "random_styles": {seed: {s: sum(1 for f in json.loads((sets[f"random_{seed}"] / "done").read_text())
                                        if f.split(":")[0].endswith(s)) for s in STYLES} for seed in args.seeds},
        "score_quality": quality,
        "shipped": shipped,
        "runs": runs,
        "summary": summarise(runs),
        "commands": commands,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
        "wall_s_this_invocation": time.monotonic() - began,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    plot(Path(args.plot), shipped, runs)
    log(f"wrote {args.json} and {args.plot} in {out['wall_s_this_invocation'] / 60:.1f} min")
    s = out["summary"]
    for arm in ("random", "mined"):
        log(f"{arm}: shifted mean mIoU {100 * s[arm]['shifted_mean']['mean']:.1f} ± "
            f"{100 * s[arm]['shifted_mean']['std']:.1f}; clear {100 * s[arm]['clear']['mean']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
