"""Load `seqgraph serve` over loopback: start the server on a free 127.0.0.1 port (its own
process, so clients and server do not share one interpreter lock), send N concurrent clients
x M requests of one input each (a keep-alive httpx client each), and report requests/s, p50
and p99 latency, errors, and the machine (CPU model, cores). Bounded in count and time.

    python tools/serve_load.py RUN_DIR [--clients 8] [--requests 200] [--inputs 1]
                               [--time-limit 120] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The food was great and the staff were friendly.",
    "Worst phone I have ever bought, it broke in a week.",
    "not bad at all",
    "I would not go back.",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: str, port: int, deadline: float) -> subprocess.Popen:
    """`seqgraph serve` in its own process, once /health answers."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "seqgraph", "serve", run_dir, "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"seqgraph serve exited with code {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("seqgraph serve did not answer /health in time")


def client(url: str, number: int, requests: int, inputs: int, deadline: float) -> tuple:
    """(latencies in seconds, errors) of one client's requests, sent one after another."""
    latencies, errors = [], 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            batch = [TEXTS[(number + i + j) % len(TEXTS)] for j in range(inputs)]
            start = time.perf_counter()
            try:
                answer = http.post("/predict", json={"inputs": batch})
                ok = answer.status_code == 200 and len(answer.json()["outputs"]) == inputs
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--clients", type=int, default=8, choices=range(1, 65), metavar="1..64")
    parser.add_argument("--requests", type=int, default=200, help="per client (at most 10000)")
    parser.add_argument("--inputs", type=int, default=1, help="inputs a request")
    parser.add_argument("--time-limit", type=float, default=120, help="seconds in all")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = parser.parse_args()
    requests = max(1, min(args.requests, 10_000))
    deadline = time.monotonic() + args.time_limit
    port = free_port()
    server = start_server(args.run_dir, port, deadline)
    url = f"http://127.0.0.1:{port}"
    try:
        client(url, 0, 20, args.inputs, deadline)  # warm: compile the plan for these shapes
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(
                pool.map(
                    lambda n: client(url, n, requests, args.inputs, deadline), range(args.clients)
                )
            )
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=10)
    latencies = [x for found, _ in results for x in found]
    report = {
        "clients": args.clients,
        "requests": len(latencies),
        "inputs_per_request": args.inputs,
        "errors": sum(errors for _, errors in results),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['requests']} requests ({args.clients} clients, {args.inputs} input(s) "
            f"each) in {seconds:.2f} s: {report['requests_per_s']} requests/s, p50 "
            f"{report['p50_ms']} ms, p99 {report['p99_ms']} ms, {report['errors']} errors; "
            f"{report['cpu']}, {report['cores']} cores"
        )
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
