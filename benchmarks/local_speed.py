"""How fast llama.cpp builds run the embedded model: tokens per second, builds side by side.

Each argument is the Python of a venv holding one llama-cpp-python build (portable, native, ...).
The builds take turns, round after round, so a busy machine slows them alike; the figures are
the median per build, and the ratio to the first build is what to quote.

    python benchmarks/local_speed.py .venv-portable/bin/python .venv-native/bin/python --rounds 5 [--threads 1]

Each round runs, in a fresh process per build: load SmolLM2-135M, read a ~300-token prompt
(prompt tokens/s), write 128 tokens at temperature 0 (generated tokens/s).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chitchat_gen.engines import _local_model_path  # noqa: E402

ONE_ROUND = """
import json, os, sys, time
from llama_cpp import Llama
import llama_cpp
threads = int(sys.argv[2]) or os.cpu_count() or 1
llm = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
prompt = " ".join(f"Line {i}: a retired teacher talks about birds, tea and the weather." for i in range(25))
llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)  # warm up
start = time.perf_counter()
read = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0)
read_s = time.perf_counter() - start
llm.reset()
start = time.perf_counter()
out = llm.create_chat_completion(messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                                 max_tokens=128, temperature=0, seed=1)
write_s = time.perf_counter() - start
print(json.dumps({"version": llama_cpp.__version__, "prompt_tps": read["usage"]["prompt_tokens"] / read_s,
                  "gen_tps": out["usage"]["completion_tokens"] / write_s}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pythons", nargs="+", help="the python of each venv to compare; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="llama.cpp threads; 0: every core, as the local engine does (1 is steadier on a busy machine)")
    args = parser.parse_args()
    model = _local_model_path(None)
    seen = {python: [] for python in args.pythons}
    for _ in range(args.rounds):
        for python in args.pythons:
            done = subprocess.run([python, "-c", ONE_ROUND, model, str(args.threads)], capture_output=True, text=True, timeout=600)
            if done.returncode:
                sys.exit(f"Error: {python} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
            seen[python].append(json.loads(done.stdout))
    base = None
    print("| build (python) | llama-cpp-python | prompt tokens/s | generated tokens/s | vs first |")
    print("| --- | --- | --- | --- | --- |")
    for python, rounds in seen.items():
        prompt = statistics.median(r["prompt_tps"] for r in rounds)
        gen = statistics.median(r["gen_tps"] for r in rounds)
        base = base or (prompt, gen)
        print(f"| {python} | {rounds[0]['version']} | {prompt:.0f} | {gen:.1f} | "
              f"prompt {prompt / base[0]:.2f}x, generation {gen / base[1]:.2f}x |")


if __name__ == "__main__":
    main()
