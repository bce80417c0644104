"""The Ray path (--ray, generate_on_ray) on a real local Ray instance against the fake LM
server: exactly N, both files aligned, resume, a worker killed mid-run, the driver killed with
SIGKILL, a task with two engines (each server gets only its stages' calls), a local run on a machine an old Ray session left its address on, and the one-line errors. Marked `ray` (needs the 'ray' extra): `python -m pytest -m ray`.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, outputs, read_jsonl, run_cli
from fake_lm import FakeServer
from test_several_engines import is_assistant_call, two_engines
from test_task import write_task

OUT = "output/public/examples/chit_chat"
# Ray's node address is then 127.0.0.1, not the machine's (Ray's default off Windows and macOS); set
# before ray is imported, and inherited by every CLI run, so no test's Ray listens beyond loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
DEAD_ADDRESS = "127.0.0.1:9"  # the discard port: nothing of Ray's answers there


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module; yields the address a CLI run joins it by."""
    ray = pytest.importorskip("ray")
    # The workers import chitchat_gen: from the install in CI, from the checkout when run from it.
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), old_path]))
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # "local": never a cluster already running
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    os.environ.pop("PYTHONPATH") if old_path is None else os.environ.update(PYTHONPATH=old_path)


def engine_flags(server):
    return ["--engine", "openai", "--base-url", server.url, "--model", "granite4:3b"]


def scenario_calls(server) -> int:
    """Conversations the server saw started: each begins with one lm/scenario call."""
    # .get: a worker killed mid-request leaves the server an empty body
    return sum(1 for body in server.chat_requests() if "short scenarios" in body.get("messages", [{}])[0].get("content", ""))


def assert_aligned(task_dir, n):
    final, formatted = outputs(task_dir)
    ids = [record["conversation_id"] for record in final]
    assert len(ids) == n and len(set(ids)) == n
    assert ids == [record["conversation_id"] for record in formatted]
    return ids


@pytest.mark.ray
def test_cli_on_ray_writes_exactly_n_aligned_and_starts_no_conversation_beyond_n(cluster, task_dir):
    with FakeServer(latency=0.01, slots=8) as server:
        result = run_cli("-n", 30, "--restart", "--quiet", "--seed", 1, "--concurrency", 12,
                         "--ray", cluster, "--ray-workers", 3, *engine_flags(server), cwd=task_dir)
        assert result.returncode == 0, result.stderr
        assert_aligned(task_dir, 30)
        assert scenario_calls(server) == 30  # nothing dropped here, so nothing started beyond N
        assert f"30 accepted, 0 dropped, {len(server.chat_requests())} LM calls" in result.stdout
    card = (task_dir / OUT / "README.md").read_text()
    assert "| conversations | 30 |" in card and "--ray" in card  # the card, with the command that made it


@pytest.mark.ray
def test_resume_on_ray_adds_exactly_the_missing_ones(cluster, task_dir):
    with FakeServer(latency=0.01, slots=8) as server:
        first = run_cli("-n", 10, "--restart", "--quiet", "--ray", cluster, *engine_flags(server), cwd=task_dir)
        assert first.returncode == 0, first.stderr
        before = assert_aligned(task_dir, 10)
        started = scenario_calls(server)
        again = run_cli("-n", 25, "--quiet", "--ray", cluster, *engine_flags(server), cwd=task_dir)
        assert again.returncode == 0, again.stderr
        assert assert_aligned(task_dir, 25)[:10] == before
        assert scenario_calls(server) - started == 15
        assert "15 accepted (+10 from earlier runs)" in again.stdout


@pytest.mark.ray
def test_two_engines_on_ray_each_server_gets_only_its_stages_calls_and_a_resume_keeps_both(cluster, task_dir):
    """Each worker builds both engines' clients: the strong server sees only assistant calls, the
    figures per engine in runs.jsonl are each server's requests (no faults here), and a resume adds to both."""
    with FakeServer(latency=0.01, slots=8) as cheap, FakeServer(latency=0.01, slots=8, models=["big-model"]) as strong:
        write_task(task_dir, two_engines(cheap.url, strong.url))
        flags = ["--quiet", "--seed", 1, "--concurrency", 4, "--ray", cluster, "--ray-workers", 2]
        for n, restart in ((2, ["--restart"]), (4, [])):
            before = {"default": len(cheap.chat_requests()), "strong": len(strong.chat_requests())}
            done = run_cli("-n", n, *restart, *flags, cwd=task_dir)
            assert done.returncode == 0, done.stderr
            assert strong.chat_requests() and all(is_assistant_call(body) for body in strong.chat_requests())
            assert cheap.chat_requests() and not any(is_assistant_call(body) for body in cheap.chat_requests())
            assert all(body["model"] == "big-model" for body in strong.chat_requests())
            entry = read_jsonl(task_dir / OUT / "runs.jsonl")[-1]
            calls = {"default": len(cheap.chat_requests()) - before["default"],
                     "strong": len(strong.chat_requests()) - before["strong"]}
            assert {name: used["calls"] for name, used in entry["engines"].items()} == calls
            assert entry["calls"] == sum(calls.values()) and calls["strong"] > 0
            assert entry["engines"]["strong"]["stages"] == ["lm/assistant/naive"]
    assert len(read_jsonl(task_dir / OUT / "runs.jsonl")) == 2
    assert_aligned(task_dir, 4)


@pytest.mark.ray
def test_a_worker_killed_mid_run_loses_only_its_conversations(cluster, task_dir):
    import ray

    from chitchat_gen import generate_on_ray, load_task

    with FakeServer(latency=0.05, slots=16) as server:
        task = load_task(task_dir / "task.yaml", engine="openai", base_url=[server.url], model="granite4:3b")
        stats, records, killed = {}, [], []
        for record in generate_on_ray(task, 40, concurrency=8, stats=stats):
            records.append(record)
            if len(records) == 10:  # one worker (one per node by default): kill it, a fresh one takes over
                names = [name for name in ray.util.list_named_actors() if name.startswith("chitchat_gen-")]
                killed.append(names[0])
                ray.kill(ray.get_actor(names[0]))
    assert killed
    ids = [record["conversation_id"] for record in records]
    assert len(ids) == 40 and len(set(ids)) == 40 and stats["accepted"] == 40
    lost = stats["dropped"]["Ray worker lost (run again)"]
    assert lost >= 1  # the killed worker had conversations in flight; they were run again elsewhere
    assert 40 <= scenario_calls(server) <= 40 + lost  # a lost one may die before its first call
    assert stats["calls"] <= len(server.chat_requests())  # the lost conversations' calls are not counted


@pytest.mark.ray
def test_driver_killed_with_sigkill_then_run_again_gives_exactly_n(cluster, task_dir):
    with FakeServer(latency=0.05, slots=8) as server:
        args = ["-n", 60, "--quiet", "--concurrency", 8, "--ray", cluster, *engine_flags(server)]
        driver = subprocess.Popen([sys.executable, "-m", "chitchat_gen", *map(str, args)], cwd=task_dir,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        final = task_dir / OUT / "final_data.jsonl"
        while driver.poll() is None and (not final.exists() or len(final.read_text().splitlines()) < 10):
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        written = len(final.read_text().splitlines())
        assert written < 60, "the run finished before it was killed: nothing was tested"
        again = run_cli(*args, cwd=task_dir)
        assert again.returncode == 0, again.stderr
        assert_aligned(task_dir, 60)


@pytest.mark.ray
def test_an_address_nobody_answers_is_one_error_line_and_the_folder_is_untouched(task_dir):
    pytest.importorskip("ray")
    with FakeServer() as server:
        first = run_cli("-n", 3, "--restart", "--quiet", *engine_flags(server), cwd=task_dir)
        before = (task_dir / OUT / "final_data.jsonl").read_text()
        result = run_cli("-n", 5, "--restart", "--ray", "127.0.0.1:1", *engine_flags(server), cwd=task_dir)
    assert first.returncode == 0 and result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach the Ray cluster at 127.0.0.1:1") and "ray start --head" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (task_dir / OUT / "final_data.jsonl").read_text() == before


def test_without_the_ray_package_the_flag_says_how_to_install_it(task_dir):
    # Hides an installed ray the way a missing one looks: `import ray` raises ImportError.
    hide_ray = ("import sys; sys.modules['ray'] = None; from chitchat_gen.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
    with FakeServer() as server:
        result = subprocess.run([sys.executable, "-c", hide_ray, "-n", "2", "--ray", *engine_flags(server)],
                                cwd=task_dir, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert result.stderr == ("Error: --ray needs the ray package, which is not installed: "
                             f'pip install -e "{ROOT}[ray]"\n')  # a checkout, run from elsewhere
    assert not (task_dir / "output").exists()


def test_a_bad_ray_flag_value_is_one_error_line(task_dir):
    for flags, message in ((["--ray", "my cluster"], "Error: argument --ray: expected 'auto'"),
                           (["--ray", "--ray-workers", "0"], "Error: argument --ray-workers: expected a whole number >= 1"),
                           (["--ray-workers", "2"], "Error: argument --ray-workers: only means something with --ray")):
        result = run_cli("-n", 2, *flags, cwd=task_dir)
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def stale_ray_session():
    """The environment of a machine where an old Ray session left its address behind: Ray's temp
    folder (here our own, by RAY_TMPDIR, so a real /tmp/ray is never touched) holds the
    ray_current_cluster file of a head that is gone, as a head killed without `ray stop` leaves it,
    and RAY_ADDRESS names that dead address too. Yields (env for a subprocess, Ray's folder)."""
    pytest.importorskip("ray")
    # subtle: short, in /tmp, not pytest's tmp_path: Ray's socket paths go under it (108 bytes at most)
    temp = Path(tempfile.mkdtemp(prefix="ray-stale-", dir="/tmp"))
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text(DEAD_ADDRESS + "\n")
    yield {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(temp), "RAY_ADDRESS": DEAD_ADDRESS}, temp / "ray"
    shutil.rmtree(temp, ignore_errors=True)


def sessions(ray_folder) -> list:
    """The Ray instances started with this temp folder (each makes a session_* folder in it)."""
    return sorted(path.name for path in ray_folder.glob("session_2*"))


@pytest.mark.ray
def test_the_readme_ray_snippet_runs_whatever_an_old_ray_session_left(task_dir, stale_ray_session):
    env, ray_folder = stale_ray_session
    blocks = [block for block in re.findall(r"```py\n(.*?)```", (ROOT / "docs/scaling.md").read_text(), re.S)
              if "generate_on_ray" in block]  # other py blocks need other extras (the Hub's needs datasets)
    assert blocks, "docs/scaling.md has no py (Ray) snippet"
    for block in blocks:  # a fresh interpreter each: the snippet starts its own Ray instance
        result = subprocess.run([sys.executable, "-c", block], cwd=task_dir, capture_output=True, text=True,
                                env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "3 persona\n"  # the shipped task samples the persona first
    assert len(sessions(ray_folder)) == len(blocks)  # each started its own instance, in the folder given
    assert (ray_folder / "ray_current_cluster").read_text() == DEAD_ADDRESS + "\n"  # left as it was


@pytest.mark.ray
def test_ray_alone_starts_its_own_instance_whatever_an_old_ray_session_left(task_dir, stale_ray_session):
    env, ray_folder = stale_ray_session
    with FakeServer() as server:
        result = run_cli("-n", 3, "--restart", "--quiet", "--ray", *engine_flags(server), cwd=task_dir, env=env)
    assert result.returncode == 0, result.stderr
    assert_aligned(task_dir, 3)
    assert len(sessions(ray_folder)) == 1


@pytest.mark.ray
def test_ray_auto_joins_the_cluster_ray_address_names(cluster, task_dir, stale_ray_session):
    env, ray_folder = stale_ray_session
    with FakeServer() as server:
        result = run_cli("-n", 3, "--restart", "--quiet", "--ray", "auto", *engine_flags(server), cwd=task_dir,
                         env={**env, "RAY_ADDRESS": cluster})  # RAY_ADDRESS before the stale file, as in ray.init
    assert result.returncode == 0, result.stderr
    assert_aligned(task_dir, 3)
    assert sessions(ray_folder) == []  # it joined the module's instance, it started none


@pytest.mark.ray
def test_a_join_that_never_completes_fails_in_one_line_within_the_bound(task_dir):
    """An address that accepts TCP and never speaks Ray (a GCS gone behind a live port): the join is
    bounded (ray_executor.JOIN_SECONDS, lowered to 5 s here) and the folder stays untouched."""
    pytest.importorskip("ray")
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    port = silent.getsockname()[1]
    bounded = ("import sys, chitchat_gen.ray_executor as executor; executor.JOIN_SECONDS = 5; "
               "from chitchat_gen.cli import main; sys.exit(main(sys.argv[1:]))")
    try:
        with FakeServer() as server:
            first = run_cli("-n", 3, "--restart", "--quiet", *engine_flags(server), cwd=task_dir)
            before = (task_dir / OUT / "final_data.jsonl").read_bytes()
            result = subprocess.run([sys.executable, "-c", bounded, "-n", "5", "--restart", "--ray", f"127.0.0.1:{port}",
                                     *engine_flags(server)], cwd=task_dir, capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        silent.close()
    assert first.returncode == 0 and result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot join the Ray cluster at 127.0.0.1:{port}: no answer to Ray's handshake within 5 s: "
                      "check that it is the head's GCS port (HOST:6379, from a node of the cluster) or Ray Client's "
                      "(ray://HOST:10001), and that the cluster's nodes are reachable from here"], result.stderr
    assert (task_dir / OUT / "final_data.jsonl").read_bytes() == before


NODE_LOST = """
import json, sys
sys.path.insert(0, sys.argv[3])
import ray
from ray.cluster_utils import Cluster
from chitchat_gen import generate_on_ray, load_task

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address)
cluster.wait_for_nodes()
task = load_task(sys.argv[1], engine="openai", base_url=[sys.argv[2]], model="granite4:3b")
stats, ids, removed = {}, [], None
for record in generate_on_ray(task, 100, concurrency=8, workers=3, stats=stats):  # SPREAD: a worker a node
    ids.append(record["conversation_id"])
    if len(ids) == 20:  # a node lost mid-run, with the worker on it and its conversations in flight
        hosts = {actor["Address"]["NodeID"] for actor in ray._private.state.actors().values()
                 if (actor.get("Name") or "").startswith("chitchat_gen-") and actor["State"] == "ALIVE"}
        removed = next((node for node in nodes if node.node_id in hosts), None)
        if removed:
            cluster.remove_node(removed)
print(json.dumps({"ids": ids, "lost": stats["dropped"].get("Ray worker lost (run again)", 0), "removed": bool(removed),
                  "nodes": sum(1 for node in ray.nodes() if node["Alive"])}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.ray
def test_a_node_lost_mid_run_still_gives_exactly_n(task_dir):
    """A 3-node local cluster (ray.cluster_utils.Cluster), in its own process; a node with a worker removed mid-run."""
    pytest.importorskip("ray")
    with FakeServer(latency=0.02, slots=16) as server:
        done = subprocess.run([sys.executable, "-c", NODE_LOST, str(task_dir / "task.yaml"), server.url, str(ROOT)],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(outcome["ids"]) == 100 and len(set(outcome["ids"])) == 100
    assert outcome["removed"], "no worker was placed off the head node: nothing was tested"
    assert outcome["lost"] >= 1 and outcome["nodes"] == 2  # the node's conversations were run again elsewhere
