"""experiments.offline_wheels without the network: which requirements of a wheel apply."""

import zipfile

from experiments import offline_wheels as ow


def _wheel(tmp_path, lines):
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo-1.0.dist-info/METADATA", "\n".join(["Name: demo", *lines]))
    return path


def test_requirements_apply_markers_for_the_target_python_and_leave_extras_out(tmp_path):
    wheel = _wheel(
        tmp_path,
        [
            "Requires-Dist: numpy>=1.26",
            'Requires-Dist: tomli; python_version < "3.11"',
            'Requires-Dist: typing-extensions; python_version < "3.12"',
            'Requires-Dist: pywin32; sys_platform == "win32"',
            'Requires-Dist: pytest; extra == "test"',
        ],
    )
    assert [r.name for r in ow.requirements(wheel, "3.11")] == ["numpy", "typing-extensions"]
    assert [r.name for r in ow.requirements(wheel, "3.12")] == ["numpy"]


def test_names_compare_as_pip_compares_them():
    assert ow.canonical("Flask_Cors") == ow.canonical("flask-cors") == "flask-cors"
    assert ow.canonical("orbax.checkpoint") == "orbax-checkpoint"
