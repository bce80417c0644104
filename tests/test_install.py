"""Install advice fits how chitchat_gen was installed: a checkout, a pip install, a vendored copy.
Each is a real copy of the package on disk, run as a subprocess."""

import shutil
import subprocess
import sys

import tomllib
from conftest import ROOT

from chitchat_gen.install import EXTRAS

# The library hidden, whether or not this venv has the local extra: the advice shows.
HIDDEN = "import sys, runpy; sys.modules['xllamacpp'] = None; runpy.run_module('chitchat_gen', run_name='__main__')"


def error_line(cwd, pythonpath, model):
    model.write_bytes(b"GGUF")  # a model file, so the missing library is what is reported
    result = subprocess.run([sys.executable, "-c", HIDDEN, "--engine", "local", "--model", str(model), "-n", "1"],
                            cwd=cwd, capture_output=True, text=True,
                            env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def copy_package(folder):
    shutil.copytree(ROOT / "chitchat_gen", folder / "chitchat_gen", ignore=shutil.ignore_patterns("__pycache__"))


def test_a_checkout_is_told_to_install_its_extra_editable(task_dir):
    model = task_dir / "model.gguf"
    assert error_line(ROOT, ROOT, model) == 'Error: the local engine needs xllamacpp: pip install -e ".[local]"'
    assert error_line(task_dir, ROOT, model).endswith(f'pip install -e "{ROOT}[local]"')  # from elsewhere: its path


def test_a_pip_installed_copy_is_told_the_extras_packages(tmp_path, task_dir):
    site = tmp_path / "site"
    copy_package(site)
    info = site / "chitchat_gen-0.1.0.dist-info"  # what pip writes beside the package
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chitchat_gen\nVersion: 0.1.0\nProvides-Extra: local\n"
                                   'Requires-Dist: xllamacpp>=2026.10; extra == "local"\n')
    (info / "RECORD").write_text("chitchat_gen/__init__.py,,\n")
    line = error_line(task_dir, site, task_dir / "model.gguf")
    assert line == 'Error: the local engine needs xllamacpp: pip install "xllamacpp>=2026.10"'


def test_a_vendored_copy_is_told_the_extras_packages(tmp_path, task_dir):
    copy_package(tmp_path / "vendor")
    line = error_line(task_dir, tmp_path / "vendor", task_dir / "model.gguf")
    assert line == 'Error: the local engine needs xllamacpp: pip install "xllamacpp>=2026.10"'


def test_the_extras_for_a_vendored_copy_are_pyprojects():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {name: extras[name] for name in EXTRAS} == EXTRAS
