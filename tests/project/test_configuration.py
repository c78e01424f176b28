"""One place for configuration: every environment variable is read through
`fusionseg_kernels.config`, listed in its table and in docs/configuration.md, and a bad value is
one sentence naming the variable."""
from __future__ import annotations

import re

import pytest

from fusionseg_kernels import config
from fusionseg_kernels.errors import ConfigurationError, FusionsegError
from tests.helpers import ROOT


def test_no_module_but_config_reads_the_environment():
    offenders = []
    for path in sorted((ROOT / "fusionseg_kernels").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py")):
        if path.name == "config.py":
            continue
        text = path.read_text()
        if re.search(r"os\.environ|os\.getenv|getenv\(", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"read the environment through fusionseg_kernels.config: {offenders}"


def test_the_docs_table_lists_exactly_the_variables():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = re.findall(r"^\| `([A-Za-z_]+)` \|", doc, flags=re.M)
    assert documented == [v.name for v in config.VARIABLES]
    for v in config.VARIABLES:
        assert v.meaning in doc and v.default in doc, v.name


def test_the_cpp_library_reads_only_documented_variables():
    read = set()
    for path in (ROOT / "csrc").rglob("*.c*"):
        read |= set(re.findall(r'getenv\("([A-Za-z_]+)"\)', path.read_text()))
    assert read and read <= {v.name for v in config.VARIABLES}


@pytest.mark.parametrize("name, value, reader", [
    ("FUSIONSEG_NUM_THREADS", "two", config.positive_int),
    ("FUSIONSEG_NUM_THREADS", "0", config.positive_int),
    ("FUSIONSEG_TRITON_AUTOTUNE", "maybe", config.flag),
])
def test_bad_values_are_one_sentence_naming_the_variable(monkeypatch, name, value, reader):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as err:
        reader(name)
    assert isinstance(err.value, FusionsegError) and name in str(err.value) and "\n" not in str(err.value)


def test_unknown_variables_cannot_be_read():
    with pytest.raises(KeyError, match="VARIABLES"):
        config.text("FUSIONSEG_SOMETHING_NEW")
