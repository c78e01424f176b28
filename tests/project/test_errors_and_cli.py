"""One error hierarchy and one command-line handler: every exception type of the package is a
FusionsegError (keeping its Python base class), and every command turns one into one line on
stderr and a non-zero exit."""
from __future__ import annotations

import inspect

import pytest

from fusionseg_kernels import errors
from fusionseg_kernels.cli import COMMANDS, command_names, main


def test_every_error_type_is_a_fusionseg_error_with_a_python_base():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, errors.FusionsegError), cls
        if cls is not errors.FusionsegError:
            assert any(issubclass(cls, base) for base in (ValueError, OSError, RuntimeError)), cls


def test_backend_and_extension_errors_live_in_errors():
    from fusionseg_kernels import BackendUnavailableError, ExtensionNotBuiltError

    assert BackendUnavailableError is errors.BackendUnavailableError
    assert ExtensionNotBuiltError is errors.ExtensionNotBuiltError
    assert issubclass(BackendUnavailableError, RuntimeError)


def test_every_command_module_registers_and_every_command_has_help(capsys):
    names = command_names()
    assert {"predict", "synth", "evaluate", "profile", "complexity", "nnunet-env", "nnunet-plans", "demo"} <= set(names)
    assert len(COMMANDS) == 7
    for name in names:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith("usage: fusionseg " + name)


@pytest.mark.parametrize("argv", [
    ["nnunet-plans", "/nonexistent/plans.json"],
    ["evaluate", "--pred", "/nonexistent/p", "--gt", "/nonexistent/g", "-o", "/tmp/fusionseg-x.csv"],
    ["profile", "--per-case", "-i", "/nonexistent", "-o", "/tmp/fusionseg-out", "--", "true", "{input}"],
])
def test_a_project_error_is_one_line_and_exit_1_in_every_command(argv, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fusionseg {argv[0]}: error: ")


def test_the_console_command_flushes_and_keeps_the_exit_status(tmp_path):
    """`fusionseg` leaves with os._exit after `main` (no interpreter teardown): its output is
    complete, a pipe sees all of it, and the status is main's."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("fusionseg"))
    ok = subprocess.run([exe, "complexity", "--networks", "dual"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.rstrip().splitlines()[-1].strip(), ok.stderr
    bad = subprocess.run([exe, "predict", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "-m",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("fusionseg predict: error: ") and bad.stdout == ""
    usage = subprocess.run([exe, "predict"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
