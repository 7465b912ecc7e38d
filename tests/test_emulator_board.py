"""What the emulator adds for `make npu-check`, checked against the documents it follows: pyACL's
get_mem_info page (aclpythondevg "Function: get_mem_info": free, total, ret = acl.rt.get_mem_info(attr); a
device must be set first; chips without HBM answer HBM queries as DDR; a kind the chip lacks reports 0 and
0) and the npu-smi reference's `npu-smi info` table (Atlas 200I A2 npu-smi command reference)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from board.environment import parse_npu_smi
from emulator import harness

pytestmark = pytest.mark.emulator

ACL_DDR_MEM, ACL_HBM_MEM, ACL_DDR_MEM_HUGE, ACL_DDR_MEM_NORMAL, ACL_HBM_MEM_HUGE = 0, 1, 2, 3, 4
LIMIT = 256 * 1024 ** 2


@pytest.fixture
def acl(monkeypatch):
    harness.activate(monkeypatch)
    monkeypatch.setenv("EMU_ACL_DEVICE_MEMORY", str(LIMIT))
    from backends.acl_runtime import runtime

    yield runtime()
    assert harness.live() == {}


def test_get_mem_info_needs_a_device(acl):
    free, total, ret = acl.rt.get_mem_info(ACL_DDR_MEM)
    assert (free, total) == (0, 0) and ret != 0
    assert "set_device" in acl.get_recent_err_msg()


def test_get_mem_info_reports_free_and_total_device_memory(acl):
    assert acl.rt.set_device(0) == 0
    ctx, _ = acl.rt.create_context(0)
    try:
        free, total, ret = acl.rt.get_mem_info(ACL_DDR_MEM)
        assert ret == 0 and total == LIMIT and free == LIMIT
        ptr, _ = acl.rt.malloc(64 * 1024 ** 2, 0)
        assert acl.rt.get_mem_info(ACL_DDR_MEM) == (LIMIT - 64 * 1024 ** 2, LIMIT, 0)
        # Ascend310B has no HBM: the HBM kinds are answered as the DDR ones.
        assert acl.rt.get_mem_info(ACL_HBM_MEM) == acl.rt.get_mem_info(ACL_DDR_MEM)
        assert acl.rt.get_mem_info(ACL_HBM_MEM_HUGE) == acl.rt.get_mem_info(ACL_DDR_MEM_HUGE)
        assert acl.rt.free(ptr) == 0
    finally:
        acl.rt.destroy_context(ctx)
        acl.rt.reset_device(0)


def test_a_chip_with_hbm_reports_zero_ddr(acl, monkeypatch):
    monkeypatch.setenv("EMU_ACL_SOC", "Ascend910B3")
    assert acl.rt.set_device(0) == 0
    try:
        assert acl.rt.get_mem_info(ACL_HBM_MEM) == (LIMIT, LIMIT, 0)
        assert acl.rt.get_mem_info(ACL_DDR_MEM) == (0, 0, 0)
        assert acl.rt.get_mem_info(12)[2] != 0                  # not an aclrtMemAttr
    finally:
        acl.rt.reset_device(0)


@pytest.mark.parametrize("soc, name", [("Ascend310B1", "310B1"), ("Ascend910B3", "910B3")])
def test_npu_smi_info_prints_the_documented_table(soc, name):
    r = subprocess.run([sys.executable, str(harness.EMULATOR / "npu-smi"), "info"], capture_output=True, text=True,
                       timeout=30, env=harness.subprocess_env(EMU_ACL_SOC=soc, EMU_ACL_DEVICE_MEMORY=str(LIMIT)))
    assert r.returncode == 0
    header = r.stdout.splitlines()[1]
    assert header.startswith("| npu-smi 23.0.0") and "Version: 23.0.0" in header
    assert parse_npu_smi(r.stdout) == ("23.0.0", [(name, "OK")])
    assert "/ 256" in r.stdout                                   # Memory-Usage(MB): used / total
    assert all(len(line) == len(r.stdout.splitlines()[0]) for line in r.stdout.splitlines())


def test_npu_smi_emulates_info_only():
    r = subprocess.run([sys.executable, str(harness.EMULATOR / "npu-smi"), "set", "-t", "x"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "only `npu-smi info`" in r.stderr
