"""N cameras, three ways: one batched multi-camera node, one node without batching, N nodes.

For each camera count N and frame size, the same camera traffic (a separate publisher process:
N cameras, all publishing at ``--rate`` Hz with one shared time stamp per tick, as synchronised
car cameras do) is served by

* ``batched``: one ``seg_node`` with ``cameras: [c0, ..]`` (``max_batch_size: 0``: every
  pending camera in one model run, ``batch_wait_ms`` as given);
* ``round_robin``: the same node with ``max_batch_size: 1`` (one camera per model run);
* ``per_camera``: N single-camera ``seg_node`` processes, one per camera namespace (what a
  stack without multi-camera support runs).

All produce the same topics (``/mc/<camera>/segmentation/labels``). This process subscribes to
them and records, per camera, end-to-end latency (labels received minus header stamp; one host,
one clock), processed frames per second and drops (published - labels received) over the
measurement window (after ``--warmup`` seconds), and the node processes' total resident memory
(max over the window). Every process runs in its own ROS domain (``ROS_DOMAIN_ID``) on loopback.

    python bench/multicam.py --size 256x512 --cameras 1 2 4 6 --rate 5 --duration 10
    python bench/multicam.py --size 1024x2048 --cameras 8 --rate 30 --device cuda --precision fp16

Prints a table; writes JSON to ``--out`` (default ``bench/results/multicam_<size>_<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

VARIANTS = ("batched", "round_robin", "per_camera")
NAMESPACE = "/mc"
INPUT_PREFIX = "/bench"
#: Seconds to wait for the node processes to start (import torch, build and warm the model).
STARTUP_TIMEOUT_S = 180.0


def camera_names(count: int) -> list[str]:
    return [f"cam{i}" for i in range(count)]


def input_topic(camera: str) -> str:
    return f"{INPUT_PREFIX}/{camera}/image"


def labels_topic(camera: str) -> str:
    return f"{NAMESPACE}/{camera}/segmentation/labels"


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# -- plain data (no ROS) ------------------------------------------------------------------------
def summarize(published: dict[str, int], records: dict[str, list[float]], duration_s: float,
              rss_total_mb: float) -> dict[str, Any]:
    """Per camera and total figures of one run; ``records`` are latencies (ms) of labels that
    came back for frames published inside the measurement window."""
    from seg_perception.stats import percentiles

    cameras = {}
    for camera, count in published.items():
        received = len(records.get(camera, []))
        cameras[camera] = {
            "published": count, "processed": received, "drops": count - received,
            "processed_fps": received / duration_s if duration_s > 0 else 0.0,
            "latency_ms": percentiles(records.get(camera, [])),
        }
    fps = [c["processed_fps"] for c in cameras.values()]
    mean = sum(fps) / len(fps) if fps else 0.0
    return {
        "cameras": cameras,
        "total_processed_fps": sum(fps),
        "min_share_of_mean": min(fps) / mean if mean else None,
        "max_share_of_mean": max(fps) / mean if mean else None,
        "no_camera_starved": bool(mean) and all(abs(f - mean) <= 0.2 * mean for f in fps),
        "rss_total_mb": rss_total_mb,
    }


# -- publisher process --------------------------------------------------------------------------
def run_publisher(args: argparse.Namespace) -> int:
    """Role ``publisher``: N cameras at ``rate`` Hz each, warm-up then measurement; prints one
    JSON line with the frames published per camera in the measurement window."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("multicam_publisher")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    cameras = camera_names(args.count)
    height, width = args.size
    rng = np.random.default_rng(1)
    publishers, messages = {}, {}
    for camera in cameras:
        publishers[camera] = node.create_publisher(Image, input_topic(camera), qos)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        messages[camera] = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width,
                                 data=pixels.tobytes())
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while any(p.get_subscription_count() < 1 for p in publishers.values()):
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no subscriber"}), flush=True)
            return 1
        time.sleep(0.05)
    period = 1.0 / args.rate
    ticks = round(args.rate * (args.warmup + args.duration))
    warm_ticks = round(args.rate * args.warmup)
    published: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    late = 0
    for tick in range(ticks):
        delay = start + tick * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif -delay > period / 2:
            late += 1
        phase = "w" if tick < warm_ticks else "m"
        stamp = time.time_ns()
        for camera in cameras:
            msg = messages[camera]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = f"{phase}:{tick}"
            publishers[camera].publish(msg)
            if phase == "m":
                published[camera] += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({"published": dict(published), "late_ticks": late,
                      "achieved_rate_hz": (ticks - 1) / elapsed if ticks > 1 else None}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# -- collector (this process) -------------------------------------------------------------------
class Collector:
    """Subscribes to every camera's labels and records the latency of measurement frames."""

    def __init__(self, cameras: list[str]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("multicam_collector", context=self.context)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.records: dict[str, list[float]] = {c: [] for c in cameras}
        self.cameras = cameras
        self._lock = threading.Lock()
        for camera in cameras:
            self.node.create_subscription(Image, labels_topic(camera),
                                          lambda msg, c=camera: self._on_labels(c, msg), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_labels(self, camera: str, msg: Any) -> None:
        now = time.time_ns()
        if not msg.header.frame_id.startswith("m:"):
            return
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.records[camera].append((now - stamp) / 1e6)

    def ready(self) -> bool:
        """Every camera's labels topic has its node and every input topic a subscriber."""
        return all(self.node.count_publishers(labels_topic(c)) > 0 and self.node.count_subscribers(input_topic(c)) > 0
                   for c in self.cameras)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def _node_command(args: argparse.Namespace, params: dict[str, Any], namespace: str) -> list[str]:
    command = [sys.executable, "-m", "seg_perception.process", "--ros-args", "-r", f"__ns:={namespace}"]
    for key, value in params.items():
        text = json.dumps(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) \
            else str(value)
        command += ["-p", f"{key}:={text}"]
    return command


def node_commands(args: argparse.Namespace, variant: str, cameras: list[str]) -> list[list[str]]:
    common: dict[str, Any] = {"device": args.device, "precision": args.precision, "max_age_ms": args.max_age_ms,
                              "diagnostics_period": 1.0}
    if args.weights:
        common["weights"] = args.weights
    if args.inference_size:
        common["inference_size"] = list(args.inference_size)
    if variant == "per_camera":
        return [_node_command(args, {**common, "image_topic": input_topic(c)}, f"{NAMESPACE}/{c}") for c in cameras]
    params = {**common, "cameras": cameras, "batch_wait_ms": args.batch_wait_ms,
              "max_batch_size": 0 if variant == "batched" else 1}
    params.update({f"{c}.image_topic": input_topic(c) for c in cameras})
    return [_node_command(args, params, NAMESPACE)]


def run_variant(args: argparse.Namespace, variant: str, count: int, logs: Path) -> dict[str, Any]:
    cameras = camera_names(count)
    collector = Collector(cameras)
    procs: list[subprocess.Popen] = []
    log_files = []
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        for i, command in enumerate(node_commands(args, variant, cameras)):
            log_files.append(open(logs / f"{variant}_{count}_{i}.log", "w"))
            procs.append(subprocess.Popen(command, stdout=log_files[-1], stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not collector.ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{variant} x{count}: nodes did not start; see {logs}")
            time.sleep(0.2)
        publisher = subprocess.Popen(
            [sys.executable, __file__, "--role", "publisher", "--count", str(count), "--size",
             f"{args.size[0]}x{args.size[1]}", "--rate", str(args.rate), "--warmup", str(args.warmup),
             "--duration", str(args.duration)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        rss_max = 0.0
        while publisher.poll() is None:
            time.sleep(0.5)
            rss_max = max(rss_max, sum(rss_mb(p.pid) for p in procs))
        report = json.loads(publisher.stdout.read().strip().splitlines()[-1])
        if "error" in report:
            raise RuntimeError(f"publisher: {report['error']}")
        time.sleep(min(3.0, 2.0 + 1.0 / args.rate))  # labels still in flight
        with collector._lock:
            records = {c: list(v) for c, v in collector.records.items()}
        result = summarize(report["published"], records, args.duration, rss_max)
        result.update({"variant": variant, "count": count, "processes": len(procs),
                       "achieved_rate_hz": report["achieved_rate_hz"], "late_ticks": report["late_ticks"]})
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in log_files:
            log.close()
        collector.close()


def _table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'variant':<12} {'N':>2} {'procs':>5} {'total fps':>9} {'min/max share':>13} "
             f"{'p50 ms':>8} {'p99 ms':>8} {'drops':>6} {'RSS MB':>8}"]
    for r in results:
        lat = [c["latency_ms"] for c in r["cameras"].values() if c["latency_ms"]]
        p50 = np.median([x["p50"] for x in lat]) if lat else float("nan")
        p99 = max(x["p99"] for x in lat) if lat else float("nan")
        drops = sum(c["drops"] for c in r["cameras"].values())
        share = f"{r['min_share_of_mean'] or 0:.2f}/{r['max_share_of_mean'] or 0:.2f}"
        lines.append(f"{r['variant']:<12} {r['count']:>2} {r['processes']:>5} {r['total_processed_fps']:>9.2f} "
                     f"{share:>13} {p50:>8.1f} {p99:>8.1f} {drops:>6} {r['rss_total_mb']:>8.0f}")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "publisher"), default="bench")
    parser.add_argument("--size", type=_size, default=(256, 512), help="frame HxW")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 6], help="camera counts")
    parser.add_argument("--count", type=int, default=1, help="(publisher role) cameras")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rate", type=float, default=5.0, help="Hz per camera")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--weights", default="")
    parser.add_argument("--inference-size", type=_size, default=None)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-age-ms", type=float, default=500.0)
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: env, else 77)")
    parser.add_argument("--fastdds-profile", default=str(REPO_ROOT / "config" / "fastdds_large_images.xml"),
                        help="Fast DDS profile for every process ('' = DDS defaults: the 512 KB shared-memory "
                             "segment cannot hold several cameras' frames at once, and best-effort frames "
                             "fragmented over UDP get lost)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.role == "publisher":
        return run_publisher(args)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id if args.domain_id is not None
                                      else os.environ.get("ROS_DOMAIN_ID", "77"))
    if args.fastdds_profile:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = args.fastdds_profile
    name = f"multicam_{args.size[0]}x{args.size[1]}_{args.device}.json"
    out = Path(args.out or REPO_ROOT / "bench" / "results" / name)
    logs = Path(tempfile.mkdtemp(prefix="multicam_logs_"))
    results = []
    runs = [(count, variant) for count in args.cameras for variant in args.variants]
    for i, (count, variant) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {variant} with {count} camera(s) ...", flush=True)
        try:
            results.append(run_variant(args, variant, count, logs))
        except RuntimeError as exc:
            print(f"  failed: {exc}", flush=True)
            results.append({"variant": variant, "count": count, "error": str(exc)})
            continue
        print(_table([results[-1]]).splitlines()[-1], flush=True)
    ok = [r for r in results if "error" not in r]
    print("\n" + _table(ok))
    document = {
        "size": list(args.size), "rate_hz_per_camera": args.rate, "duration_s": args.duration,
        "warmup_s": args.warmup, "device": args.device, "precision": args.precision,
        "batch_wait_ms": args.batch_wait_ms, "max_age_ms": args.max_age_ms,
        "weights": args.weights or "(random init)", "fastdds_profile": args.fastdds_profile,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(), "logs": str(logs), "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
