"""The wheel installs everything under `sdcd`: nothing called plain `callbacks` or `data_modules`."""

import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("sdcd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sdcd", next(t for t in top if t.endswith(".dist-info"))}, top
    for module in ["sdcd/model.py", "sdcd/flows.py", "sdcd/cli.py", "sdcd/data_modules/base.py",
                   "sdcd/data_modules/dsprites.py", "sdcd/callbacks/shuffle.py"]:
        assert module in names
    assert not any(n.startswith(("callbacks/", "data_modules/", "src/", "tests/")) for n in names)


def test_editable_install_maps_subpackages():
    import sdcd.callbacks.shuffle
    import sdcd.data_modules.base

    assert sdcd.data_modules.base.__file__.startswith(str(ROOT / "data_modules"))
    assert sdcd.callbacks.shuffle.__file__.startswith(str(ROOT / "callbacks"))
    out = subprocess.run([sys.executable, "-c", "import callbacks"], capture_output=True, cwd="/")
    assert out.returncode != 0  # no top-level `callbacks` package is installed


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "sdcd", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fit" in out.stdout
