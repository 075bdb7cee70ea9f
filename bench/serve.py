"""Serving against offline prediction: `cllmfs serve` under a bounded concurrent load on loopback, against the same
texts predicted in one `EntityExtractor.extract` call, on the same machine in the same run.

    python bench/serve.py                                  # the shipped NER prior on the default model, WNUT'17 types
    python bench/serve.py --run RUN --clients 16 --requests 20 --out bench/results/serve.json

Each of `--clients` concurrent clients sends `--requests` requests of one text each, one after another (the texts
are the first clients x requests WNUT'17 test sentences), so the server's micro-batcher has to merge concurrent
requests to fill the model's batches. Reported: sentences/s both ways and their ratio (target: serving at least
0.8x offline), the p50 and p95 latency of a request, and the share of texts with the same entities both ways (merged
batches hold other texts than the offline call's, so float rounding may flip a near tie). Both sides use the same
precision (`--dtype`) and the default threads; the offline call runs first, in this process, and its model is freed
before the server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_parallel import cpu_name, prior_run_folder  # noqa: E402


async def load(url: str, texts: list[str], clients: int) -> tuple[list[list[dict]], list[float], float]:
    """Every client sends its share of the texts one by one; returns the entities per text, latencies, seconds."""
    import httpx

    found: list[list[dict]] = [[] for _ in texts]
    latencies: list[float] = []

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for k in range(index, len(texts), clients):
            start = time.perf_counter()
            response = await http.post(f"{url}/extract", json={"texts": [texts[k]]}, timeout=600)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)
            found[k] = response.json()["entities"][0]

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        return found, latencies, time.perf_counter() - start


def spans(entities: list[dict]) -> list[tuple[int, int, str]]:
    return [(e["start"], e["end"], e["type"]) for e in entities]


def wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 600) -> None:
    import httpx

    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            sys.exit(f"serve.py: error: the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(1)
    sys.exit("serve.py: error: the server did not answer /health")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run folder (default: the shipped prior as one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="requests per client, one text each")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve.json")
    args = parser.parse_args()

    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.inference.generate import EntityExtractor

    work = Path(tempfile.mkdtemp(prefix="cllmfs_serve_"))
    run = args.run or prior_run_folder(work / "run")
    texts = [s.text for s in get_dataset("wnut17").load("test").sentences[: args.clients * args.requests]]
    extractor = EntityExtractor.from_run(run, dtype=args.dtype)
    start = time.perf_counter()
    offline = [[e.as_dict() for e in entities] for entities in extractor.extract(texts)]
    offline_seconds = time.perf_counter() - start
    del extractor
    gc.collect()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cllmfs_trainer.cli", "serve", "--run", str(run), "--port", str(port)]
    command += ["--dtype", args.dtype, "--max-wait-ms", str(args.max_wait_ms)]
    server = subprocess.Popen(command, env=dict(os.environ))
    try:
        wait_until_healthy(url, server)
        served, latencies, served_seconds = asyncio.run(load(url, texts, args.clients))
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies.sort()
    result = {
        "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "run": str(args.run) if args.run else "the shipped NER prior on the default model, WNUT'17 types",
        "dtype": args.dtype,
        "texts": len(texts),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "offline_sentences_per_s": round(len(texts) / offline_seconds, 2),
        "served_sentences_per_s": round(len(texts) / served_seconds, 2),
        "ratio": round(offline_seconds / served_seconds, 3),
        "latency_s": {
            "p50": round(statistics.median(latencies), 2),
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        },
        # Entities compared by offsets and type: their scores move in the last digits with the batch's other rows.
        "same_entities": round(sum(spans(a) == spans(b) for a, b in zip(offline, served)) / len(texts), 4),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
