"""deploy/local/bootstrap.sh gives every checkout its own Vigil over one shared base of
dependencies, and the wheel installs nothing top-level but ``vigil``.

Two clones of this checkout (with its uncommitted changes laid over them, so that what is tested
is the tree the test runs in) are bootstrapped against the base this interpreter already uses:
torch is never reinstalled, and each clone's install is an editable ``pip --no-deps`` of seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("models", "stream", "connectors", "bench")
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def base_venv() -> Path:
    """The shared base this .venv sees (its vigil-base.pth), else the configured default."""
    if os.environ.get("VIGIL_BASE_VENV"):
        return Path(os.environ["VIGIL_BASE_VENV"])
    pth = Path(sysconfig.get_paths()["purelib"]) / "vigil-base.pth"
    if pth.exists():
        return Path(pth.read_text().strip()).parents[2]  # <venv>/lib/pythonX.Y/site-packages
    return Path(os.environ.get("VIGIL_VENV", Path.home() / ".cache" / "vigil" / "venv"))


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clone_checkout(target: Path) -> Path:
    """`git clone --local` of this repository, then its working tree's changes copied over (in
    CI the checkout is a fresh clone, so there are none)."""
    run(["git", "clone", "-q", "--local", str(ROOT), str(target)], cwd=ROOT.parent)
    listed = run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT).stdout
    committed = run(["git", "ls-tree", "-r", "-z", "--name-only", "HEAD"], cwd=ROOT).stdout
    for name in {*filter(None, listed.split("\0")), *filter(None, committed.split("\0"))}:
        source, copy = ROOT / name, target / name
        if not source.exists() and not source.is_symlink():
            copy.unlink(missing_ok=True)  # deleted in the working tree
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        if copy.is_symlink() or copy.is_file():
            copy.unlink()
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, copy)
    return target


def bootstrap_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.pop("VIRTUAL_ENV", None)
    # Set, so the bootstrap neither fetches Kafka's jars nor needs redis-server: it only checks
    # that they are set, nothing here connects to them.
    env |= {
        "VIGIL_BASE_VENV": str(base),
        "VIGIL_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "VIGIL_REDIS_URL": "redis://127.0.0.1:16379/0",
    }
    return env


def where_vigil_comes_from(python: Path, elsewhere: Path) -> list[Path]:
    """Files of vigil and its subpackages as ``python`` imports them, run outside any checkout."""
    code = "import vigil, " + ", ".join(f"vigil.{p}" for p in SUBPACKAGES) + "\n"
    code += "for m in (vigil, " + ", ".join(f"vigil.{p}" for p in SUBPACKAGES) + "):"
    code += " print(m.__file__)"
    out = run([str(python), "-c", code], cwd=elsewhere).stdout
    return [Path(line) for line in out.split()]


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two bootstrapped clones; the second had an old-style .venv symlink beforehand."""
    base = base_venv()
    assert (base / "bin" / "python").exists(), f"no base venv at {base}: run bootstrap.sh"
    made = [clone_checkout(tmp_path_factory.mktemp("clone") / "vigil") for _ in range(2)]
    old_target = tmp_path_factory.mktemp("old-shared-venv")
    (made[1] / ".venv").symlink_to(old_target)  # what the previous bootstrap left behind
    for clone in made:
        run(["bash", "deploy/local/bootstrap.sh"], cwd=clone, env=bootstrap_env(base))
    assert not any(old_target.iterdir()), "the old symlink's target was written to"
    return made


def test_each_clone_runs_its_own_code(clones: list[Path], tmp_path: Path) -> None:
    for clone in clones:
        venv = clone / ".venv"
        assert venv.is_dir() and not venv.is_symlink()
        files = where_vigil_comes_from(venv / "bin" / "python", tmp_path)
        assert len(files) == 1 + len(SUBPACKAGES)
        for file in files:
            assert file.is_relative_to(clone), f"{file} is not in {clone}"
        run([str(venv / "bin" / "vigil"), "--help"], cwd=tmp_path)
        # torch comes from the base, not from a copy of its own
        torch_file = run(
            [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__file__)"],
            cwd=tmp_path,
        ).stdout.strip()
        assert Path(torch_file).is_relative_to(base_venv()), torch_file


def test_the_base_holds_no_checkouts_code(clones: list[Path], tmp_path: Path) -> None:
    code = "import importlib.util as u; print(u.find_spec('vigil'))"
    assert run([str(base_venv() / "bin" / "python"), "-c", code], cwd=tmp_path).stdout == "None\n"


def test_running_the_bootstrap_again_changes_nothing(clones: list[Path]) -> None:
    clone = clones[0]
    stamps = sorted((clone / ".venv").glob(".vigil-installed-*"))
    again = run(["bash", "deploy/local/bootstrap.sh"], cwd=clone, env=bootstrap_env(base_venv()))
    said = again.stdout + again.stderr
    assert "installing" not in said and "creating" not in said, said
    assert sorted((clone / ".venv").glob(".vigil-installed-*")) == stamps
    assert len(stamps) == 1


def test_the_wheel_installs_only_the_vigil_package(clones: list[Path], tmp_path: Path) -> None:
    """Built from a clone (the build writes build/ and egg-info next to the sources)."""
    source, base = clones[0], base_venv()
    python = base / "bin" / "python"
    run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."], source)
    [wheel] = tmp_path.glob("vigil-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        top_level = archive.read(f"{info}/top_level.txt").decode().split()
    assert {name.split("/")[0] for name in names} == {"vigil", info}
    assert top_level == ["vigil"]
    for sub in SUBPACKAGES:  # the linked folders' code is inside vigil/, not beside it
        assert f"vigil/{sub}/__init__.py" in names

    venv = tmp_path / "venv"
    run([str(python), "-m", "venv", "--without-pip", str(venv)], tmp_path)
    site = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        tmp_path,
    ).stdout.strip()
    base_site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
    ).stdout.strip()
    (Path(site) / "vigil-base.pth").write_text(base_site + "\n")
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", site, str(wheel)],
        tmp_path,
    )  # fmt: skip
    files = where_vigil_comes_from(venv / "bin" / "python", tmp_path)
    assert all(file.is_relative_to(site) for file in files), files
    for name in SUBPACKAGES:
        stray = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import {name}"],
            cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip
        assert stray.returncode != 0 and "ModuleNotFoundError" in stray.stderr, name
