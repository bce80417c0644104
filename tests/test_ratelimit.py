"""Load control (chitchat_gen/ratelimit.py): routing, the adaptive limit, pacing and health, as units;
then the three cases of issue 12 against the fake server through the real CLI, asserting counts."""

import heapq

import pytest
from conftest import outputs, run_cli
from fake_lm import FakeServer
from test_engines import free_port_url

from chitchat_gen import ratelimit as load
from chitchat_gen.preflight import check_engine
from chitchat_gen.ratelimit import make_pool
from chitchat_gen.retry import backoff
from chitchat_gen.task import load_task

A, B = "http://a:1", "http://b:1"


def endpoint(pool, url=A):
    return next(e for e in pool.endpoints if e["url"] == url)


def test_calls_go_where_they_finish_soonest():
    # Virtual time: 24 calls always in flight over two endpoints, one 4x slower.
    pool, latency = load.Pool([A, B], concurrency=24), {A: 0.1, B: 0.4}
    now, running, calls = 0.0, [], {A: 0, B: 0}
    for i in range(24):
        ticket = pool.acquire()
        heapq.heappush(running, (now + latency[ticket["url"]], i, ticket))
    for i in range(24, 3000):
        now, _, ticket = heapq.heappop(running)
        pool.release(ticket, "ok", status=200, seconds=latency[ticket["url"]])
        calls[ticket["url"]] += 1
        ticket = pool.acquire()
        heapq.heappush(running, (now + latency[ticket["url"]], i, ticket))
    assert calls[A] > 3 * calls[B] > 0


def test_an_endpoint_not_yet_measured_gets_a_call():
    pool = load.Pool([A, B], concurrency=4)
    pool.release(pool.acquire(), "ok", status=200, seconds=0.5)
    assert pool.acquire()["url"] == B


def test_a_burst_of_slow_downs_halves_the_limit_once_then_it_grows_back():
    pool = load.Pool([A], concurrency=8)
    tickets = [pool.acquire() for _ in range(8)]
    assert pool.acquire(timeout=0) is None  # 8 in flight: the limit is full
    for ticket in tickets[:5]:
        pool.release(ticket, "busy", status=503)
    assert endpoint(pool)["limit"] == 4  # five answers of one burst: one halving
    for ticket in tickets[5:]:
        pool.release(ticket, "ok", status=200, seconds=0.1)
    for _ in range(20):
        pool.release(pool.acquire(), "ok", status=200, seconds=0.1)
    assert endpoint(pool)["limit"] > 4


def test_near_the_level_of_the_last_slow_down_the_limit_grows_slowly():
    pool = load.Pool([A], concurrency=8)
    e = endpoint(pool)
    e["limit"] = 4.0
    pool.release(pool.acquire(), "busy", status=503)  # a full queue: acted on at once
    assert (e["limit"], e["ceiling"]) == (2.0, 4.0)
    successes = 0
    while e["limit"] < 3:
        pool.release(pool.acquire(), "ok", status=200, seconds=0.1)
        successes += 1
    assert successes <= 3  # about +1 per `limit` successes, far below the ceiling
    while e["limit"] < 4:
        pool.release(pool.acquire(), "ok", status=200, seconds=0.1)
        successes += 1
    assert successes - 3 >= 2 * load.SLOW_PROBE  # the last step, to where it broke, is SLOW_PROBE x slower


def test_a_429_paces_the_endpoint_at_the_rate_that_got_through_and_pauses_it():
    pool = load.Pool([A], concurrency=32)
    for _ in range(12):
        pool.release(pool.acquire(), "ok", status=200, seconds=0.01)
    for ticket in [pool.acquire() for _ in range(load.BUSY_IN)]:
        pool.release(ticket, "busy", status=429, retry_after=30)
    e = endpoint(pool)
    assert e["requests"]["rate"] == 12
    assert pool.acquire(timeout=0) is None  # paused for Retry-After
    e["pause_until"] = 0.0
    e["requests"]["level"] = 1.0
    assert pool.acquire(timeout=0) is not None
    assert pool.acquire(timeout=0) is None  # the next one waits for its token (1/12 s)


def test_a_sporadic_429_is_waited_out_but_neither_halves_the_limit_nor_sets_a_pace():
    # A gateway that answers one call in ten with 429 whatever the pace: slowing down would not help.
    pool = load.Pool([A], concurrency=32)
    e = endpoint(pool)
    for i in range(200):
        ticket = pool.acquire(timeout=0)
        if i % 10 == 9:
            pool.release(ticket, "busy", status=429, retry_after=0)
        else:
            pool.release(ticket, "ok", status=200, seconds=0.01)
    assert (e["limit"], e["requests"]["rate"]) == (32.0, None)
    pool.release(pool.acquire(timeout=0), "busy", status=429, retry_after=5)  # still waited out when it asks
    assert e["pause_until"] > load.time.monotonic() + 4


def test_the_users_max_rpm_paces_calls():
    pool = load.Pool([A], concurrency=32, max_rpm=60)  # one call a second
    assert pool.acquire(timeout=0) is not None
    assert pool.acquire(timeout=0) is None


def test_openai_rate_headers_set_the_pace_and_a_zero_remaining_waits_for_the_reset():
    pool = load.Pool([A], concurrency=32)
    pool.release(pool.acquire(), "ok", status=200, seconds=0.1,
                 headers={"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": "2s", "x-ratelimit-limit-tokens": "60000"})
    e = endpoint(pool)
    assert e["requests"]["rate"] == 10 and e["tokens"]["rate"] == 1000
    assert 1.5 < e["pause_until"] - load.time.monotonic() <= 2


def test_a_failing_endpoint_is_taken_out_then_probed_with_one_call():
    pool = load.Pool([A, B], concurrency=8)
    for _ in range(3):
        ticket = pool.acquire()
        while ticket["url"] != A:  # park calls on B until A is picked
            ticket = pool.acquire()
        pool.release(ticket, "failed", status=500)
    e = endpoint(pool)
    assert e["down_until"] > load.time.monotonic()
    assert all(pool.acquire()["url"] == B for _ in range(3))
    e["down_until"] = 0.0  # its time out is over
    probe = pool.acquire()
    assert probe["url"] == A
    assert pool.acquire()["url"] == B  # one probe at a time
    pool.release(probe, "ok", status=200, seconds=0.01)
    assert e["cooldown"] == 0 and pool.acquire()["url"] == A  # back in rotation


def test_with_every_endpoint_out_calls_still_go_to_the_one_due_back_first():
    pool = load.Pool([A, B], concurrency=8)
    for url, due in ((A, 50.0), (B, 10.0)):
        endpoint(pool, url).update(down_until=load.time.monotonic() + due, cooldown=due)
    assert pool.acquire(timeout=0)["url"] == B


def test_props_total_slots_start_the_limit():
    with FakeServer(slots=6, props=True) as server:
        task = {"type": "openai", "model": None, "base_urls": [server.url], "api_key": None, "timeout": 5,
                "concurrency": 40, "max_rpm": None, "max_tpm": None}
        engine = check_engine(task)
        assert engine["slots"] == {server.url: 6}
        assert make_pool(engine).endpoints[0]["limit"] == 6


# --- the three cases of issue 12, through the CLI -----------------------------------------

def summary_counts(stdout):
    line = next(line for line in stdout.splitlines() if " accepted" in line)
    return int(line.split(" accepted")[0].split()[-1]), int(line.split(", ")[1].split()[0])


def test_uneven_servers_the_faster_one_takes_most_calls(task_dir):
    with FakeServer(latency=0.01, slots=4) as fast, FakeServer(latency=0.04, slots=4) as slow:
        result = run_cli("--engine", "openai", "-n", 12, "--base-url", fast.url, "--base-url", slow.url,
                         "--concurrency", 16, "--quiet", cwd=task_dir)
        assert result.returncode == 0, result.stderr
        assert len(fast.chat_requests()) > 2 * len(slow.chat_requests()) > 0


def test_a_rate_limited_api_drops_nothing_and_mostly_waits_instead_of_hitting_429(task_dir):
    with FakeServer(rate=30, latency=0.01) as api:
        result = run_cli("--engine", "openai", "-n", 12, "--base-url", api.url, "--quiet", cwd=task_dir)
        assert result.returncode == 0, result.stderr
        assert summary_counts(result.stdout) == (12, 0)
        assert api.answered[429] <= 0.1 * sum(api.answered.values())
    assert "| 429/503 answers |" in (task_dir / "output/public/examples/chit_chat/README.md").read_text()


def test_a_small_ollama_queue_drops_nothing(task_dir):
    with FakeServer(latency=0.01, slots=1, queue=2) as ollama:
        result = run_cli("-n", 5, "--concurrency", 8, "--base-url", ollama.url, "--quiet", cwd=task_dir)
        assert result.returncode == 0, result.stderr
        assert summary_counts(result.stdout) == (5, 0)
        assert ollama.answered[503] <= 0.1 * sum(ollama.answered.values())
        assert f"{ollama.url}: " in result.stdout and "x 503" in result.stdout  # per-endpoint summary


def test_an_endpoint_dead_at_start_is_skipped_and_the_run_completes(task_dir):
    with FakeServer(latency=0.005) as alive:
        dead = free_port_url()
        result = run_cli("-n", 4, "--base-url", f"{alive.url},{dead}", "--quiet", cwd=task_dir)
        assert result.returncode == 0, result.stderr
        assert f"note: cannot reach Ollama at {dead}: the other servers carry the run" in result.stderr
        assert len(outputs(task_dir)[0]) == 4


def test_every_endpoint_dead_at_start_is_one_error(task_dir):
    result = run_cli("-n", 4, "--base-url", f"{free_port_url()},{free_port_url()}", "--quiet", cwd=task_dir)
    assert result.returncode == 1 and result.stderr.startswith("Error: cannot reach Ollama")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--max-rpm", "--max-tpm"])
def test_client_side_limits_are_flags_and_task_keys(task_dir, flag):
    assert run_cli(flag, 0, cwd=task_dir).returncode == 2
    key = flag[2:].replace("-", "_")
    assert load_task(task_dir / "task.yaml", **{key: 600})["engine"][key] == 600


def test_a_lone_endpoint_that_fails_some_calls_keeps_its_full_limit():
    # Taking an endpoint out routes around it; with nobody to route to, one probe at a time only stalls.
    pool = load.Pool([A], concurrency=8)
    for _ in range(3):
        pool.release(pool.acquire(), "failed", status=500)
    assert endpoint(pool)["cooldown"]
    assert all(pool.acquire(timeout=0) is not None for _ in range(8))


def test_a_failed_call_is_retried_soon_while_its_endpoint_answers_others():
    pool = load.Pool([A], concurrency=8)
    ticket = pool.acquire()
    pool.release(ticket, "failed", status=500)
    assert not pool.answering(ticket)
    assert max(backoff(1, pool.answering(ticket)) for _ in range(50)) > 0.05  # nothing answered: wait longer
    pool.release(pool.acquire(), "ok", status=200, seconds=0.1)
    assert pool.answering(ticket)
    assert all(backoff(1, pool.answering(ticket)) <= 0.05 for _ in range(50))  # a sporadic fault


def test_timeouts_show_on_the_progress_line_and_a_silent_fleet_is_named():
    pool = load.Pool([A], concurrency=4, timeout=0.01)
    ticket = pool.acquire()
    pool.release(ticket, "timeout")
    assert "NOT ANSWERING (1 timed out after 0.01s)" in load.describe(pool.report())
    assert pool.silent() is None  # one timeout may be bad luck
    load.time.sleep(0.03)
    pool.release(pool.acquire(), "timeout")
    assert "2 calls to http://a:1 timed out after 0.01 s each" in pool.silent()
    pool.release(pool.acquire(), "busy", status=429)
    assert pool.silent() is None and "NOT ANSWERING" not in load.describe(pool.report())  # an answer


def test_a_call_waiting_long_shows_on_the_progress_line_with_the_timeout():
    pool = load.Pool([A], concurrency=4, timeout=120)
    ticket = pool.acquire()
    assert "longest wait" not in load.describe(pool.report())
    endpoint(pool)["sent"][id(ticket)] -= 95  # sent 95 s ago
    assert "longest wait 95s of 120s" in load.describe(pool.report())
    pool.release(ticket, "ok", status=200, seconds=95)
    assert "longest wait" not in load.describe(pool.report())
