"""Stamp-to-labels latency and drops of ``seg_node`` over real DDS, against a no-processing relay.

Three kinds of process, all on loopback in a ROS domain of their own:

* the *target*: ``seg_node`` itself (``python -m seg_perception.process``), or a *relay* node that
  answers each image with a labels-sized mono8 image and no processing (``--relay-output image``
  echoes the received image instead), so the relay's latency is the DDS and rclpy cost of moving
  a camera frame in and a labels map out, and ``seg_node`` minus relay is our own processing;
* a *publisher* process that sends varied rgb8 frames (several rotating buffers) at a fixed rate,
  stamped with the wall clock just before ``publish``;
* this process, which subscribes to ``segmentation/labels`` and records, per frame, receive time
  minus header stamp (same host, same clock) and which frames never came back (drops).

For ``seg_node`` the node's own ``/diagnostics`` counters are read before and after each phase,
so a drop is attributed to the input transport (never received by the node), the node (dropped
as superseded/stale) or the output transport. A rate sweep finds the highest input rate with zero
drops.

    python bench/node_latency.py --size 1024x2048 --rate 30 --duration 60 \\
        --sweep 45 60 90 --node-param device:=cuda --weights PATH

Writes JSON to ``--out`` (default ``bench/results/node_latency.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from seg_perception.stats import percentiles

IMAGE_TOPIC = "camera/image_raw"
LABELS_TOPIC = "segmentation/labels"
TARGETS = ("relay", "seg_node")
#: The targets for 1024x2048 rgb8 at 30 Hz.
NODE_TARGETS = {"p50_ms": 15.0, "p99_ms": 25.0, "drops": 0}


# -- plain data (no ROS) ------------------------------------------------------------------------
def summarize_phase(
    rate_hz: float, publisher: dict[str, Any], records: Sequence[tuple[int, float]]
) -> dict[str, Any]:
    """One phase: ``records`` are (sequence number, latency ms) of the labels that came back."""
    seqs = [seq for seq, _ in records]
    received = len(set(seqs))
    published = int(publisher["published"])
    return {
        "rate_hz": rate_hz,
        "achieved_rate_hz": publisher.get("achieved_rate_hz"),
        "published": published,
        "received": received,
        "drops": published - received,
        "drop_ratio": (published - received) / published if published else None,
        "duplicates": len(seqs) - received,
        "latency_ms": percentiles([ms for _, ms in records]),
        "publish_call_ms": publisher.get("publish_call_ms"),
        "late_sends": publisher.get("late_sends"),
    }


def sweep_rates(
    measure: Callable[[float], dict[str, Any]], rates: Sequence[float], stop_after_drop: bool = True
) -> list[dict[str, Any]]:
    """Measure ascending rates; by default stop at the first rate that drops frames."""
    results = []
    for rate in sorted(rates):
        result = measure(rate)
        results.append(result)
        if stop_after_drop and result["drops"] > 0:
            break
    return results


def highest_zero_drop_rate(phases: Sequence[dict[str, Any]]) -> float | None:
    """The highest requested rate such that it and every lower rate tested dropped nothing."""
    best = None
    for phase in sorted(phases, key=lambda p: p["rate_hz"]):
        if phase["drops"] > 0 or phase["published"] == 0:
            break
        best = phase["rate_hz"]
    return best


def diagnostics_delta(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    """Change of the node's frame counters (``frames_*``, ``dropped_*``, ``rejected_*``)."""
    delta = {}
    for key, value in after.items():
        if key.startswith(("frames_", "dropped_", "rejected_")) and key != "frames_in_flight":
            try:
                delta[key] = int(value) - int(before.get(key, 0))
            except ValueError:
                continue
    return delta


def attribute_drops(published: int, received: int, node: dict[str, int]) -> dict[str, int] | None:
    """Split drops into input transport, node and output transport using the node's counters."""
    if "frames_received" not in node or "frames_processed" not in node:
        return None
    return {
        "input_transport": published - node["frames_received"],
        "node": node["frames_received"] - node["frames_processed"],
        "output_transport": node["frames_processed"] - received,
    }


# -- ROS roles ----------------------------------------------------------------------------------
def _qos(reliability: str, depth: int) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=policy, history=HistoryPolicy.KEEP_LAST)


def run_publisher(args: argparse.Namespace) -> int:
    """Role ``publisher``: one JSON command per stdin line ``{rate, duration, run_id}``, one reply each."""
    import rclpy
    from sensor_msgs.msg import Image

    from seg_perception.benchmark import make_frames

    rclpy.init()
    node = rclpy.create_node("latency_publisher")
    publisher = node.create_publisher(Image, args.topic, _qos(args.qos, args.qos_depth))
    height, width = args.size
    messages = [
        Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width, data=f.tobytes())
        for f in make_frames(height, width, count=args.buffers, seed=1)
    ]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        deadline = time.monotonic() + args.match_timeout
        while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if publisher.get_subscription_count() < 1:
            print(json.dumps({"error": f"no subscriber on {args.topic}", "published": 0}), flush=True)
            continue
        print(json.dumps(publish_frames(publisher, messages, **command)), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def publish_frames(
    publisher: Any, messages: Sequence[Any], rate: float, duration: float, run_id: str
) -> dict[str, Any]:
    """Publish at ``rate`` for ``duration`` seconds on a fixed schedule (late frames are not skipped)."""
    period, count = 1.0 / rate, max(1, round(rate * duration))
    calls, late = [], 0
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif -delay > period / 2:
            late += 1
        msg = messages[i % len(messages)]
        stamp = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = f"{run_id}:{i}"
        t0 = time.perf_counter()
        publisher.publish(msg)
        calls.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.perf_counter() - start
    return {"run_id": run_id, "published": count, "elapsed_s": elapsed,
            "achieved_rate_hz": (count - 1) / elapsed if count > 1 and elapsed > 0 else None,
            "publish_call_ms": percentiles(calls), "late_sends": late}


def run_relay(args: argparse.Namespace) -> int:
    """Role ``relay``: answer each image at once, with no processing, on the labels topic."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("latency_relay")
    out = node.create_publisher(Image, LABELS_TOPIC, _qos("reliable", 5))
    labels: dict[tuple[int, int], bytes] = {}

    def on_image(msg: Image) -> None:
        if args.relay_output == "image":
            out.publish(msg)
            return
        size = (msg.height, msg.width)
        if size not in labels:
            labels[size] = (np.arange(msg.height * msg.width) % 19).astype(np.uint8).tobytes()
        out.publish(Image(header=msg.header, height=msg.height, width=msg.width, encoding="mono8",
                          is_bigendian=0, step=msg.width, data=labels[size]))

    node.create_subscription(Image, args.topic, on_image, _qos(args.qos, args.qos_depth))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


class Probe:
    """This process's subscriber: labels (latency per frame) and the node's /diagnostics."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("latency_probe", context=self.context)
        self._lock = threading.Lock()
        self._records: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._last_labels = 0.0
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_time = 0.0
        self.labels = self.node.create_subscription(Image, LABELS_TOPIC, self._on_labels, _qos("reliable", 100))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_labels(self, msg: Any) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        run_id, _, seq = msg.header.frame_id.rpartition(":")
        with self._lock:
            self._records[run_id].append((int(seq), (now - stamp) / 1e6))
            self._last_labels = time.monotonic()

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith("seg_perception"):
                with self._lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics_time = time.monotonic()

    def target_up(self, image_topic: str) -> bool:
        """A target publishes labels and subscribes to images (seg_node: its model is loaded)."""
        return self.labels.get_publisher_count() > 0 and self.node.count_subscribers(image_topic) > 0

    def fresh_diagnostics(self, timeout: float) -> dict[str, str]:
        """The first /diagnostics received after now (empty after ``timeout`` without one)."""
        since, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.diagnostics_time > since:
                    return dict(self.diagnostics)
            time.sleep(0.02)
        return {}

    def take(self, run_id: str, quiet: float, timeout: float) -> list[tuple[int, float]]:
        """Records of ``run_id`` once no labels arrived for ``quiet`` s (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if time.monotonic() - self._last_labels >= quiet:
                    break
            time.sleep(0.02)
        with self._lock:
            return self._records.pop(run_id, [])

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.try_shutdown(context=self.context)


class PublisherProcess:
    """The publisher role in a child process, driven one phase at a time over its stdin."""

    def __init__(self, args: argparse.Namespace, log: IO[str]) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--role", "publisher",
                   "--size", f"{args.size[0]}x{args.size[1]}", "--qos", args.qos,
                   "--qos-depth", str(args.qos_depth), "--topic", args.topic,
                   "--buffers", str(args.buffers), "--match-timeout", str(args.match_timeout)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     text=True, env=_child_env())
        ready = self._reply(timeout=120)
        if not ready.get("ready"):
            raise RuntimeError(f"publisher did not start: {ready}")

    def _reply(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            return {"error": f"publisher gave no answer in {timeout:.0f} s (exit code {self.proc.poll()})",
                    "published": 0}
        return json.loads(line)

    def run(self, rate: float, duration: float, run_id: str, match_timeout: float) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"rate": rate, "duration": duration, "run_id": run_id}) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout=duration * 3 + match_timeout + 30)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def target_command(target: str, args: argparse.Namespace) -> list[str]:
    if target == "relay":
        return [sys.executable, str(Path(__file__).resolve()), "--role", "relay", "--topic", args.topic,
                "--qos", args.qos, "--qos-depth", str(args.qos_depth), "--relay-output", args.relay_output]
    params = [f"image_topic:={args.topic}", f"qos_reliability:={args.qos}", f"qos_depth:={args.qos_depth}"]
    if args.weights:
        params.append(f"weights:={Path(args.weights).resolve()}")
    params += args.node_param
    command = [sys.executable, "-m", "seg_perception.process", "--ros-args"]
    for param in params:
        command += ["-p", param]
    return command


def stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _tail(path: Path, lines: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def measure_target(
    target: str, args: argparse.Namespace, probe: Probe, publisher: PublisherProcess, log_dir: Path
) -> dict[str, Any]:
    """Start ``target``, warm it up, run the main phase and (if asked) the rate sweep, stop it."""
    log_path = log_dir / f"{target}.log"
    command = target_command(target, args)
    result: dict[str, Any] = {"command": " ".join(shlex.quote(c) for c in command), "log": str(log_path)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not probe.target_up(args.topic) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not probe.target_up(args.topic):
            result["error"] = f"{target} did not come up (exit code {proc.poll()})"
            return result
        result["startup_s"] = args.startup_timeout - (deadline - time.monotonic())
        counter = iter(range(10**6))

        def phase(rate: float, duration: float) -> dict[str, Any]:
            run_id = f"{target}-{rate:g}-{next(counter)}"
            before = probe.fresh_diagnostics(3.0) if target == "seg_node" else {}
            sent = publisher.run(rate, duration, run_id, args.match_timeout)
            if "error" in sent:
                raise RuntimeError(f"{run_id}: {sent['error']}")
            records = probe.take(run_id, quiet=args.quiet, timeout=args.grace)
            summary = summarize_phase(rate, sent, records)
            if target == "seg_node":
                node = diagnostics_delta(before, probe.fresh_diagnostics(3.0)) if before else {}
                summary["node_counters"] = node
                summary["drops_by_stage"] = attribute_drops(summary["published"], summary["received"], node)
            print(f"  {target} {rate:g} Hz x {duration:g} s: {_brief(summary)}", flush=True)
            return summary

        result["warmup"] = phase(args.rate, args.warmup)
        result["main"] = phase(args.rate, args.duration if target == "seg_node" else args.relay_duration)
        if target in args.sweep_targets and args.sweep:
            sweep = sweep_rates(lambda r: phase(r, args.sweep_duration), [r for r in args.sweep if r > args.rate])
            result["sweep"] = [result["main"], *sweep]
            result["highest_zero_drop_rate_hz"] = highest_zero_drop_rate(result["sweep"])
            # Nothing dropped at any rate tried: the true limit is higher than the sweep went.
            result["highest_is_lower_bound"] = all(p["drops"] == 0 for p in result["sweep"])
        return result
    except RuntimeError as exc:
        result["error"] = str(exc)
        return result
    finally:
        result["exit_code"] = stop(proc)
        result["log_tail"] = _tail(log_path)
        # The next target must not be mistaken for this one's lingering endpoints.
        deadline = time.monotonic() + 15
        while probe.target_up(args.topic) and time.monotonic() < deadline:
            time.sleep(0.1)


def _brief(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    lat_text = "no labels" if lat is None else f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
    return f"{summary['received']}/{summary['published']} back, {summary['drops']} dropped, {lat_text}"


def evaluate(report: dict[str, Any]) -> dict[str, Any]:
    """Our processing estimate (seg_node minus relay p50) and the targets."""
    out: dict[str, Any] = {}
    node = report["targets"].get("seg_node", {}).get("main")
    relay = report["targets"].get("relay", {}).get("main")
    if node and relay and node["latency_ms"] and relay["latency_ms"]:
        out["processing_p50_ms_estimate"] = node["latency_ms"]["p50"] - relay["latency_ms"]["p50"]
        out["transport_p50_ms"] = relay["latency_ms"]["p50"]
    if node and node["latency_ms"] and report["settings"]["size"] == [1024, 2048]:
        lat = node["latency_ms"]
        out["targets"] = {
            **{key: {"value": lat[key[:3]], "target": NODE_TARGETS[key], "met": lat[key[:3]] <= NODE_TARGETS[key]}
               for key in ("p50_ms", "p99_ms")},
            "drops": {"value": node["drops"], "target": 0, "met": node["drops"] == 0},
        }
    return out


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", default="bench", choices=("bench", "publisher", "relay"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=parse_size, default=(1024, 2048), help="HEIGHTxWIDTH of the rgb8 frames")
    p.add_argument("--rate", type=float, default=30.0, help="input rate of the main phase, Hz")
    p.add_argument("--duration", type=float, default=60.0, help="seg_node main phase, s")
    p.add_argument("--relay-duration", type=float, default=20.0, help="relay main phase, s")
    p.add_argument("--warmup", type=float, default=3.0, help="discarded phase before the main one, s")
    p.add_argument("--sweep", type=float, nargs="*", default=[45.0, 60.0, 90.0],
                   help="rates above --rate to try, ascending, stopping at the first with drops")
    p.add_argument("--sweep-duration", type=float, default=10.0)
    p.add_argument("--sweep-targets", nargs="*", default=["seg_node"], choices=TARGETS)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--relay-output", default="labels", choices=("labels", "image"),
                   help="relay answers with a mono8 labels-sized image (like seg_node) or echoes the image")
    p.add_argument("--weights", default=None, help="seg_node weights (sets -p weights:=PATH)")
    p.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra seg_node parameter, e.g. device:=cuda (repeatable)")
    p.add_argument("--qos", default="best_effort", choices=("best_effort", "reliable"),
                   help="input QoS of publisher, relay and seg_node (seg_node ships best_effort)")
    p.add_argument("--qos-depth", type=int, default=5)
    p.add_argument("--fastdds-profile", type=Path, default=None,
                   help="Fast DDS XML profile for every process (e.g. config/fastdds_large_images.xml)")
    p.add_argument("--topic", default=IMAGE_TOPIC)
    p.add_argument("--buffers", type=int, default=4, help="rotating frames the publisher sends")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default 150 + pid %% 80)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="s to wait for the target's labels topic")
    p.add_argument("--match-timeout", type=float, default=30.0, help="s the publisher waits for a subscriber")
    p.add_argument("--quiet", type=float, default=0.5, help="s without labels that ends a phase")
    p.add_argument("--grace", type=float, default=5.0, help="most s to wait for late labels after a phase")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/node_latency_logs"))
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/node_latency.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "publisher":
        return run_publisher(args)
    if args.role == "relay":
        return run_relay(args)
    # `timeout` ends us with SIGTERM: unwind so the finally blocks stop the child processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Our own DDS island: loopback only, a domain no other test or node on this host uses.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id if args.domain_id is not None else 150 + os.getpid() % 80)
    if args.fastdds_profile is not None:
        if not args.fastdds_profile.exists():
            raise SystemExit(f"--fastdds-profile {args.fastdds_profile} does not exist")
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(args.fastdds_profile.resolve())
    args.log_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema": "node_latency/1",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": _machine(),
        "settings": {"size": list(args.size), "rate_hz": args.rate, "duration_s": args.duration,
                     "relay_duration_s": args.relay_duration, "sweep_hz": args.sweep,
                     "sweep_duration_s": args.sweep_duration, "qos": args.qos, "qos_depth": args.qos_depth,
                     "relay_output": args.relay_output, "node_params": args.node_param, "weights": args.weights,
                     "ros_domain_id": os.environ["ROS_DOMAIN_ID"],
                     "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "(default transports)"),
                     "rmw": os.environ.get("RMW_IMPLEMENTATION", "(default)")},
        "targets": {},
    }
    probe = Probe()
    with open(args.log_dir / "publisher.log", "w") as publisher_log:
        publisher = PublisherProcess(args, publisher_log)
        try:
            for target in args.targets:
                print(f"{target}:", flush=True)
                report["targets"][target] = measure_target(target, args, probe, publisher, args.log_dir)
                report.update(evaluate(report))
                _write(report, args.out)
        finally:
            publisher.close()
            probe.close()
    print(json.dumps({k: report[k] for k in report if k not in ("targets",)}, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0 if all("error" not in t for t in report["targets"].values()) else 1


def _machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
