"""Live logs: lines a second and latency from a simulator's ``print`` to a WebSocket client.

The simulator is a small Python script in the task's input that prints
lines carrying ``time.time()``; the clients (JSON WebSocket,
``/ws/tasks/<id>/logs/?format=json``) note when each line arrives. Client
and machine run on this host, so their clocks agree.

* Throughput: the script prints as fast as it can; lines a second from its
  first line printed to the last one received.
* Latency: the script prints at a steady rate; percentiles of print →
  arrival, for one viewer and for a crowd of viewers of the same task.
* Memory: the web server's (daphne's) peak resident size during the runs,
  against its size before them.

Baseline, measured in the same run: the same script run here, its stdout
read straight from the pipe by this process, the least any live log can
cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from bench import harness
from bench.harness import result

TITLE = "Live logs"
NAME = "live_logs"

PRINTER = """\
import sys, time
count, rate, batch = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
start = time.time()
for i in range(count):
    print(i, repr(time.time()))
    if i % batch == batch - 1:
        sys.stdout.flush()
        if rate:  # keep the pace: wait until the next batch is due
            delay = start + (i + 1) / rate - time.time()
            if delay > 0:
                time.sleep(delay)
sys.stdout.flush()
"""


class Arrivals:
    """What one viewer received: per line, its number and print → arrival seconds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.numbers: list[int] = []
        self.first_printed: float | None = None
        self.last_arrival = 0.0
        self.frames = 0

    def take(self, text: str) -> None:
        now = time.time()
        self.frames += 1
        for line in text.splitlines():
            number, printed = line.split()
            printed_at = float(printed)
            if self.first_printed is None:
                self.first_printed = printed_at
            self.numbers.append(int(number))
            self.latencies.append(now - printed_at)
        self.last_arrival = now

    def rate(self) -> float:
        return len(self.numbers) / max(self.last_arrival - (self.first_printed or 0), 1e-9)

    def check(self, count: int) -> None:
        if self.numbers != list(range(count)):
            raise RuntimeError(
                f"Lines arrived out of order, twice or not at all ({len(self.numbers)} of {count})."
            )


# -- baseline: the pipe --------------------------------------------------------------


def read_pipe(count: int, rate: float, batch: int) -> Arrivals:
    """The script run here, its stdout read line by line as it comes."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "printer.py"
        script.write_text(PRINTER)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(count), str(rate), str(batch)], stdout=subprocess.PIPE
        )
        got = Arrivals()
        for raw in proc.stdout:
            got.take(raw.decode())
        proc.wait()
    got.check(count)
    return got


# -- Simdeck: a task and its WebSocket viewers ------------------------------------------


async def view(stack: harness.Stack, task_id: str, got: Arrivals, connected: asyncio.Event | None) -> None:
    import websockets

    url = stack.url.replace("http://", "ws://") + f"/ws/tasks/{task_id}/logs/?format=json&after=0-0"
    async with websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {stack.api_key}"},
        origin=stack.url,
        max_size=None,
        open_timeout=120,
    ) as ws:
        if connected:
            connected.set()
        async for message in ws:
            frame = json.loads(message)
            if frame["type"] == "lines":
                got.take("".join(text for stream, text in frame["parts"] if stream == "stdout"))
            elif frame["type"] == "end":
                return


def follow(stack: harness.Stack, viewers: int, count: int, rate: float, batch: int) -> list[Arrivals]:
    """Submit the script and follow it with ``viewers`` clients, all connected before it starts."""

    async def main() -> list[Arrivals]:
        got = [Arrivals() for _ in range(viewers)]
        # The task is created first so the viewers can name it; its input is
        # uploaded (and so it is queued) only once they are all connected.
        task_id = await asyncio.to_thread(submit_later.prepare)
        ready = [asyncio.Event() for _ in range(viewers)]
        watchers = [asyncio.create_task(view(stack, task_id, g, r)) for g, r in zip(got, ready, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 300)
        await asyncio.to_thread(submit_later.upload)
        await asyncio.wait_for(asyncio.gather(*watchers), 600)
        return got

    submit_later = _Submission(stack, count, rate, batch)
    got = asyncio.run(main())
    for g in got:
        g.check(count)
    return got


class _Submission:
    """A task created now and queued (its input uploaded) later."""

    def __init__(self, stack: harness.Stack, count: int, rate: float, batch: int):
        self.stack, self.count, self.rate, self.batch = stack, count, rate, batch

    def prepare(self) -> str:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("printer.py", PRINTER)
        self.data = buf.getvalue()
        body = {
            "simulator": "commands",
            "machine_group": self.stack.group_name,
            "input_files": ["printer.py"],
            "parameters": {"commands": [f"python3 printer.py {self.count} {self.rate} {self.batch}"]},
        }
        with harness.api_client(self.stack) as client:
            created = client.post("/api/v1/tasks", json=body)
            created.raise_for_status()
        self.upload_url = created.json()["upload_url"]
        return created.json()["id"]

    def upload(self) -> None:
        headers = {
            "X-Archive-Size": str(len(self.data)),
            "X-Content-SHA256": hashlib.sha256(self.data).hexdigest(),
            "Content-Type": "application/zip",
        }
        with harness.api_client(self.stack) as client:
            client.put(self.upload_url, content=self.data, headers=headers).raise_for_status()


class PeakRSS:
    """The largest resident size of a process, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.1):
        import psutil

        self.process = psutil.Process(pid)
        self.every = every
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stopped.wait(self.every):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def _web_server_pid(stack: harness.Stack) -> int:
    # The stack's first process starts the web server: one daphne here (see run()).
    import psutil

    (daphne,) = psutil.Process(stack._processes.procs[0].pid).children()
    return daphne.pid


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    fast_count = 20_000 if quick else 200_000
    paced_count, paced_rate, paced_batch = (1_000, 500, 5) if quick else (5_000, 1_000, 10)
    crowd = 10 if quick else 100

    pipe_fast = read_pipe(fast_count, 0, 100)
    pipe_paced = harness.percentiles(read_pipe(paced_count, paced_rate, paced_batch).latencies)

    # One web server process, so that its memory is the whole server's.
    with harness.Stack(machines=1, env={"SIMDECK_WEB_PROCESSES": "1"}) as stack:
        import psutil

        idle_rss = psutil.Process(_web_server_pid(stack)).memory_info().rss
        with PeakRSS(_web_server_pid(stack)) as rss:
            fast = follow(stack, 1, fast_count, 0, 100)[0]
            alone = harness.percentiles(follow(stack, 1, paced_count, paced_rate, paced_batch)[0].latencies)
            crowded = follow(stack, crowd, paced_count, paced_rate, paced_batch)
        crowd_latency = harness.percentiles([v for g in crowded for v in g.latencies])
        crowd_rate = min(g.rate() for g in crowded)

    pipe = "stdout read from the pipe"
    out = [
        result(
            NAME,
            "lines per second, print to client",
            "lines/s",
            fast.rate(),
            pipe_fast.rate(),
            pipe,
            note=f"{fast_count:,} lines printed as fast as possible; {fast.frames} frames",
            lower_is_better=False,
        )
    ]
    for key in ("p50", "p95", "p99"):
        out.append(
            result(
                NAME,
                f"latency {key}, 1 viewer",
                "ms",
                alone[key] * 1000,
                pipe_paced[key] * 1000,
                pipe,
                note=f"{paced_rate:g} lines/s in batches of {paced_batch}",
            )
        )
    for key in ("p50", "p95", "p99"):
        out.append(
            result(
                NAME,
                f"latency {key}, {crowd} viewers",
                "ms",
                crowd_latency[key] * 1000,
                pipe_paced[key] * 1000,
                pipe,
                note=f"all lines of all {crowd} viewers of one task",
            )
        )
    out.append(
        result(
            NAME,
            f"lines per second to the slowest of {crowd} viewers",
            "lines/s",
            crowd_rate,
            paced_rate,
            "rate printed",
            lower_is_better=False,
        )
    )
    out.append(
        result(
            NAME,
            "web server peak memory (RSS)",
            "MB",
            rss.peak / 2**20,
            idle_rss / 2**20,
            "the same process before the runs",
        )
    )
    return out


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
