"""Step 1: what this machine has. One line per check: what was found, or what is missing and how to get it.

Only what the CANN documents describe is used: set_env.sh exports ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH
and puts atc on PATH and pyACL on PYTHONPATH; the toolkit records its version in *_install.info /
version.info files; `npu-smi info` prints the driver version and each chip; acl.get_soc_name() names the
chip (so --soc_version is never guessed) and acl.rt.get_mem_info() its free device memory.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from board.failures import StepError, one_line

OK, WARN, FAIL = "ok", "warn", "fail"
# Where the CANN installation guide puts the toolkit (root and non-root installs, CANN 8 and 9 layouts).
TOOLKIT_DIRS = ("/usr/local/Ascend/ascend-toolkit/latest", "~/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann",
                "~/Ascend/cann")
SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
NPU_SMI_PATHS = ("/usr/local/sbin/npu-smi", "/usr/local/bin/npu-smi")
DRIVER_VERSION_FILE = Path("/usr/local/Ascend/driver/version.info")
HEALTH_VALUES = ("OK", "Warning", "Alarm", "Critical", "UNKNOWN")
# aclrtMemAttr: ACL_DDR_MEM = 0, ACL_HBM_MEM = 1. Chips without HBM answer the HBM query as DDR; on
# chips of the older kinds an unsupported kind reports 0 and 0, so DDR is asked next.
ACL_DDR_MEM, ACL_HBM_MEM = 0, 1
DEVICE_ID = 0


@dataclass
class Check:
    name: str
    status: str
    message: str

    def line(self) -> str:
        return f"{self.name}: {self.status}: {self.message}"


@dataclass
class Environment:
    checks: list[Check] = field(default_factory=list)
    toolkit_home: str | None = None
    cann_version: str | None = None
    driver_version: str | None = None
    soc: str | None = None
    npu_smi_chips: list[str] = field(default_factory=list)
    free_device_bytes: int | None = None
    total_device_bytes: int | None = None

    def add(self, name: str, status: str, message: str) -> Check:
        check = Check(name, status, one_line(message))
        self.checks.append(check)
        return check

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["checks"] = [asdict(c) for c in self.checks]
        return out


def read_version(home: Path) -> str | None:
    """The toolkit's version from the files its installer writes: *_install.info or version.info, as
    `version=8.0.0` (any case)."""
    candidates = [*home.glob("*/ascend_toolkit_install.info"), home / "ascend_toolkit_install.info",
                  home / "compiler/version.info", home / "runtime/version.info", home / "version.info"]
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r"^\s*version\s*=\s*(\S+)", text, re.I | re.M)
        if match:
            return match.group(1)
    return None


def check_toolkit(env: Environment, environ: dict[str, str]) -> None:
    home = environ.get("ASCEND_TOOLKIT_HOME") or environ.get("ASCEND_HOME_PATH")
    if home:
        env.toolkit_home = home
        env.cann_version = read_version(Path(home))
        version = env.cann_version or "version not recorded in its *_install.info / version.info"
        env.add("cann_toolkit", OK, f"{home} ({version})")
        return
    found = [Path(d).expanduser() for d in TOOLKIT_DIRS if Path(d).expanduser().is_dir()]
    if found:
        env.toolkit_home = str(found[0])
        env.cann_version = read_version(found[0])
        env.add("cann_toolkit", WARN, f"installed at {found[0]} but its environment is not set: run "
                                      f"`. {found[0].parent / 'set_env.sh'}` first")
        return
    # Not a failure by itself: what the check needs from the toolkit is atc and pyACL, checked next, and
    # their own lines say how to get them.
    has_tools = shutil.which("atc") is not None
    env.add("cann_toolkit", WARN,
            "ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH are not set and no toolkit is in its default place"
            + (" (atc is on PATH, so the toolkit's version is not known)" if has_tools else
               ": install the CANN toolkit for your chip (Ascend-cann-toolkit from the Ascend community), "
               f"then `. {SET_ENV}`"))


def check_atc(env: Environment) -> None:
    atc = shutil.which("atc")
    if atc:
        env.add("atc", OK, atc)
    else:
        env.add("atc", FAIL, "atc is not on PATH: it comes with the CANN toolkit (Ascend-cann-toolkit); "
                             f"`. {SET_ENV}` puts it there (install the toolkit first if that file is missing)")


def check_acl(env: Environment):
    """`import acl`; the module, or None with a failed check."""
    try:
        import acl
    except ImportError as e:
        env.add("pyacl", FAIL, f"import acl failed ({e}): pyACL comes with the CANN toolkit; `. {SET_ENV}` puts "
                               "it on PYTHONPATH")
        return None
    env.add("pyacl", OK, getattr(acl, "__file__", None) or "imported")
    return acl


def find_npu_smi() -> str | None:
    return shutil.which("npu-smi") or next((p for p in NPU_SMI_PATHS if os.access(p, os.X_OK)), None)


def parse_npu_smi(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(driver version, [(chip name, health)]) from `npu-smi info`'s table."""
    version = re.search(r"Version:\s*(\S+)", text)
    chips = re.findall(r"^\|\s*\d+\s+(\S+)\s*\|\s*(\w+)\s*\|", text, re.M)
    return (version.group(1) if version else None), [(n, h) for n, h in chips if h in HEALTH_VALUES]


def check_driver(env: Environment) -> None:
    """The driver, through `npu-smi info`. Not fatal by itself: pyACL opening the device below is what
    the check needs, and some containers carry the driver's libraries without its tool."""
    if DRIVER_VERSION_FILE.is_file():
        match = re.search(r"^\s*version\s*=\s*(\S+)", DRIVER_VERSION_FILE.read_text(errors="replace"), re.I | re.M)
        env.driver_version = match.group(1) if match else None
    smi = find_npu_smi()
    if smi is None:
        env.add("driver", WARN, "npu-smi not found: the driver installs it as /usr/local/sbin/npu-smi (boards) or "
                                "/usr/local/bin/npu-smi (cards); in a container, mount it (run_container.sh does)")
        return
    try:
        done = subprocess.run([smi, "info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        env.add("driver", WARN, f"`npu-smi info` did not run: {e}")
        return
    if done.returncode != 0:
        env.add("driver", WARN, f"`npu-smi info` exited with {done.returncode}: "
                                f"{one_line(done.stderr or done.stdout)[:200]} (is the driver loaded? see dmesg)")
        return
    version, chips = parse_npu_smi(done.stdout)
    env.driver_version = env.driver_version or version
    env.npu_smi_chips = [name for name, _ in chips]
    if not chips:
        env.add("driver", WARN, f"`npu-smi info` lists no chip (driver {version or 'version unknown'})")
        return
    unhealthy = [f"{name} {health}" for name, health in chips if health != "OK"]
    summary = ", ".join(f"{name} ({health})" for name, health in chips)
    env.add("driver", WARN if unhealthy else OK, f"driver {version or 'version unknown'}; chips: {summary}"
            + ("; `npu-smi info -t health -i 0` tells why" if unhealthy else ""))


def check_soc(env: Environment, acl, wanted: str) -> None:
    name = acl.get_soc_name() if hasattr(acl, "get_soc_name") else None
    if not name:
        env.add("soc", FAIL, "acl.get_soc_name() returned None: no NPU is visible to pyACL (check `npu-smi info` "
                             "and /dev/davinci*; in a container, pass the devices: run_container.sh)")
        return
    env.soc = name
    if wanted not in ("auto", name):
        env.add("soc", FAIL, f"--soc_version {wanted}, but this chip is {name} (acl.get_soc_name()): a .om built "
                             "for another chip does not load here; leave --soc_version at auto")
        return
    short = name[len("Ascend"):] if name.startswith("Ascend") else name
    if env.npu_smi_chips and short not in env.npu_smi_chips:
        env.add("soc", WARN, f"{name} (acl.get_soc_name()), but npu-smi lists {', '.join(env.npu_smi_chips)}")
        return
    env.add("soc", OK, name)


def device_memory(acl) -> tuple[int, int]:
    """(free, total) bytes of device memory; a device must be set. HBM first: on chips without it the
    runtime answers with DDR, and chips that report 0 for it are asked for DDR."""
    for attr in (ACL_HBM_MEM, ACL_DDR_MEM):
        free, total, ret = acl.rt.get_mem_info(attr)
        if ret != 0:
            detail = (getattr(acl, "get_recent_err_msg", lambda: "")() or "").strip()
            raise StepError(f"acl.rt.get_mem_info failed with aclError {ret}" + (f": {detail}" if detail else ""),
                            call="acl.rt.get_mem_info", code=ret, detail=detail or None)
        if total:
            return free, total
    return 0, 0


def check_memory(env: Environment, acl, need_bytes: int, need_what: str) -> None:
    from backends.acl_runtime import check

    if not hasattr(acl.rt, "get_mem_info"):   # every pyACL documents it; a stand-in may lack it
        env.add("device_memory", WARN, "this pyACL has no acl.rt.get_mem_info: free device memory unknown")
        return
    check(acl, acl.rt.set_device(DEVICE_ID), "acl.rt.set_device")
    try:
        free, total = device_memory(acl)
    finally:
        check(acl, acl.rt.reset_device(DEVICE_ID), "acl.rt.reset_device")
    env.free_device_bytes, env.total_device_bytes = free, total
    gb = 1024 ** 3
    if not total:
        env.add("device_memory", WARN, "acl.rt.get_mem_info reports 0 bytes for HBM and DDR: free memory unknown")
    elif free < need_bytes:
        env.add("device_memory", FAIL, f"{free / gb:.2f} GiB free of {total / gb:.2f} GiB, the check needs about "
                                       f"{need_bytes / gb:.2f} GiB ({need_what}): stop other NPU processes "
                                       "(npu-smi info lists them) or pass a smaller --kv_cache_length")
    else:
        env.add("device_memory", OK, f"{free / gb:.2f} GiB free of {total / gb:.2f} GiB "
                                     f"(needs about {need_bytes / gb:.2f} GiB: {need_what})")


def run(soc_version: str, need_bytes: int, need_what: str, environ: dict[str, str] | None = None) -> Environment:
    """Every check, in the order a user fixes them. Raises StepError naming the first failed check, after
    all of them ran (the report lists each)."""
    env = Environment()
    environ = dict(os.environ) if environ is None else environ
    check_toolkit(env, environ)
    check_atc(env)
    acl = check_acl(env)
    check_driver(env)
    if acl is not None:
        from backends.acl_runtime import runtime

        try:
            acl = runtime()   # acl.init, once per process
        except Exception as e:  # an AclError names acl.init and its code
            env.add("acl_init", FAIL, str(e))
            acl = None
    if acl is not None:
        check_soc(env, acl, soc_version)
        try:
            check_memory(env, acl, need_bytes, need_what)
        except Exception as e:  # AclError / StepError: the call, its code and the runtime's message
            env.add("device_memory", FAIL, str(e))
    failed = env.failed()
    if failed:
        more = f" (and {len(failed) - 1} more, see the report)" if len(failed) > 1 else ""
        first = failed[0]
        raise EnvironmentFailure(env, f"{first.name}: {first.message}{more}")
    return env


class EnvironmentFailure(StepError):
    def __init__(self, env: Environment, message: str) -> None:
        super().__init__(message)
        self.env = env
