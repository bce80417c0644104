"""The viewer against real output folders: its HTTP endpoints on 127.0.0.1 (the CLI as a subprocess),
the static report, and (marker `browser`) the page itself in headless Chromium."""

import copy
import fcntl
import html
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest
import requests
from conftest import ROOT, read_jsonl, run_cli
from fake_lm import FakeServer
from test_several_engines import two_engines
from test_task import write_task

from chitchat_gen.gates import GATES

TASK = "public/examples/chit_chat"
CLEANED = next(g["label"] for g in GATES if g["name"] == "stage_direction")  # as the stage writes it
INJECTION = ("<script>document.documentElement.classList.add('pwned')</script>"
             "<img src=x onerror=\"document.documentElement.classList.add('pwned')\">")


@pytest.fixture
def output(task_dir, server):
    """A real output folder: two runs of the CLI, a record holding HTML, a bad line moved to rejected.jsonl."""
    assert run_cli("-n", 6, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    final = task_dir / "output" / TASK / "final_data.jsonl"
    record = copy.deepcopy(json.loads(final.read_text().splitlines()[0]))
    record["conversation_id"] = uuid.uuid4().hex
    next(s for s in record["steps"] if s["role"] == "user")["content"] = INJECTION
    next(s for s in record["steps"] if s["role"] == "assistant")["metadata"]["cleaned"] = [CLEANED]
    record["scores"] = {"coherence": 4, "persona": 3, "naturalness": 3, "closing": 5, "reason": "fine"}  # lm/judge's
    with open(final, "a") as out:
        out.write(json.dumps(record) + "\n" + '{"not a record\n')
    result = run_cli("-n", 8, "--base-url", server.url, "--quiet", cwd=task_dir)
    assert result.returncode == 0 and "rejected.jsonl" in result.stderr
    return task_dir / "output"


@pytest.fixture
def several(task_dir):
    """An output folder whose runs.jsonl holds a real run of two engines (the assistant on "strong",
    an OpenAI-style fake server), then the same run as an older version logged it (no "engines"),
    then one whose engine names and model hold HTML (runs.jsonl is data, not markup)."""
    with FakeServer() as cheap, FakeServer(models=["big-model"]) as strong:
        write_task(task_dir, two_engines(cheap.url, strong.url))
        done = run_cli("-n", 3, "--quiet", cwd=task_dir)
        assert done.returncode == 0, done.stderr
    runs_log = task_dir / "output" / TASK / "runs.jsonl"
    [run] = read_jsonl(runs_log)
    old = {key: value for key, value in run.items() if key != "engines"}
    hostile = {**run, "engines": {"default": run["engines"]["default"],
                                  INJECTION: {**run["engines"]["strong"], "model": INJECTION}}}
    with open(runs_log, "a") as out:
        out.write(json.dumps(old) + "\n" + json.dumps(hostile) + "\n")
    return task_dir / "output"


def many(folder, count):
    """A task folder holding `count` records (copies of the shipped seeds with their own ids), no run log."""
    seeds = [json.loads(line) for line in (ROOT / "seed_examples.jsonl").read_text().splitlines() if line.strip()]
    folder.mkdir(parents=True)
    with open(folder / "final_data.jsonl", "w") as out:
        for i in range(count):
            record = copy.deepcopy(seeds[i % len(seeds)])
            record["conversation_id"] = f"c{i}"
            out.write(json.dumps(record) + "\n")
    return seeds


@pytest.fixture
def viewer():
    """Start `python -m chitchat_gen view FOLDER --port 0`; yield a function of the folder returning its URL."""
    processes = []

    def start(folder):
        process = subprocess.Popen([sys.executable, "-m", "chitchat_gen", "view", str(folder), "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        processes.append(process)
        first = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", first)
        assert url, first + process.stderr.read()
        return url.group(0)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def test_tasks_show_runs_status_and_counts(output, viewer):
    tasks = requests.get(viewer(output) + "api/tasks").json()
    assert [t["task"] for t in tasks] == [TASK]
    task = tasks[0]
    assert task["conversations"] == 8 and task["rejected"] == 1 and task["status"] == "finished"
    assert [(r["wanted"], r["accepted"], r["status"]) for r in task["runs"]] == [(6, 6, "finished"), (1, 1, "finished")]
    assert {"final_data.jsonl", "formatted_output.jsonl", "runs.jsonl", "rejected.jsonl", "README.md"} <= set(task["files"])


def test_stats_and_conversations_match_the_file(output, viewer):
    url = viewer(output)
    records = [json.loads(line) for line in (output / TASK / "final_data.jsonl").read_text().splitlines()]
    stats = requests.get(url + "api/stats", params={"task": TASK}).json()
    turns = [sum(s["role"] == "assistant" for s in r["steps"]) for r in records]
    assert stats["turns"] == {str(k): turns.count(k) for k in sorted(set(turns))}
    assert stats["patterns"]["chit_chat/termination"] == 8 and "chit_chat/termination" in stats["termination"]
    assert stats["weights"]["chit_chat/follow_up"] == 0.35
    page = requests.get(url + "api/conversations", params={"task": TASK}).json()
    assert page["total"] == page["matched"] == 8
    assert [i["record"]["conversation_id"] for i in page["items"]] == [r["conversation_id"] for r in records][::-1]
    shown = requests.get(url + "api/conversations", params={"task": TASK, "q": "ONERROR"}).json()
    assert [i["line"] for i in shown["items"]] == [7]
    three = requests.get(url + "api/conversations", params={"task": TASK, "turns": 3, "order": "oldest"}).json()
    assert [i["line"] for i in three["items"]] == [n + 1 for n, t in enumerate(turns) if t == 3]
    rejected = requests.get(url + "api/rejected", params={"task": TASK}).json()
    assert rejected["matched"] == 1 and rejected["items"][0]["text"] == '{"not a record\n'


def test_pages_filters_and_search_over_a_larger_file(tmp_path, viewer):
    seeds = many(tmp_path / "out" / "big", 45)
    url = viewer(tmp_path / "out") + "api/conversations"
    pages = [requests.get(url, params={"task": "big", "page": n}).json() for n in range(3)]
    assert [len(p["items"]) for p in pages] == [20, 20, 5]
    assert [i["record"]["conversation_id"] for p in pages for i in p["items"]] == [f"c{i}" for i in range(44, -1, -1)]
    oldest = requests.get(url, params={"task": "big", "order": "oldest", "page": 2}).json()
    assert [i["line"] for i in oldest["items"]] == [41, 42, 43, 44, 45]
    pattern = "chit_chat/share_opinion"
    picked = [i for i in range(45) if any(s.get("content") == pattern for s in seeds[i % len(seeds)]["steps"]
                                           if s["role"] == "flow_controller")]
    found = requests.get(url, params={"task": "big", "pattern": pattern, "order": "oldest"}).json()
    assert found["matched"] == len(picked) and 0 < len(picked) < 45
    assert [i["line"] for i in found["items"]] == [i + 1 for i in picked][:20]
    word = seeds[0]["steps"][0]["content"].split()[-1].strip(".").upper()
    hits = requests.get(url, params={"task": "big", "q": word}).json()
    assert hits["matched"] == sum(word.lower() in json.dumps(seeds[i % len(seeds)]).lower() for i in range(45)) > 0
    assert requests.get(url, params={"task": "big", "q": "no such words here"}).json()["matched"] == 0


def test_a_growing_or_rewritten_file_is_followed(tmp_path, viewer):
    many(tmp_path / "out" / "t", 3)
    final = tmp_path / "out" / "t" / "final_data.jsonl"
    url = viewer(tmp_path / "out")
    assert requests.get(url + "api/tasks").json()[0]["conversations"] == 3
    lines = final.read_text().splitlines(keepends=True)
    with open(final, "a") as out:
        out.write(lines[0] + lines[1][:40])  # one more record, and a line still being written
    assert requests.get(url + "api/tasks").json()[0]["conversations"] == 4
    with open(final, "a") as out:
        out.write(lines[1][40:])
    assert requests.get(url + "api/tasks").json()[0]["conversations"] == 5
    final.write_text(lines[2].replace('"c2"', '"fresh"') * 6)  # --restart then a new run, bigger than before
    page = requests.get(url + "api/conversations", params={"task": "t"}).json()
    assert page["total"] == 6 and page["items"][0]["record"]["conversation_id"] == "fresh"


def test_a_held_lock_shows_the_run_as_running(tmp_path, viewer):
    many(tmp_path / "out" / "t", 1)
    url = viewer(tmp_path / "out") + "api/tasks"
    with open(tmp_path / "out" / "t" / ".lock", "w") as lock:
        lock.write("4242")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert (requests.get(url).json()[0]["status"], requests.get(url).json()[0]["pid"]) == ("running", "4242")
    assert requests.get(url).json()[0]["status"] == "no run logged"


def test_a_run_of_several_engines_is_served_with_each_engines_figures(several, viewer):
    [task] = requests.get(viewer(several) + "api/tasks").json()
    run, old, _ = task["runs"]
    assert list(run["engines"]) == ["default", "strong"] and "engines" not in old  # what the page reads
    assert sum(used["calls"] for used in run["engines"].values()) == run["calls"] > 0
    assert run["engines"]["strong"]["stages"] == ["lm/assistant/naive"]


def test_only_files_under_the_folder_are_served(output, viewer, tmp_path):
    (tmp_path / "secret.txt").write_text("hidden words")
    os.symlink(tmp_path / "secret.txt", output / TASK / "link.txt")
    url = viewer(output)
    assert requests.get(url + f"files/{TASK}/runs.jsonl").text.startswith('{"date"')
    for path in ("files/%2e%2e/secret.txt", "files/..%2fsecret.txt", f"files/{TASK}/link.txt", "files//etc/passwd",
                 "api/stats?task=..", "api/conversations?task=/etc"):
        response = requests.get(url + path)
        assert response.status_code == 403 and "hidden words" not in response.text, path
    # requests would normalise "..": send the path as written.
    connection = http.client.HTTPConnection(url.split("/")[2])
    connection.request("GET", "/files/../secret.txt")
    assert connection.getresponse().status == 403
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text((output / TASK / "final_data.jsonl").read_text())
    (output / "leak").mkdir()
    os.symlink(outside, output / "leak" / "final_data.jsonl")
    leak = next(t for t in requests.get(url + "api/tasks").json() if t["task"] == "leak")
    assert leak["conversations"] == 0 and leak["files"] == []
    assert requests.get(url + "api/conversations", params={"task": "leak"}).json()["items"] == []
    assert requests.get(url + "api/stats", params={"task": "public"}).status_code == 404
    assert requests.get(url + "api/conversations", params={"task": TASK, "page": "x"}).status_code == 400
    assert requests.get(url + "api/tasks", headers={"Host": "evil.example:80"}).status_code == 403
    assert requests.get(url + f"files/{TASK}/README.md").headers["Content-Type"].startswith("text/plain")


def test_the_static_report_inlines_everything_and_escapes_html(output, tmp_path):
    result = run_cli("view", output, "--html", tmp_path / "report.html", cwd=tmp_path)
    assert result.returncode == 0 and "8 conversations" in result.stdout
    page = (tmp_path / "report.html").read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert len(data["conversations"][TASK]) == 8 and data["tasks"][0]["rejected"] == 1
    assert "<script>document" not in page and "<img src=x" not in page  # inlined as \u003c


def test_mistakes_are_one_line_errors(tmp_path, viewer):
    missing = run_cli("view", "no-such-folder", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr == "Error: no-such-folder is not a folder: pass an output folder, e.g. 'output' (a run's --output-dir)\n"
    bad_port = run_cli("view", ".", "--port", "http", cwd=tmp_path)
    assert bad_port.returncode == 2 and bad_port.stderr.startswith("Error: argument --port") and "\n" not in bad_port.stderr[:-1]
    port = viewer(tmp_path).rsplit(":", 1)[1].strip("/")
    taken = run_cli("view", ".", "--port", port, cwd=tmp_path)
    assert taken.returncode == 1 and taken.stderr == f"Error: port {port} is in use: choose another with --port (0 picks a free one)\n"


# --- the page in a real browser ------------------------------------------------------------------

def chromium(*args, timeout=90):
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: apt-get install -y chromium (.ci/run installs it)"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                             *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def check_page(dom: str) -> None:
    assert re.search(r'id="count"[^>]*data-total="8"', dom), "the conversation count is missing"
    assert re.search(r'<div class="bubble assistant"><span class="who">assistant</span>Here is a friendly answer', dom)
    assert re.search(r'data-chart="Turns per conversation"><h3>[^<]*</h3><svg[^>]*><text', dom), "the turns chart has no SVG"
    assert "&lt;script&gt;document.documentElement.classList.add('pwned')&lt;/script&gt;&lt;img src=x" in dom
    assert not re.search(r"<html[^>]*pwned", dom), "the injected script ran"
    assert '<span class="score">coherence: 4</span>' in dom, "the judge's scores are not shown"
    assert f'<span class="cleaned">cleaned: {CLEANED}</span>' in dom, "what the quality gates cleaned is not shown"
    assert "data-engine=" not in dom and not re.search(r'<tr [^>]*class="(several|engines)"', dom), \
        "a run of one engine shows as before"


@pytest.mark.browser
def test_the_served_page_renders_in_chromium(output, viewer, tmp_path):
    url = viewer(output)
    check_page(chromium("--dump-dom", url))
    chromium(f"--screenshot={tmp_path / 'served.png'}", "--window-size=1280,900", url)
    assert (tmp_path / "served.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
def test_the_static_report_renders_in_chromium(output, tmp_path):
    assert run_cli("view", output, "--html", tmp_path / "report.html", cwd=tmp_path).returncode == 0
    check_page(chromium("--dump-dom", (tmp_path / "report.html").as_uri()))
    chromium(f"--screenshot={tmp_path / 'static.png'}", "--window-size=1280,900", (tmp_path / "report.html").as_uri())
    assert (tmp_path / "static.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
def test_a_run_of_several_engines_names_each_model_and_its_figures_in_chromium(several, viewer):
    run, _, _ = read_jsonl(several / TASK / "runs.jsonl")
    default, strong = run["engines"]["default"], run["engines"]["strong"]
    dom = chromium("--dump-dom", viewer(several))
    cells = re.findall(r'<td class="prose" data-label="engine / model">(.*?)</td>', dom)
    assert cells[:2] == [f"default: ollama / {default['model']}; strong: openai / big-model",
                         f"ollama / {default['model']}"]  # the older line: as before, no line per engine
    lines = dict(re.findall(r'<div data-engine="([^"]*)">(.*?)</div>', dom))
    assert lines["strong"].startswith("<b>strong</b> · openai / big-model · stages: lm/assistant/naive · "
                                      f"{strong['calls']} LM calls · ")
    assert f" · {default['calls']} LM calls · {default['prompt_tokens'] + default['completion_tokens']:,} tokens (" \
        in lines["default"] and "lm/scenario" in lines["default"]
    assert len(re.findall(r'<tr [^>]*class="engines"', dom)) == len(re.findall(r'<tr [^>]*class="several"', dom)) == 2
    assert html.escape(INJECTION, quote=False) in cells[2] and not re.search(r"<html[^>]*pwned", dom)


# Added to a copy of the static report by the layout test: once the page has drawn, it writes what
# the layout looks like onto <html>, where --dump-dom shows it.
LAYOUT_PROBE = """<script>
setTimeout(() => {
  const labels = [...document.querySelectorAll("[data-chart] svg text.label")].map(text => ({
    full: text.querySelector("title").textContent, left: text.getBBox().x,
    shown: [...text.querySelectorAll("tspan")].map(line => line.textContent).join(" ")}));
  const seeds = [...document.querySelectorAll("#runs td[data-label=seed]")].map(cell => cell.textContent);
  const runs = document.querySelector("#runs"), table = runs.querySelector("table");
  document.documentElement.dataset.layout = JSON.stringify(
    {scrollWidth: document.documentElement.scrollWidth, width: window.innerWidth, labels, seeds,
     runsOverflow: table.getBoundingClientRect().right - runs.getBoundingClientRect().right});
}, 1500);
</script>"""
DROP = "lm/user/guided: user message: fails the closing check"


@pytest.mark.browser
@pytest.mark.parametrize("width", [600, 1200, 1400])
def test_the_page_fits_the_window_and_shows_labels_and_seeds_in_full(output, tmp_path, width):
    runs_log = output / TASK / "runs.jsonl"
    runs = [json.loads(line) for line in runs_log.read_text().splitlines()]
    runs[0]["dropped"] = {DROP: 7, "lm/scenario: scenario: copies a seed or an earlier scenario": 3, "LM call failed": 1}
    runs[0]["model"] = "/home/someone/models/granite-3.1-8b-instruct-Q4_K_M.gguf"  # --model PATH names it in full
    runs_log.write_text("".join(json.dumps(run) + "\n" for run in runs))
    assert run_cli("view", output, "--html", tmp_path / "report.html", cwd=tmp_path).returncode == 0
    page = (tmp_path / "report.html").read_text().replace("</body>", LAYOUT_PROBE + "</body>")
    (tmp_path / "probed.html").write_text(page)
    dom = chromium("--dump-dom", f"--window-size={width},900", (tmp_path / "probed.html").as_uri())
    layout = json.loads(html.unescape(re.search(r'<html[^>]* data-layout="([^"]*)"', dom).group(1)))
    assert layout["width"] == width and layout["scrollWidth"] <= width  # nothing runs off to the side
    assert layout["runsOverflow"] <= 0  # the runs table, a long model path in it, inside its box
    drops = [label for label in layout["labels"] if label["full"] in runs[0]["dropped"]]
    assert len(drops) == 3 and any(label["full"] == DROP for label in drops)
    for label in layout["labels"]:
        assert label["shown"] == label["full"] and label["left"] >= 0, label  # wrapped, not cut
    card = (output / TASK / "README.md").read_text()
    assert all(isinstance(run["seed"], int) for run in runs)
    assert layout["seeds"] == [str(run["seed"]) for run in runs]
    assert all(f"| {run['seed']} |" in card for run in runs)  # the card and the page show the same seeds
    chromium(f"--screenshot={tmp_path / f'{width}.png'}", f"--window-size={width},1600", (tmp_path / "report.html").as_uri())
    assert (tmp_path / f"{width}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
