"""What the report says about the machine: its CPU and the int8 dot-product instructions that
decide whether int8 can beat fp32 there."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.deploy.measure import machine_facts


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (
            "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
            "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n",
            {"cpu": "AMD EPYC", "int8_instructions": ["avx512_vnni"]},
        ),
        (
            "model name\t: Intel Xeon\nflags\t\t: avx2 avx_vnni amx_int8 avx512_vnni\n",
            {"cpu": "Intel Xeon", "int8_instructions": ["avx512_vnni", "avx_vnni", "amx_int8"]},
        ),
        (
            "model name\t: Old Xeon\nflags\t\t: sse4_2 avx2 fma\n",
            {"cpu": "Old Xeon", "int8_instructions": []},
        ),
    ],
)
def test_machine_facts_name_the_int8_instructions(tmp_path: Path, cpuinfo: str, expected) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert machine_facts(path) == expected


def test_machine_facts_on_arm_and_without_cpuinfo(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert machine_facts(path)["int8_instructions"] == ["asimddp", "i8mm"]
    assert machine_facts(tmp_path / "missing")["int8_instructions"] is None
