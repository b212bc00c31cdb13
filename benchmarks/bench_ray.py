"""Ray Serve's overhead: 16 concurrent clients (the openai SDK's wire format over HTTP, one 256x256 built-in image
per request) against single-node `easel serve`, `easel serve --ray` with 1 model replica, and with 2 replicas on 2
logical GPUs; then a replica killed with kill -9 under that load, and the time until a new one serves. Beside
throughput and latency, the machine's busy CPU-seconds per image (server, Ray and the load together) and, before
the load, per second idle: on a machine whose cores the model fills, that is where any overhead shows.

On a 2-core machine two replicas share the same two cores: the 2-replica figure measures overhead, not speed-up.
Ray listens on every network interface, so this runs itself inside a loopback-only network namespace (as root).

    python benchmarks/bench_ray.py            # writes benchmarks/results/ray.json
"""

import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))

OUT = Path(__file__).parent / "results" / "ray.json"
PROMPT = "a large red circle on the left on a blue background"
CLIENTS, PER_CLIENT, ROUNDS = 16, 4, 2
INSIDE = "EASEL_BENCH_NAMESPACE"


def load(base: str, seed0: int) -> dict:
    """CLIENTS clients, each sending PER_CLIENT requests one after another; images/s and latency percentiles."""
    latencies: list[float] = []

    def client(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            for k in range(PER_CLIENT):
                started = time.perf_counter()
                r = http.post(f"{base}/v1/images/generations", json={
                    "prompt": PROMPT, "size": "256x256", "seed": seed0 + c * PER_CLIENT + k})
                r.raise_for_status()
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"images_per_s": len(latencies) / wall, "p50_s": statistics.median(latencies),
            "p95_s": latencies[int(0.95 * (len(latencies) - 1))]}


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has been busy (every process: server, Ray, and this load)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure(name: str, server) -> dict:
    with server:
        load(server.base, 10**6)  # warm: the replicas' first batches
        time.sleep(2)
        before = busy_cpu_s()
        time.sleep(5)
        idle = (busy_cpu_s() - before) / 5
        rounds = []
        for r in range(ROUNDS):
            before = busy_cpu_s()
            rounds.append(load(server.base, r * 10**4))
            rounds[-1]["cpu_s_per_image"] = (busy_cpu_s() - before) / (CLIENTS * PER_CLIENT)
        result = {k: round(statistics.median(x[k] for x in rounds), 3) for k in rounds[0]}
        result["idle_cpu_s_per_s"] = round(idle, 3)
        if name == "ray_2_replicas":
            result["replacement_s"] = replacement_time(server)
    print(name, result, flush=True)
    return result


def replacement_time(server) -> float:
    """kill -9 one replica while 16 clients load the server; seconds until a replica that did not exist before
    has made an image (the replacement serving), with every request of the load still answered."""
    from ray_server import replica_pids

    def served_by() -> set[str]:
        cluster = httpx.get(f"{server.base}/health", timeout=10).json()["engine"]["cluster"]
        return {rid for rid, stats in cluster["replicas"].items() if stats["jobs"]}

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(load, server.base, 5 * 10**5)
        time.sleep(2)
        before = served_by()
        os.kill(replica_pids("model-builtin")[0], signal.SIGKILL)
        killed = time.monotonic()
        while not served_by() - before:
            if busy.done():  # the load ended first: keep the new replica busy until it serves
                busy = pool.submit(load, server.base, 6 * 10**5)
            time.sleep(0.2)
        took = time.monotonic() - killed
        busy.result()
    return round(took, 1)


def main() -> None:
    from ray_server import RayServer
    from servers import ServerProcess, wait_healthy

    class Single(ServerProcess):
        def __enter__(self):
            wait_healthy(self.base)
            return self

        def __exit__(self, *exc):
            self.stop()

    home = Path(tempfile.mkdtemp(prefix="easel-bench-ray-"))
    gpus = {"EASEL_RAY_NUM_GPUS": "2", "EASEL_RAY_GPUS_PER_REPLICA": "1"}
    cpus = str(os.cpu_count())  # the one replica gets every core, as the single-node server does
    results = {
        "single": measure("single", Single(home / "single", env={"EASEL_UI": "0"})),
        "ray_1_replica": measure("ray_1_replica", RayServer(home / "ray1", {
            **gpus, "EASEL_RAY_REPLICAS": "1", "EASEL_RAY_CPUS_PER_REPLICA": cpus})),
        "ray_2_replicas": measure("ray_2_replicas", RayServer(home / "ray2", {
            **gpus, "EASEL_RAY_REPLICAS": "2", "EASEL_RAY_CPUS_PER_REPLICA": str(max(1, os.cpu_count() // 2))})),
    }
    single, one = results["single"], results["ray_1_replica"]
    report = {
        "workload": f"{CLIENTS} concurrent clients x {PER_CLIENT} requests, one 256x256 built-in image each "
                    f"(15 steps), median of {ROUNDS} rounds after a warm-up round",
        "cpus": os.cpu_count(), **results,
        "ray_1_replica_vs_single_throughput": round(one["images_per_s"] / single["images_per_s"], 3),
        "ray_1_replica_vs_single_p50": round(one["p50_s"] / single["p50_s"], 3),
        "ray_1_replica_vs_single_cpu_per_image": round(one["cpu_s_per_image"] / single["cpu_s_per_image"], 3),
        "note": "2 replicas share this machine's cores with each other and the ingress: overhead, not speed-up",
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if os.environ.get(INSIDE) != "1":
        if os.geteuid() != 0:
            sys.exit("bench_ray.py starts Ray, which listens on every interface: run it as root, so that it can put "
                     "itself in a loopback-only network namespace (unshare -n).")
        os.environ[INSIDE] = "1"
        sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                                 *sys.argv]).returncode)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("EASEL_HOST", "off")
    main()
