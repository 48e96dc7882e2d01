"""transports/settings.py: every environment setting parsed and checked once; the knob table
of docs/settings.md lists exactly the settings it knows."""
from __future__ import annotations

import logging
import re

import pytest

import ringcomm
from ringcomm.transports import settings
from tests.procs import ROOT, launch


def knob_table() -> str:
    """The table after docs/settings.md's "Knobs:" line."""
    text = (ROOT / "docs" / "settings.md").read_text()
    start = text.index("\nKnobs:\n")
    table = text[start:].split("\n\n")[1]
    assert table.startswith("| setting |"), table[:80]
    return table


def test_knob_table_lists_exactly_the_known_settings():
    first_cells = [row.split("|")[1] for row in knob_table().splitlines()[2:]]
    names = {n for cell in first_cells for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert names == set(settings.KNOWN) | set(settings.ALIASES)


def test_defaults_from_an_empty_environment():
    got = settings.load({})
    assert got == settings.Settings()
    assert (got.timeout, got.protocol, got.tcp_warmup, got.spin_seconds) == (300.0, "ringcomm",
                                                                            True, 50e-6)


def test_values_are_parsed():
    got = settings.load({"RINGCOMM_TIMEOUT": "2.5", "RINGCOMM_SPIN_US": "0",
                         "RINGCOMM_TCP_WARMUP": "0", "RINGCOMM_PROTOCOL": "mlx",
                         "RINGCOMM_EMULATED_DEVICES": "a, b,,c", "JACCL_COORDINATOR": "h:1",
                         "MLX_JACCL_COORDINATOR": "ignored:2", "RINGCOMM_VERBS": "emulated"})
    assert (got.timeout, got.spin_seconds, got.tcp_warmup, got.protocol) == (2.5, 0.0, False,
                                                                            "mlx")
    assert got.emulated_devices == ("a", "b", "c")
    assert got.coordinator == "h:1"  # JACCL's name wins, as in MLX
    assert got.verbs == "emulated"
    assert settings.load({"RINGCOMM_THREADS": "3"}).threads == 3
    assert settings.load({"RINGCOMM_THREADS": "auto"}).threads is None  # cores / local ranks
    assert settings.load({"RINGCOMM_LOG": " Debug "}).log_level == logging.DEBUG
    assert settings.load({"RINGCOMM_LOG": "off"}).log_level > logging.CRITICAL


@pytest.mark.parametrize("name,value,says", [
    ("RINGCOMM_TIMEOUT", "soon", "number of seconds"),
    ("RINGCOMM_TIMEOUT", "inf", "up to"),
    ("RINGCOMM_TIMEOUT", "nan", "up to"),
    ("RINGCOMM_TIMEOUT", "1e10", "up to"),
    ("RINGCOMM_TIMEOUT", "-1", "positive"),
    ("RINGCOMM_SPIN_US", "abc", "microseconds"),
    ("RINGCOMM_SPIN_US", "-5", "between 0 and"),
    ("RINGCOMM_SPIN_US", "1e9", "between 0 and"),
    ("RINGCOMM_THREADS", "0", "from 1"),
    ("RINGCOMM_THREADS", "many", "'auto' or a whole number"),
    ("RINGCOMM_THREADS", "1000", "to 256"),
    ("RINGCOMM_TCP_WARMUP", "off", "choose one of: 0, 1"),
    ("RINGCOMM_PROTOCOL", "gloo", "choose one of: ringcomm, mlx"),
    ("RINGCOMM_BACKEND", "mpi", "choose one of"),
    ("RINGCOMM_VERBS", "fake", "pyverbs, emulated"),
    ("RINGCOMM_LOG", "loud", "debug, info, warning, error, off"),
])
def test_a_bad_value_is_a_config_error_naming_the_variable(name, value, says):
    with pytest.raises(ringcomm.ConfigError, match=name) as e:
        settings.load({name: value})
    assert says in str(e.value)


def test_a_congestion_control_the_system_does_not_offer_is_a_config_error():
    try:
        available = open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split()
    except OSError:
        pytest.skip("no /proc congestion list on this system: any name is passed through")
    assert settings.load({"RINGCOMM_TCP_CONGESTION": available[0]}).tcp_congestion == \
        available[0]
    assert settings.load({"RINGCOMM_TCP_CONGESTION": "system"}).tcp_congestion == "system"
    with pytest.raises(ringcomm.ConfigError, match="RINGCOMM_TCP_CONGESTION='bogus'"):
        settings.load({"RINGCOMM_TCP_CONGESTION": "bogus"})


def test_init_reads_the_environment_through_settings(monkeypatch):
    monkeypatch.setenv("RINGCOMM_SPIN_US", "abc")
    with pytest.raises(ringcomm.ConfigError, match="RINGCOMM_SPIN_US"):
        ringcomm.init()


def test_the_launcher_refuses_a_bad_setting_before_starting_any_rank():
    result = launch("-n", "2", "--env", "RINGCOMM_TCP_WARMUP=off", "examples/allsum.py")
    assert result.returncode == 2, result
    assert "RINGCOMM_TCP_WARMUP" in result.stderr and "[0]" not in result.stdout
